"""A table's independent jobs, where each keeps its files, and the bundle commands it runs.

One job = one (row, label group, fold) of a table: train the network through the bundle's
training workflow (baselines skip this), then evaluate it through the evaluate workflow in every
protocol mode. Jobs of different rows or tables that need the same training (same dataset,
setting, group, fold, training shots, label source, network keys, steps and seed) share one run
folder, so it is trained once and resumed from its checkpoints wherever it stopped.

Where things go (`Workspace`):
  <home>/runs/<training key>/     output_dir of the training workflow: checkpoints/, model.pt
  <home>/eval/<table>/<job>/      eval_dir of the job: <mode>/results.json
  <home>/latents/<dataset>/       the latent cache, shared by every job of a dataset
  <home>/logs/<table>/<job>.log   the commands' output
  <home>/state/<table>/           job locks (pid inside), runner pid files
  <results>/<table>/<job>.json    the finished job's result (the only file that belongs in git)
<home> is ``$SDFSMIS_RUNNER_HOME`` or ``~/.cache/sdfsmis``: outside the work tree, best effort.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from scripts.network.model_config import ModelConfig
from scripts.network.postprocess import COMPONENT_RULES

from .tables import Table

__all__ = ["Job", "Workspace", "expand", "expand_rows", "select", "train_command", "evaluate_command", "REPO", "BUNDLE"]

REPO = Path(__file__).resolve().parents[2]  # tools/runner/jobs.py
BUNDLE = REPO / "bundle"
TRAIN_CONFIG = "configs/train.yaml"
EVALUATE_CONFIGS = "['configs/train.yaml','configs/evaluate.yaml']"
NETWORK_METHODS = ("sdfsmis",)


@dataclass(frozen=True)
class Job:
    """Everything that decides a job's numbers; ``config()`` is what its result file records."""

    table: str
    dataset: str
    dataset_dir: str
    group: tuple[str, ...]
    fold: int
    n_folds: int
    method: str
    label: str
    shots: int = 1
    seed: int = 0
    modes: tuple[str, ...] = ("ep1", "in_volume", "no_oracle")
    # training only (None for baselines)
    setting: int | None = None
    exclusion_rule: str | None = None
    train_shots: int | None = None
    label_source: str | None = None
    preset: str | None = None
    autoencoder: str | None = None
    use_qe: bool | None = None
    use_vtct: bool | None = None
    use_support_kv: bool | None = None
    steps: int | None = None
    # more datasets in the training: (dataset, folder under <shared>/data or absolute, label source or
    # None for the row's), every class and patient of each; and the datasets' shares, main first
    extra_datasets: tuple[tuple[str, str, str | None], ...] | None = None
    mixture_weights: tuple[float, ...] | None = None
    # None: the LR decays linearly to 0 at `steps` (every result before the choice existed); "constant":
    # the runs of every budget are one run, resumed into more steps (a learning curve), one model file each
    lr_schedule: str | None = None
    # the classes held out of *training* where they differ from the evaluated group: with supervoxel
    # episodes in Setting 1 no organ label trains, so one training serves every group of a fold
    train_labels: tuple[str, ...] | None = None
    # evaluation only: the network's post-processing (a result without it predates the 3D step)
    keep_largest_3d: bool | None = None
    # which 3D component: None is the largest (every result before the choice existed), or "support"
    component_3d: str | None = None
    # evaluation only: each query read twice, the second time with its own first answer as a shot
    # (issue #43's self-support); None is the single reading (every result before the choice existed)
    self_support: bool | None = None
    # the draw<k> modes: how the volume is segmented from the drawn slices; None is "propagate"
    volume_mode: str | None = None
    # a network read from this model file (relative to the repository) instead of trained by the job:
    # the shipped model, whose training saw the table's patients (its card says which)
    checkpoint: str | None = None
    overrides: tuple[tuple[str, object], ...] = field(default=())

    @property
    def trains(self) -> bool:
        return self.method in NETWORK_METHODS and self.checkpoint is None

    @property
    def is_network(self) -> bool:
        return self.method in NETWORK_METHODS

    def _network_tag(self) -> str:
        flags = "".join(f"-no{part}" for part, on in (("qe", self.use_qe), ("vtct", self.use_vtct),
                                                      ("kv", self.use_support_kv)) if on is False)
        setting = f"s{self.setting}" + (self.exclusion_rule if self.setting == 2 else "")
        extras = "".join(f"+{name}{source or ''}" for name, _, source in self.extra_datasets or ())
        shares = "_mix" + "-".join(f"{w:g}" for w in self.mixture_weights) if self.mixture_weights else ""
        return f"{self.preset}-{self.autoencoder}{flags}_{setting}_{self.label_source}{extras}{shares}"

    @property
    def name(self) -> str:
        """Unique within a table; readable enough for ``--only`` patterns."""
        group = "-".join(self.group)
        volume = f"-{self.volume_mode}" if self.volume_mode else ""
        post = "-slicecc" if self.keep_largest_3d is False else f"-{self.component_3d}cc" if self.component_3d else ""
        post += "-selfsup" if self.self_support else ""
        if self.checkpoint is not None:
            source = Path(self.checkpoint).with_suffix("").as_posix().replace("/", "-")
            return f"{self.method}-file-{source}{post}{volume}_{group}_{self.shots}shot_fold{self.fold}"
        if not self.trains:
            return f"{self.method}{volume}_{group}_{self.shots}shot_fold{self.fold}"
        trained = "" if self.train_shots == self.shots else f"-t{self.train_shots}"
        schedule = "-constlr" if self.lr_schedule == "constant" else ""
        return (f"{self.method}-{self._network_tag()}_{group}_{self.shots}shot{trained}{post}{volume}_"
                f"{self.steps}steps{schedule}_fold{self.fold}")

    @property
    def train_key(self) -> str | None:
        """The shared training run's folder name (None: nothing to train)."""
        if not self.trains:
            return None
        extra = ""
        if self.overrides:
            blob = json.dumps(sorted(self.overrides), default=str).encode()
            extra = "_x" + hashlib.sha256(blob).hexdigest()[:8]
        folds = "" if self.n_folds == 5 else f"of{self.n_folds}"
        budget = "constlr" if self.lr_schedule == "constant" else f"{self.steps}steps"
        return (f"{self.dataset}_{self._network_tag()}_{'-'.join(self.training_group)}_{self.train_shots}shot_"
                f"{budget}_seed{self.seed}{extra}_fold{self.fold}{folds}")

    @property
    def training_group(self) -> tuple[str, ...]:
        return self.group if self.train_labels is None else self.train_labels

    @property
    def model_file(self) -> str:
        """The model file of the job's training in its run folder: one per budget on a constant schedule."""
        return "model.pt" if self.lr_schedule != "constant" else f"model_{self.steps}steps.pt"

    def config(self) -> dict:
        out = asdict(self)
        out["group"] = list(self.group)
        out["modes"] = list(self.modes)
        if self.train_labels is not None:
            out["train_labels"] = list(self.train_labels)
        out["overrides"] = dict(self.overrides)
        return out


