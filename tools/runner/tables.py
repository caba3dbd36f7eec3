"""The accuracy tables of the protocol, declared as data (issue #11).

A table is a dataset, its test label groups (one model per group and fold), the folds, a training
budget in steps (the same for every fold), and rows: the methods and variants to set side by side.
`tools.runner.jobs.expand` turns a table into independent jobs, one per (row, group, fold).

Row keys (all optional except ``method``; unset keys take the table's ``defaults``, then the
training workflow's own defaults):
  method          sdfsmis | support_copy | registration (baselines train nothing)
  label           the row's name in the tables
  setting         1 | 2 (training data only: baselines ignore it)
  exclusion_rule  any | all (Setting 2: `all` is the legacy '&' rule)
  shots           shots at evaluation
  train_shots     shots of the training episodes (default: ``shots``); the 3-shot rows evaluate the
                  1-shot models, so they cost no training of their own
  label_source    gt | supervoxel | both
  preset, autoencoder, use_qe, use_vtct, use_support_kv   the network's keys (train.yaml)
  extra_datasets  ((dataset, folder, label source or None), ...): more datasets in each training,
                  every class and patient of them (train.yaml's extra_datasets)
  mixture_weights (main, extra, ...): the datasets' shares of the episodes

To add a table, add an entry to ``TABLES``; `python -m tools.runner list --table NAME` shows its jobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scripts.protocol.matching import DRAW_MODES

__all__ = ["Table", "TABLES", "get_table", "DEFAULT_STEPS"]

DEFAULT_STEPS = 3000  # the compact U-Net on 2 CPU cores: ~30-40 min per fold (docs: DESIGN.md)
ABDOMEN_GROUPS = (("liver", "spleen"), ("left_kidney", "right_kidney"))
CARDIAC_GROUPS = (("lv_bp", "lv_myo", "rv"),)
FIVE_FOLDS = (0, 1, 2, 3, 4)
MODES = ("ep1", "in_volume", "no_oracle")
CURVE_STEPS = (3000, 6000, 12000, 24000)
# supervoxel episodes only at a constant learning rate: no organ label trains, so the liver/spleen
# training of a fold serves every organ, and one run is trained on from budget to budget
SUPERVOXEL_RECIPE = dict(setting=1, label_source="supervoxel", lr_schedule="constant", train_labels=ABDOMEN_GROUPS[0])
# the in-volume protocol's reading: up to 3 shots (the drawn and the just-segmented slices) of a 1-shot model
DRAW_READING = dict(shots=3, train_shots=1, component_3d="support")


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    dataset: str                      # a preset of scripts.data.presets
    dataset_dir: str                  # a folder under <shared>/data, or an absolute path
    groups: tuple[tuple[str, ...], ...]
    rows: tuple[dict, ...]
    folds: tuple[int, ...] = FIVE_FOLDS
    n_folds: int = 5
    steps: int = DEFAULT_STEPS
    seed: int = 0
    modes: tuple[str, ...] = MODES
    defaults: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)   # extra train.yaml keys for every command (tests)
    notes: tuple[str, ...] = ()


def network(label: str = "SD-FSMIS compact, TAEF2", **keys) -> dict:
    """A row of the network: the compact U-Net on TAEF2 latents unless ``keys`` say otherwise."""
    return {"method": "sdfsmis", "label": label, "preset": "compact", "autoencoder": "taef2", **keys}


def baselines(**keys) -> tuple[dict, ...]:
    return (dict(method="support_copy", label="support_copy", **keys),
            dict(method="registration", label="registration", **keys))


TABLES: dict[str, Table] = {t.name: t for t in (
    Table(
        name="chaost2_s1",
        title="CHAOST2 (Abd-MRI), Setting 1, 1-shot and 3-shot",
        dataset="chaost2", dataset_dir="CHAOST2", groups=ABDOMEN_GROUPS,
        defaults=dict(setting=1, label_source="both"),
        rows=(network(), *baselines(),
              network("SD-FSMIS compact, TAEF2 (trained 1-shot)", shots=3, train_shots=1),
              *baselines(shots=3),
              # the same weights with this release's default post-processing (as chaost2_s2's rows)
              network("SD-FSMIS compact, TAEF2, support component", component_3d="support")),
        notes=("The `support component` row evaluates the first row's weights with `component_3d: "
               "support` (the default since the Setting 2 runs) instead of the largest 3D component.",),
    ),
    Table(
        name="chaost2_s2",
        title="CHAOST2 (Abd-MRI), Setting 2 under both exclusion rules, 1-shot",
        dataset="chaost2", dataset_dir="CHAOST2", groups=ABDOMEN_GROUPS,
        defaults=dict(setting=2, label_source="both"),
        rows=(network("SD-FSMIS compact, TAEF2, rule any (correct)", exclusion_rule="any"),
              network("SD-FSMIS compact, TAEF2, rule all (legacy '&')", exclusion_rule="all"),
              # the same weights; the 3D component on the support's footprint where the largest lies off
              # it: a right-kidney support finds both kidneys, and the larger left one won
              network("rule any, support component", exclusion_rule="any", component_3d="support"),
              network("rule all, support component", exclusion_rule="all", component_3d="support"),
              *baselines()),
        notes=("Setting 2 drops every training slice that contains a test organ (rule `any`); the "
               "legacy rule `all` drops only slices containing all of them, as the published S2 "
               "numbers did. Baselines train nothing, so the setting does not change them.",
               "The `support component` rows evaluate the same weights as the rows above them with "
               "`component_3d: support`: the largest 3D component unless less than 10 % of it lies on "
               "the support masks' footprint (grown by 8 pixels), then the one most on it.",),
    ),
    Table(
        name="cmr",
        title="CMR (Card-MRI bSSFP), Setting 1, supervoxel training, 1-shot and 3-shot",
        dataset="cmr", dataset_dir="CMR", groups=CARDIAC_GROUPS,
        defaults=dict(setting=1, label_source="supervoxel"),
        rows=(network(), *baselines(),
              network("SD-FSMIS compact, TAEF2 (trained 1-shot)", shots=3, train_shots=1),
              *baselines(shots=3)),
        notes=("Trained on supervoxel pseudo-labels only (no ground-truth mask), as the field "
               "evaluates Card-MRI, so one model per fold serves all three classes.",),
    ),
    Table(
        name="cmr_abdominal_gt",
        title="CMR, Setting 1, supervoxels plus CHAOST2 ground truth, 1-shot",
        dataset="cmr", dataset_dir="CMR", groups=CARDIAC_GROUPS,
        defaults=dict(setting=1, label_source="supervoxel"),
        # the cmr table's network fills the myocardium ring in (bench/prediction_overlap_probe.py): does
        # ground truth of real organs, none of them cardiac, teach it shapes supervoxels do not?
        rows=(network("SD-FSMIS compact, TAEF2, + CHAOST2 ground truth",
                      extra_datasets=(("chaost2", "CHAOST2", "gt"),), mixture_weights=(1, 1)),),
        notes=("CMR supervoxel episodes and CHAOST2 ground-truth episodes (all 20 patients, all four "
               "abdominal organs), half each; no CMR ground truth, so every CMR class stays a test "
               "class. Baselines and the supervoxel-only network: table `cmr`.",),
    ),
    Table(
        name="chaost2_s1_curve",
        title="CHAOST2 Setting 1, supervoxel training: Dice against training steps (fold 0)",
        dataset="chaost2", dataset_dir="CHAOST2", groups=ABDOMEN_GROUPS, folds=(0,),
        # one constant-LR run per width, resumed from budget to budget; no organ label trains, so the
        # liver/spleen training serves the kidneys too
        defaults=SUPERVOXEL_RECIPE,
        rows=tuple(network(f"compact, {steps // 1000}k steps", steps=steps) for steps in CURVE_STEPS)
        + tuple(network(f"wide, {steps // 1000}k steps", preset="wide", steps=steps) for steps in CURVE_STEPS),
        notes=("Issue #43's learning curve: one training per width at a constant learning rate, its EMA "
               "weights written at each budget and evaluated there (`model_<steps>steps.pt`); supervoxel "
               "episodes only, so one model serves all four organs. Budgets run in order: a row's "
               "training resumes the last checkpoint of the row before it.",),
    ),
    Table(
        name="chaost2_s1_supervoxel",
        title="CHAOST2 (Abd-MRI), Setting 1, supervoxel training at 6,000 steps, five folds",
        dataset="chaost2", dataset_dir="CHAOST2", groups=ABDOMEN_GROUPS, folds=FIVE_FOLDS,
        # the curve's budget chosen for the folds (issue #43): the draw table's fold models, read the field's way
        defaults=dict(SUPERVOXEL_RECIPE, steps=6000),
        rows=(network("SD-FSMIS compact, TAEF2, supervoxels, 6k steps"),
              # the same weights with the shipped post-processing, then read twice per query: its own
              # first answer becomes a shot
              network("supervoxels, 6k steps, support component", component_3d="support"),
              network("supervoxels, 6k steps, support component, + self-support", component_3d="support",
                      self_support=True)),
        notes=("Issue #43's recipe on five folds: supervoxel episodes only (no organ label trains), constant "
               "learning rate, 6,000 steps; the same fold models as table `chaost2_s1_draw`. Baselines: "
               "table `chaost2_s1` (they train nothing).",
               "The `support component` rows read the same weights with `component_3d: support`, the shipped "
               "model's post-processing (the 3D component on the support's footprint where the largest lies off "
               "it); the `+ self-support` row reads them twice per query slice: after a first pass, "
               "the query slice with its own first mask is one more shot (self-support prototypes; "
               "`scripts/engine/self_support.py`), at twice the network's cost and no more encoding.",),
    ),
    Table(
        name="chaost2_s1_draw",
        title="CHAOST2: label k slices, get the volume (in-volume), models that never saw the organ or patient",
        dataset="chaost2", dataset_dir="CHAOST2", groups=ABDOMEN_GROUPS, folds=FIVE_FOLDS,
        modes=tuple(DRAW_MODES),
        # the curve's supervoxel-trained fold models (6,000 steps): no organ label trained, every organ tested
        defaults=dict(SUPERVOXEL_RECIPE, steps=6000, **DRAW_READING),
        rows=(network("SD-FSMIS compact, TAEF2, propagation"),
              network("SD-FSMIS compact, TAEF2, nearest drawn slices", volume_mode="nearest"),
              # what a user gets today; its training saw these patients' images (supervoxels, no organ label)
              network("shipped model.pt, propagation (saw these patients in training)",
                      checkpoint="bundle/models/model.pt"),
              dict(method="registration", label="registration, propagated slice to slice", shots=1),
              dict(method="support_copy", label="support_copy (nearest drawn slice)", volume_mode="nearest", shots=1),
              dict(method="contour_interpolation", label="contour interpolation (Slicer's fill between slices)",
                   shots=1)),
        notes=("Issue #38's protocol: k = 1, 2, 3, 5 drawn slices per organ, evenly spaced within its extent "
               "(k = 1: the middle slice); every slice of the volume is segmented; Dice on the whole volume "
               "(`dice_undrawn`: the slices not drawn). Contour interpolation fills only between drawn "
               "slices, so from one slice it returns that slice.",
               "The shipped model's row reads `bundle/models/model.pt` as it ships: trained on the supervoxels "
               "of every CHAOST2 patient but the two sample patients (15, 39), so it has seen most of these "
               "test volumes, though never an organ label; the fold models above have seen neither.",),
    ),
    Table(
        name="chaost2_s1_draw_curve",
        title="CHAOST2: label k slices, get the volume, against training steps (fold 0)",
        dataset="chaost2", dataset_dir="CHAOST2", groups=ABDOMEN_GROUPS, folds=(0,),
        modes=tuple(DRAW_MODES),
        # the learning curve's fold-0 models (chaost2_s1_curve), each budget's file read as the draw table reads 6k
        defaults=dict(SUPERVOXEL_RECIPE, **DRAW_READING),
        rows=tuple(network(f"propagation, compact, {steps // 1000}k steps", steps=steps) for steps in CURVE_STEPS),
        notes=("Issue #38's protocol (table `chaost2_s1_draw`) on fold 0 with the learning curve's model at "
               "each budget (issue #43): what more training gives the person labelling.",),
    ),
    Table(
        name="chaost2_ablation",
        title="CHAOST2 Setting 1, liver and spleen: ablations and autoencoders, 1-shot",
        dataset="chaost2", dataset_dir="CHAOST2", groups=ABDOMEN_GROUPS[:1],
        defaults=dict(setting=1, label_source="both"),
        rows=(network("full (TAEF2)"),
              network("no QE", use_qe=False),
              network("no VTCT", use_vtct=False),
              network("no support K/V", use_support_kv=False),
              network("TAESD autoencoder", autoencoder="taesd"),
              network("pixel-unshuffle autoencoder", autoencoder="unshuffle"),
              # SSL-ALPNet's training labels; on phantoms they beat kidney GT + supervoxels
              network("supervoxels only", label_source="supervoxel"),
              # the paper's post-processing: the largest component per slice, no 3D step
              network("per-slice largest component only", keep_largest_3d=False),
              dict(method="support_copy", label="support_copy")),
        notes=("The `full (TAEF2)` row is the same training as chaost2_s1's network row (shared "
               "runs: it is trained once); so is `per-slice largest component only`, which "
               "evaluates those weights with the paper's post-processing instead of ours.",),
    ),
)}


def get_table(name: str) -> Table:
    if name not in TABLES:
        raise ValueError(f"unknown table '{name}'; known: {', '.join(TABLES)}")
    return TABLES[name]