# what a table's row may set: the job's own keys, and the model keys (ModelConfig) a job varies
_ROW_KEYS = ("method", "label", "setting", "exclusion_rule", "shots", "train_shots", "label_source",
             "extra_datasets", "mixture_weights", "steps", "lr_schedule", "train_labels", "volume_mode", "checkpoint",
             *(key for key in ModelConfig.keys() if key in {f.name for f in fields(Job)}))


def expand(table: Table, steps: int | None = None) -> list[Job]:
    """The table's jobs, rows first (so 1-shot trainings precede the 3-shot rows that reuse them),
    then groups, then folds. ``steps`` replaces the table's training budget for every job."""
    jobs = [job for row in expand_rows(table, steps) for job in row]
    names = [j.name for j in jobs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"table {table.name}: rows that make the same jobs: {duplicates}")
    return jobs


def expand_rows(table: Table, steps: int | None = None) -> list[list[Job]]:
    """One list of jobs per row of the table (groups, then folds)."""
    rows = []
    for row in table.rows:
        keys = {**table.defaults, **row}
        unknown = set(keys) - set(_ROW_KEYS)
        if unknown:
            raise ValueError(f"table {table.name}: unknown row keys {sorted(unknown)}")
        method = keys["method"]
        shots = int(keys.get("shots", 1))
        if keys.get("volume_mode") not in (None, "propagate", "nearest"):
            raise ValueError(f"table {table.name}: volume_mode must be propagate or nearest, got {keys['volume_mode']!r}")
        if keys.get("self_support") and method not in NETWORK_METHODS:
            raise ValueError(f"table {table.name}: self_support is a reading of the network, not of '{method}'")
        common = dict(table=table.name, dataset=table.dataset, dataset_dir=table.dataset_dir, n_folds=table.n_folds,
                      method=method, label=keys.get("label", method), shots=shots, seed=table.seed,
                      volume_mode=None if keys.get("volume_mode") in (None, "propagate") else keys["volume_mode"],
                      self_support=True if keys.get("self_support") else None,  # checked above: networks only
                      modes=tuple(table.modes), overrides=tuple(sorted(table.overrides.items())))
        if method in NETWORK_METHODS and keys.get("checkpoint"):  # a fixed model file: nothing to train
            common.update(checkpoint=str(keys["checkpoint"]), preset=keys.get("preset", "compact"),
                          autoencoder=keys.get("autoencoder", "taef2"),
                          keep_largest_3d=bool(keys.get("keep_largest_3d", True)),
                          component_3d=_component_rule(keys.get("component_3d")))
        elif method in NETWORK_METHODS:
            common.update(setting=int(keys.get("setting", 1)),
                          exclusion_rule=keys.get("exclusion_rule", "any"),
                          train_shots=int(keys.get("train_shots", shots)),
                          label_source=keys.get("label_source", "both"), preset=keys.get("preset", "compact"),
                          autoencoder=keys.get("autoencoder", "taef2"), use_qe=bool(keys.get("use_qe", True)),
                          use_vtct=bool(keys.get("use_vtct", True)),
                          use_support_kv=bool(keys.get("use_support_kv", True)),
                          steps=int(steps or keys.get("steps") or table.steps),
                          lr_schedule=_lr_schedule(keys.get("lr_schedule")),
                          train_labels=tuple(keys["train_labels"]) if keys.get("train_labels") else None,
                          keep_largest_3d=bool(keys.get("keep_largest_3d", True)),
                          component_3d=_component_rule(keys.get("component_3d")),
                          extra_datasets=tuple(tuple(entry) for entry in keys["extra_datasets"])
                          if keys.get("extra_datasets") else None,
                          mixture_weights=tuple(float(w) for w in keys["mixture_weights"])
                          if keys.get("mixture_weights") else None)
        rows.append([Job(group=tuple(group), fold=int(fold), **common) for group in table.groups for fold in table.folds])
    return rows


def _lr_schedule(schedule: str | None) -> str | None:
    """A row's LR schedule; linear is the default and reads as None (older results)."""
    if schedule not in (None, "linear", "constant"):
        raise ValueError(f"lr_schedule must be linear or constant, got {schedule!r}")
    return None if schedule in (None, "linear") else schedule


def _component_rule(rule: str | None) -> str | None:
    """A row's 3D component rule; the largest is the default and reads as None (older results)."""
    if rule not in (None, *COMPONENT_RULES):
        raise ValueError(f"component_3d must be one of {COMPONENT_RULES}, got {rule!r}")
    return None if rule in (None, "largest") else rule


def select(jobs: list[Job], only: str | None) -> list[Job]:
    """Jobs whose name matches any comma-separated pattern (fnmatch; a plain word is a substring)."""
    if not only:
        return list(jobs)
    patterns = [p if any(c in p for c in "*?[") else f"*{p}*" for p in only.split(",") if p]
    return [j for j in jobs if any(fnmatch.fnmatchcase(j.name, p) for p in patterns)]


def _shared_default() -> Path:
    return Path(os.environ.get("SDFSMIS_SHARED", REPO.parent / "shared"))


def _home_default() -> Path:
    return Path(os.environ.get("SDFSMIS_RUNNER_HOME", Path.home() / ".cache" / "sdfsmis"))


@dataclass
class Workspace:
    home: Path = field(default_factory=_home_default)
    results: Path = REPO / "results" / "accuracy"
    shared: Path = field(default_factory=_shared_default)
    bundle: Path = BUNDLE
    python: str = sys.executable

    def __post_init__(self):
        self.home, self.results, self.shared, self.bundle = (Path(p).expanduser().resolve() for p in
                                                             (self.home, self.results, self.shared, self.bundle))

    def dataset_dir(self, job: Job) -> Path:
        return self.data_dir(job.dataset_dir)

    def data_dir(self, folder: str) -> Path:
        path = Path(folder)
        return path if path.is_absolute() else self.shared / "data" / path

    def autoencoder_path(self, job: Job) -> Path | None:
        return None if job.autoencoder in (None, "unshuffle") else self.shared / "weights" / job.autoencoder

    def train_dir(self, job: Job) -> Path | None:
        return None if job.train_key is None else self.home / "runs" / job.train_key

    def model_path(self, job: Job) -> Path | None:
        if job.checkpoint is not None:
            return self.bundle.parent / job.checkpoint
        return None if job.train_key is None else self.train_dir(job) / job.model_file

    def eval_dir(self, job: Job) -> Path:
        return self.home / "eval" / job.table / job.name

    def cache_dir(self, job: Job) -> Path:
        return self.home / "latents" / job.dataset

    def log_path(self, job: Job) -> Path:
        return self.home / "logs" / job.table / f"{job.name}.log"

    def lock_path(self, job: Job) -> Path:
        return self.home / "state" / job.table / f"{job.name}.lock"

    def runner_dir(self) -> Path:
        return self.home / "state" / "runners"

    def result_path(self, job: Job) -> Path:
        return self.results / job.table / f"{job.name}.json"


def _cli_value(value) -> str:
    """How `python -m monai.bundle run` (python-fire) reads the value back: a plain string stays a
    string, anything else is written as a Python literal."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str):
        return value
    return repr(list(value) if isinstance(value, tuple) else value)


def _args(pairs: dict) -> list[str]:
    out = []
    for key, value in pairs.items():
        if value is not None:
            out += [f"--{key}", _cli_value(value)]
    return out


def _data_args(job: Job, ws: Workspace) -> dict:
    return dict(dataset=job.dataset, dataset_dir=ws.dataset_dir(job), test_labels=list(job.group), fold=job.fold,
                n_folds=job.n_folds, seed=job.seed, cache_dir=ws.cache_dir(job))


def train_command(job: Job, ws: Workspace) -> list[str]:
    """``python -m monai.bundle run training`` with the job's keys (run from bundle/)."""
    if not job.trains:
        raise ValueError(f"{job.name}: a baseline has nothing to train")
    keys = dict(_data_args(job, ws), test_labels=list(job.training_group), setting=job.setting,
                exclusion_rule=job.exclusion_rule,
                shots=job.train_shots, label_source=job.label_source, preset=job.preset,
                autoencoder=job.autoencoder, autoencoder_path=ws.autoencoder_path(job), use_qe=job.use_qe,
                use_vtct=job.use_vtct, use_support_kv=job.use_support_kv, steps=job.steps,
                run_name=job.train_key, output_dir=ws.train_dir(job), **dict(job.overrides))
    if job.lr_schedule:
        keys.update(lr_schedule=job.lr_schedule, model_path=ws.model_path(job))
    if job.extra_datasets:
        keys["extra_datasets"] = [{"dataset": name, "dataset_dir": str(ws.data_dir(folder)), "label_source": source}
                                  for name, folder, source in job.extra_datasets]
    if job.mixture_weights:
        keys["mixture_weights"] = list(job.mixture_weights)
    return [ws.python, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN_CONFIG, *_args(keys)]


def evaluate_command(job: Job, ws: Workspace) -> list[str]:
    """``python -m monai.bundle run evaluating`` in every mode of the job, on the fold it holds out.
    The network is read from the run's final EMA weights (`<output_dir>/model.pt`); supervoxels are
    not loaded (``label_source gt``: evaluation never reads them)."""
    output_dir = ws.train_dir(job) if job.trains else ws.eval_dir(job)
    keys = dict(_data_args(job, ws), shots=job.shots, method=job.method, modes=list(job.modes),
                label_source="gt", output_dir=output_dir, eval_dir=ws.eval_dir(job), **dict(job.overrides))
    if job.volume_mode:
        keys["volume_mode"] = job.volume_mode
    if job.is_network:  # explicit, so a checkpoint's own default never decides a table's numbers
        keys["checkpoint"] = ws.model_path(job)
        keys["keep_largest_3d"] = job.keep_largest_3d
        keys["component_3d"] = job.component_3d or "largest"
        if job.self_support:
            keys["self_support"] = True
    if job.checkpoint is not None:  # a file from elsewhere is scored on every fold unless told the job's
        keys["eval_folds"] = [job.fold]
    return [ws.python, "-m", "monai.bundle", "run", "evaluating", "--config_file", EVALUATE_CONFIGS, *_args(keys)]
