"""The accuracy runner (tools.runner): tables -> jobs, resumable execution, result files, tables.

Most tests drive the runner through a fake command runner that writes what the bundle commands
write (checkpoints, model.pt, protocol reports), so they take milliseconds; one test runs a real
baseline job through `python -m monai.bundle run evaluating` on phantoms. The full network job
(train + evaluate, minutes on a loaded 2-core machine) runs when SDFSMIS_RUNNER_E2E=1.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts.protocol.report import write_report
from tools.runner import background, execute
from tools.runner.aggregate import aggregate_table, markdown, write_table
from tools.runner.execute import _Lock, load_result, run_job, run_subprocess, run_table
from tools.runner.jobs import Workspace, evaluate_command, expand, select, train_command
from tools.runner.tables import TABLES, Table

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"


def _value(argv, key):
    return argv[argv.index(f"--{key}") + 1]


class FakeBundle:
    """Stands in for `python -m monai.bundle run training|evaluating`: writes the files they write.
    Per-case Dice = dice[(method, fold)] (default 0.5); ``fail_training`` fails the next N trainings
    after a first checkpoint, as a killed run would."""

    def __init__(self, dice=None, fail_training=0):
        self.calls, self.dice, self.fail_training = [], dice or {}, fail_training

    def __call__(self, argv, cwd, log, env):
        argv = list(map(str, argv))
        self.calls.append(argv)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("fake\n")
        if argv[4] == "training":
            out = Path(_value(argv, "output_dir"))
            (out / "checkpoints").mkdir(parents=True, exist_ok=True)
            if self.fail_training:
                self.fail_training -= 1
                (out / "checkpoints" / "checkpoint_iteration=2.pt").write_bytes(b"half")
                return 1
            steps = int(_value(argv, "steps"))
            for old in (out / "checkpoints").glob("checkpoint_*.pt"):
                old.unlink()
            (out / "checkpoints" / f"checkpoint_iteration={steps}.pt").write_bytes(b"ckpt")
            (out / "model.pt").write_bytes(f"weights {out.name}".encode())
            return 0
        assert argv[4] == "evaluating"
        method, fold = _value(argv, "method"), int(_value(argv, "fold"))
        organs = eval(_value(argv, "test_labels"))  # a Python literal, as python-fire reads it
        dice = self.dice.get((method, fold), 0.5)
        for mode in eval(_value(argv, "modes")):
            records = [{"mode": mode, "fold": fold, "support_pid": "1", "query_pid": q, "organ": organ,
                        "label_value": i + 1, "shots": int(_value(argv, "shots")), "dice": dice, "tp": 50, "fp": 25,
                        "fn": 25, "hd95": 4.0, "assd": 1.0, "pred_empty": False, "gt_empty": False, "n_scored": 5,
                        "n_segmented": 5} for i, organ in enumerate(organs) for q in ("2", "3")]
            write_report(records, Path(_value(argv, "eval_dir")) / mode, method=method, mode=mode, organs=organs)
        return 0

    def count(self, kind):
        return sum(argv[4] == kind for argv in self.calls)


def small_table(**keys):
    base = dict(name="mini", title="mini table", dataset="phantom", dataset_dir="/nowhere", groups=(("liver", "spleen"),),
                folds=(0, 1), steps=10, defaults={"setting": 1, "label_source": "gt"},
                rows=({"method": "sdfsmis", "label": "net", "preset": "tiny", "autoencoder": "unshuffle"},
                      {"method": "support_copy", "label": "copy"}))
    base.update(keys)
    return Table(**base)


@pytest.fixture
def ws(tmp_path):
    return Workspace(home=tmp_path / "home", results=tmp_path / "results", shared=tmp_path / "shared")


def quiet(_message):
    pass


# ---- tables -> jobs -------------------------------------------------------------------------------

def test_tables_expand_into_the_protocol_jobs():
    s1 = expand(TABLES["chaost2_s1"])
    # (network, support_copy, registration) x {1, 3} shots, + the support-component row; x 2 groups x 5 folds
    assert len(s1) == (3 * 2 + 1) * 2 * 5
    assert len({j.name for j in s1}) == len(s1)
    assert {j.group for j in s1} == {("liver", "spleen"), ("left_kidney", "right_kidney")}
    assert {j.method for j in s1} == {"sdfsmis", "support_copy", "registration"}
    network = [j for j in s1 if j.trains]
    assert {(j.preset, j.autoencoder, j.setting, j.steps) for j in network} == {("compact", "taef2", 1, 3000)}
    # the 3-shot and support-component rows evaluate the 1-shot models: 10 trainings for 30 network jobs
    assert {j.shots for j in network} == {1, 3} and {j.train_shots for j in network} == {1}
    assert len(network) == 30 and len({j.train_key for j in network}) == 10
    assert {j.component_3d for j in network} == {None, "support"}
    assert all(j.train_key is None and j.steps is None for j in s1 if not j.trains)

    s2 = [j for j in expand(TABLES["chaost2_s2"]) if j.trains]
    assert {(j.setting, j.exclusion_rule) for j in s2} == {(2, "any"), (2, "all")}
    assert len({j.train_key for j in s2}) == 2 * 2 * 5
    # the support-component rows evaluate the same trainings under their own names
    support = [j for j in s2 if j.component_3d == "support"]
    assert len(support) == 2 * 2 * 5 and all("-supportcc_" in j.name for j in support)
    assert {j.train_key for j in support} == {j.train_key for j in s2 if j.component_3d is None}
    assert _value(evaluate_command(support[0], Workspace()), "component_3d") == "support"

    cmr = expand(TABLES["cmr"])
    assert {j.group for j in cmr} == {("lv_bp", "lv_myo", "rv")}
    assert {j.label_source for j in cmr if j.trains} == {"supervoxel"}
    # 1-shot and 3-shot rows, the 3-shot network evaluating the 1-shot models (5 trainings)
    assert {(j.method, j.shots) for j in cmr} == {(m, k) for m in ("sdfsmis", "support_copy", "registration")
                                                  for k in (1, 3)}
    assert len({j.train_key for j in cmr if j.trains}) == 5 and {j.train_shots for j in cmr if j.trains} == {1}

    ablation = [j for j in expand(TABLES["chaost2_ablation"]) if j.trains]
    variants = {(j.autoencoder, j.use_qe, j.use_vtct, j.use_support_kv, j.label_source) for j in ablation}
    assert variants == {("taef2", True, True, True, "both"), ("taef2", False, True, True, "both"),
                        ("taef2", True, False, True, "both"), ("taef2", True, True, False, "both"),
                        ("taesd", True, True, True, "both"), ("unshuffle", True, True, True, "both"),
                        ("taef2", True, True, True, "supervoxel")}
    assert {j.fold for j in ablation} == {0, 1, 2, 3, 4} and {j.group for j in ablation} == {("liver", "spleen")}
    # the ablation's full row is chaost2_s1's training: trained once for both tables
    assert {j.train_key for j in ablation} & {j.train_key for j in network}
    # the post-processing row evaluates the full row's weights with the per-slice step only
    per_slice = [j for j in ablation if j.keep_largest_3d is False]
    full = {j.fold: j for j in ablation if j.keep_largest_3d and (j.autoencoder, j.label_source) == ("taef2", "both")
            and j.use_qe and j.use_vtct and j.use_support_kv}
    assert len(per_slice) == 5 and all(j.train_key == full[j.fold].train_key and j.name != full[j.fold].name
                                       for j in per_slice)
    assert len({j.train_key for j in ablation}) == 7 * 5

    # one step budget for every fold of a table, replaceable as a whole
    assert {j.steps for j in expand(TABLES["cmr"], steps=500) if j.trains} == {500}


def test_the_learning_curve_and_draw_tables_share_one_training_per_width():
    """#43's curve: one constant-LR training per width, a model file per budget, every budget's row
    resuming the same run; #38's draw table evaluates the curve's 6,000-step model, propagated and
    nearest, beside the baselines, on whole volumes."""
    ws = Workspace()
    curve = [j for j in expand(TABLES["chaost2_s1_curve"]) if j.trains]
    compact = [j for j in curve if j.preset == "compact"]
    assert {j.steps for j in compact} == {3000, 6000, 12000, 24000} and {j.lr_schedule for j in compact} == {"constant"}
    assert len({j.train_key for j in compact}) == 1  # one run, trained on to each budget
    assert {j.model_file for j in compact} == {f"model_{s}steps.pt" for s in (3000, 6000, 12000, 24000)}
    assert len({j.name for j in compact}) == len(compact) and all("-constlr" in j.name for j in compact)
    assert {j.preset for j in curve} == {"compact", "wide"} and len({j.train_key for j in curve}) == 2
    train = train_command(compact[0], ws)
    assert _value(train, "lr_schedule") == "constant" and _value(train, "label_source") == "supervoxel"
    assert _value(evaluate_command(compact[-1], ws), "checkpoint").endswith(compact[-1].model_file)

    draw = expand(TABLES["chaost2_s1_draw"])
    assert {tuple(j.modes) for j in draw} == {("draw1", "draw2", "draw3", "draw5")}
    network = [j for j in draw if j.trains]
    assert {j.volume_mode for j in network} == {None, "nearest"}  # None: propagate, the default
    six = {j.train_key: j for j in compact if j.steps == 6000}
    # fold 0 evaluates the curve's own run; the other folds train the same recipe on their fold
    assert {j.train_key for j in network if j.fold == 0} <= set(six) and {j.steps for j in network} == {6000}
    recipe = lambda job: {k: v for k, v in job.config().items() if k in ("preset", "autoencoder", "label_source",
                                                                      "lr_schedule", "train_labels", "setting")}
    assert all(recipe(j) == recipe(next(iter(six.values()))) for j in network)
    nearest = [j for j in network if j.volume_mode == "nearest"]
    assert all("-nearest" in j.name for j in nearest)
    assert _value(evaluate_command(nearest[0], ws), "volume_mode") == "nearest"
    assert {j.method for j in draw} == {"sdfsmis", "registration", "support_copy", "contour_interpolation"}
    # the draw protocol against steps: the curve's own fold-0 runs, one model file per budget
    draw_curve = expand(TABLES["chaost2_s1_draw_curve"])
    assert {j.train_key for j in draw_curve} == {j.train_key for j in compact}
    assert {j.model_file for j in draw_curve} == {j.model_file for j in compact}
    # the shipped model: read from its file, never trained by the runner, post-processed like the others
    shipped = [j for j in draw if j.checkpoint is not None]
    assert shipped and all(j.is_network and not j.trains and j.train_key is None for j in shipped)
    assert {j.checkpoint for j in shipped} == {"bundle/models/model.pt"}
    assert all("-file-bundle-models-model" in j.name for j in shipped) and len({j.name for j in shipped}) == len(shipped)
    command = evaluate_command(shipped[0], ws)
    assert Path(_value(command, "checkpoint")) == REPO / "bundle" / "models" / "model.pt"
    assert _value(command, "component_3d") == "support" and _value(command, "method") == "sdfsmis"
    assert _value(command, "eval_folds") == f"[{shipped[0].fold}]"  # its job's fold, not every fold
    assert "--steps" not in command and "--setting" not in command


def test_the_five_fold_supervoxel_table_reads_the_draw_tables_models_and_ablates_self_support():
    """#43: the curve's budget on five folds is the draw table's fold models read the field's way;
    its self-support row evaluates the same weights with the second reading, and says so."""
    ws = Workspace()
    table = expand(TABLES["chaost2_s1_supervoxel"])
    draw = {j.train_key for j in expand(TABLES["chaost2_s1_draw"]) if j.trains}
    assert {j.train_key for j in table} == draw and {j.fold for j in table} == set(range(5))
    assert {tuple(j.modes) for j in table} == {("ep1", "in_volume", "no_oracle")}
    plain = [j for j in table if not j.self_support and j.component_3d == "support"]
    second = [j for j in table if j.self_support]
    assert len(plain) == len(second) == 2 * 5 and all("-supportcc-selfsup_" in j.name for j in second)
    assert {j.name.replace("-selfsup", "") for j in second} == {j.name for j in plain}
    assert {j.component_3d for j in second} == {"support"}  # what ships, so the two readings compare alone
    assert _value(evaluate_command(second[0], ws), "self_support") == "True"
    assert "--self_support" not in evaluate_command(plain[0], ws)  # older results stay those of the plain reading
    assert plain[0].config()["self_support"] is None
    with pytest.raises(ValueError, match="self_support is a reading of the network"):
        expand(small_table(rows=({"method": "registration", "self_support": True},)))


def test_training_keys_leave_out_patients_and_keep_the_rate():
    from types import SimpleNamespace

    from scripts.engine.experiment import without_patients
    from scripts.engine.optimizers import final_lr_factor

    volumes = [SimpleNamespace(pid=p) for p in ("1", "15", "39", "cmr:15")]
    assert [v.pid for v in without_patients(volumes, [15, "39"])] == ["1", "cmr:15"]  # another dataset's 15 stays
    assert without_patients(volumes, []) == volumes
    with pytest.raises(ValueError, match="7"):
        without_patients(volumes, [7], volumes)
    assert final_lr_factor("linear") == 0.0 and final_lr_factor("constant") == 1.0
    with pytest.raises(ValueError, match="lr_schedule"):
        final_lr_factor("cosine")


def test_only_selects_jobs_by_pattern():
    jobs = expand(TABLES["chaost2_s1"])
    assert {j.method for j in select(jobs, "support_copy")} == {"support_copy"}
    assert len(select(jobs, "sdfsmis*liver-spleen_1shot_*fold0")) == 1
    assert len(select(jobs, "fold0,fold1")) == 2 * len(select(jobs, "fold0"))
    assert select(jobs, None) == jobs


def test_commands_are_the_bundle_workflows_with_the_job_keys(ws):
    job = next(j for j in expand(TABLES["chaost2_s1"]) if j.trains and j.shots == 3 and j.fold == 2)
    train = train_command(job, ws)
    assert train[1:7] == ["-m", "monai.bundle", "run", "training", "--config_file", "configs/train.yaml"]
    assert _value(train, "dataset_dir") == str(ws.shared / "data" / "CHAOST2")
    assert _value(train, "autoencoder_path") == str(ws.shared / "weights" / "taef2")
    assert eval(_value(train, "test_labels")) == ["liver", "spleen"]
    assert (_value(train, "fold"), _value(train, "shots"), _value(train, "steps")) == ("2", "1", "3000")
    assert _value(train, "output_dir") == str(ws.home / "runs" / job.train_key)
    assert _value(train, "use_qe") == "True" and _value(train, "label_source") == "both"
    evaluate = evaluate_command(job, ws)
    assert evaluate[4] == "evaluating" and "configs/evaluate.yaml" in _value(evaluate, "config_file")
    assert (_value(evaluate, "method"), _value(evaluate, "shots")) == ("sdfsmis", "3")
    assert eval(_value(evaluate, "modes")) == ["ep1", "in_volume", "no_oracle"]
    assert _value(evaluate, "output_dir") == _value(train, "output_dir")  # reads that run's model.pt
    baseline = next(j for j in expand(TABLES["chaost2_s1"]) if j.method == "registration")
    with pytest.raises(ValueError):
        train_command(baseline, ws)
    assert "--autoencoder_path" not in evaluate_command(baseline, ws)
    assert "--extra_datasets" not in train and "--mixture_weights" not in train


def test_a_row_with_another_datasets_ground_truth_trains_on_both(ws):
    # cmr_abdominal_gt: CMR supervoxels beside CHAOST2 ground truth, half each, in a run of its own
    mixed = expand(TABLES["cmr_abdominal_gt"])
    assert len(mixed) == 5 and all(j.trains and j.label_source == "supervoxel" for j in mixed)
    plain = {j.fold: j for j in expand(TABLES["cmr"]) if j.trains}
    assert all(j.train_key != plain[j.fold].train_key and j.name != plain[j.fold].name for j in mixed)
    train = train_command(mixed[0], ws)
    assert eval(_value(train, "extra_datasets")) == [
        {"dataset": "chaost2", "dataset_dir": str(ws.shared / "data" / "CHAOST2"), "label_source": "gt"}]
    assert eval(_value(train, "mixture_weights")) == [1.0, 1.0]
    assert eval(_value(train, "test_labels")) == ["lv_bp", "lv_myo", "rv"]  # every CMR class stays a test class
    # a job without extra datasets records none, so the results of the tables before stay valid
    assert plain[0].config()["extra_datasets"] is None and plain[0].config()["mixture_weights"] is None
    # the table says what the row trained on: both sources, not "supervoxels only"
    labels = {row["training_labels"] for section in aggregate_table(TABLES["cmr_abdominal_gt"], ws)["sections"]
              for row in section["rows"]}
    assert labels == {"supervoxels; chaost2: GT of every class"}
    assert {row["training_labels"] for section in aggregate_table(TABLES["cmr"], ws)["sections"]
            for row in section["rows"] if row["method"] not in ("support_copy", "registration")} == {"supervoxels only"}


# ---- running jobs ---------------------------------------------------------------------------------

def test_jobs_write_results_and_finished_jobs_are_skipped(ws):
    table = small_table()
    jobs = expand(table)
    fake = FakeBundle(dice={("sdfsmis", 0): 0.6, ("sdfsmis", 1): 0.8})
    outcome = run_table(table, jobs, ws, runner=fake, say=quiet)
    assert set(outcome.values()) == {"finished"} and fake.count("training") == 2 and fake.count("evaluating") == 4

    job = jobs[0]
    result = json.loads(ws.result_path(job).read_text())
    assert result["status"] == "complete" and result["config"]["steps"] == 10 and result["config"]["fold"] == 0
    assert result["weights"]["model"]["sha256"] == execute._sha256(ws.train_dir(job) / "model.pt")
    assert result["training"]["steps"] == 10 and result["training"]["labels"] == "gt"
    assert result["git"]["commit"] and result["device"]["kind"] in ("cpu", "cuda")
    assert set(result["wall_seconds"]) >= {"train", "evaluate"}
    assert set(result["modes"]) == {"ep1", "in_volume", "no_oracle"}
    ep1 = result["modes"]["ep1"]
    assert len(ep1["cases"]) == 4 and {c["dice"] for c in ep1["cases"]} == {0.6}
    assert ep1["summary"]["mean"]["dice_mean"] == pytest.approx(0.6)
    assert {"hd95", "assd"} <= set(ep1["cases"][0])

    again = FakeBundle()
    assert set(run_table(table, jobs, ws, runner=again, say=quiet).values()) == {"done"}
    assert again.calls == []
    # a result written for other keys (another step budget) is not a finished job of these
    assert load_result(expand(table, steps=20)[0], ws) is None
    # a row's display label is not one of those keys
    relabelled = small_table(rows=({**table.rows[0], "label": "renamed"}, table.rows[1]))
    assert load_result(expand(relabelled)[0], ws) is not None
    # the network's post-processing is: a result from before the 3D step is re-evaluated, not retrained
    assert _value(evaluate_command(job, ws), "keep_largest_3d") == "True"
    # the 3D component rule is passed explicitly, so a checkpoint's default never decides a table
    assert _value(evaluate_command(job, ws), "component_3d") == "largest" and job.component_3d is None
    path = ws.result_path(job)
    older = json.loads(path.read_text())
    del older["config"]["keep_largest_3d"]
    path.write_text(json.dumps(older))
    assert load_result(job, ws) is None
    rerun = FakeBundle()
    assert run_table(table, jobs, ws, runner=rerun, say=quiet)[job.name] == "finished"
    assert (rerun.count("training"), rerun.count("evaluating")) == (0, 1)
    # a key that does not apply (a baseline's None) is read as absent: older baseline results stand
    baseline = next(j for j in jobs if not j.trains)
    assert baseline.keep_largest_3d is None and "--keep_largest_3d" not in evaluate_command(baseline, ws)
    older = json.loads(ws.result_path(baseline).read_text())
    del older["config"]["keep_largest_3d"]
    ws.result_path(baseline).write_text(json.dumps(older))
    assert load_result(baseline, ws) is not None


def test_jobs_sharing_a_training_train_once_and_a_failed_training_resumes(ws):
    rows = ({"method": "sdfsmis", "label": "1-shot", "preset": "tiny", "autoencoder": "unshuffle"},
            {"method": "sdfsmis", "label": "3-shot", "preset": "tiny", "autoencoder": "unshuffle", "shots": 3,
             "train_shots": 1})
    table = small_table(rows=rows, folds=(0,))
    jobs = expand(table)
    assert jobs[0].train_key == jobs[1].train_key
    fake = FakeBundle(fail_training=1)
    outcome = run_table(table, jobs, ws, runner=fake, say=quiet)
    # the first job's training died after a checkpoint; the second job (same run) resumed and finished it
    assert outcome[jobs[0].name].startswith("failed") and outcome[jobs[1].name] == "finished"
    assert fake.count("training") == 2
    assert "1 failed" in background.status(ws, {"mini": table})
    outcome = run_table(table, jobs, ws, runner=fake, say=quiet)
    assert outcome == {jobs[0].name: "finished", jobs[1].name: "done"}
    assert fake.count("training") == 2  # the run is complete: no third training
    training = json.loads(ws.result_path(jobs[0]).read_text())["training"]
    assert training["sessions"] == 2 and training["resumed_from"] == [None, 2]
    assert "0 failed" in background.status(ws, {"mini": table})
    assert aggregate_table(table, ws)["weights_mismatches"] == []
    # the run trained again after its first job was evaluated (a lost cache): the table says so
    path = ws.result_path(jobs[1])
    later = json.loads(path.read_text())
    later["weights"]["model"].update(sha256="f" * 64, state_dict_sha256="e" * 64)
    path.write_text(json.dumps(later))
    data = aggregate_table(table, ws)
    assert data["weights_mismatches"] == [{"run": jobs[0].train_key, "jobs_by_weights": {
        load_result(jobs[0], ws)["weights"]["model"].get("state_dict_sha256")
        or load_result(jobs[0], ws)["weights"]["model"]["sha256"]: [jobs[0].name], "e" * 64: [jobs[1].name]}}]
    assert f"**Not one model**: these jobs share the training run `{jobs[0].train_key}`" in markdown(data)
    # a constant-schedule run writes one file per budget: different files are different models by design
    later["weights"]["model"]["file"] = "model_6000steps.pt (final EMA weights)"
    path.write_text(json.dumps(later))
    assert aggregate_table(table, ws)["weights_mismatches"] == []


def test_a_job_finished_in_another_table_is_reused_not_run_again(ws):
    first = small_table(folds=(0,))
    run_table(first, expand(first), ws, runner=FakeBundle(dice={("support_copy", 0): 0.3}), say=quiet)
    # Setting 2 changes what the network trains on, not what a baseline does
    second = small_table(name="mini_s2", folds=(0,), defaults={"setting": 2, "label_source": "gt"},
                         rows=(*small_table().rows, {"method": "support_copy", "label": "copy", "shots": 3}))
    net, copy, copy3 = expand(second)
    fake = FakeBundle(dice={("support_copy", 0): 0.9})
    outcome = run_table(second, [net, copy, copy3], ws, runner=fake, say=quiet)
    assert set(outcome.values()) == {"finished"}
    evaluated = [_value(argv, "method") + _value(argv, "shots") for argv in fake.calls if argv[4] == "evaluating"]
    assert sorted(evaluated) == ["sdfsmis1", "support_copy3"]  # the 1-shot copy came from `mini`
    reused = load_result(copy, ws)
    assert reused["table"] == "mini_s2" and reused["config"]["table"] == "mini_s2"
    assert reused["reused_from"]["table"] == "mini" and reused["reused_from"]["job"] == copy.name
    assert reused["modes"]["ep1"]["summary"]["mean"]["dice_mean"] == pytest.approx(0.3)
    assert load_result(copy3, ws)["modes"]["ep1"]["summary"]["mean"]["dice_mean"] == pytest.approx(0.9)
    assert "reused_from" not in load_result(net, ws)  # a network job of Setting 2 trains its own model
    # the same network row in a third table (an ablation's `full` row) shares the run and its numbers
    third = small_table(name="mini_ablation", folds=(0,), rows=({**first.rows[0], "label": "full"},))
    again = FakeBundle()
    assert run_table(third, expand(third), ws, runner=again, say=quiet) == {expand(third)[0].name: "finished"}
    assert again.calls == [] and load_result(expand(third)[0], ws)["reused_from"]["table"] == "mini"


def test_a_job_held_by_another_runner_is_left_to_it_and_shown_running(ws):
    table = small_table()
    job = expand(table)[1]
    with _Lock(ws.lock_path(job), blocking=False) as held:
        assert held
        assert run_job(job, ws, runner=FakeBundle(), say=quiet) == "busy"
        text = background.status(ws, {"mini": table}, verbose=True)
        assert "1 running" in text and f"running: {job.name}" in text
    assert "0 running" in background.status(ws, {"mini": table})


# ---- tables ---------------------------------------------------------------------------------------

def test_aggregate_marks_incomplete_rows_and_never_shows_an_unfinished_number(ws):
    table = small_table()
    jobs = expand(table)
    net0, net1, copy0, copy1 = jobs
    fake = FakeBundle(dice={("sdfsmis", 0): 0.7, ("support_copy", 0): 0.30, ("support_copy", 1): 0.50})
    run_table(table, [net0, copy0, copy1], ws, runner=fake, say=quiet)
    # net1 is "unfinished": trained and evaluated (a distinctive 0.4242 on disk) but no result file
    unfinished = FakeBundle(dice={("sdfsmis", 1): 0.4242})
    unfinished(train_command(net1, ws), BUNDLE, ws.log_path(net1), {})
    unfinished(evaluate_command(net1, ws), BUNDLE, ws.log_path(net1), {})

    data = aggregate_table(table, ws)
    ep1 = next(s for s in data["sections"] if s["mode"] == "ep1")
    net, copy = ep1["rows"]
    assert not net["complete"] and net["cells"] is None and net["folds_done"] == [0]
    assert net["missing_jobs"] == [net1.name] and net["training_labels"] == "GT of right_kidney, left_kidney"
    assert copy["complete"] and copy["training_labels"] == "none (no training)"
    assert copy["cells"]["liver"]["dice_mean"] == pytest.approx(0.4)
    assert copy["cells"]["mean"]["dice_std"] == pytest.approx(0.1414, abs=1e-3)  # std (ddof 1) of 0.3 and 0.5
    assert copy["cells"]["mean"]["per_fold"] == {"0": pytest.approx(0.3), "1": pytest.approx(0.5)}

    paths = write_table(table, ws)
    text = markdown(data)
    assert "incomplete (1/2 folds)" in text and "40.0 ± 14.1" in text
    assert "no pretrained Stable Diffusion" in text and "GT of right_kidney, left_kidney" in text
    for written in [text, *(p.read_text() for p in paths)]:
        assert "42.4" not in written and "70.0" not in written  # neither the unfinished nor the lone fold
    assert json.loads(paths[0].read_text())["jobs_finished"] == 3


# ---- command line, background -------------------------------------------------------------------

def _cli(*args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "tools.runner", *args], cwd=REPO, capture_output=True, text=True,
                          env=env or dict(os.environ), timeout=timeout)


def test_cli_lists_jobs_starts_a_runner_and_reports_status(ws, tmp_path):
    listing = _cli("list", "--table", "cmr", "--only", "sdfsmis*_1shot_*")
    assert listing.returncode == 0 and len(listing.stdout.split()) == 5
    # a finished job: the background runner finds nothing to do, aggregates and exits
    job = select(expand(TABLES["chaost2_s1"]), "support_copy_liver-spleen_1shot_fold0")[0]
    assert run_job(job, ws, runner=FakeBundle(), say=quiet) == "finished"
    args = ["--home", str(ws.home), "--results", str(ws.results), "--shared", str(ws.shared)]
    started = _cli("start", "--table", "chaost2_s1", "--only", job.name, *args)
    assert started.returncode == 0, started.stderr
    log = ws.home / "logs" / "chaost2_s1" / "runner.log"
    for _ in range(100):
        if "1/1 finished" in (log.read_text() if log.exists() else ""):
            break
        time.sleep(0.1)
    assert "1/1 finished" in log.read_text()
    assert (ws.results / "chaost2_s1.md").is_file()
    state = _cli("status", "--table", "chaost2_s1", *args)
    assert state.returncode == 0 and "chaost2_s1: 1/70 done, 0 running, 0 failed, 69 left" in state.stdout


def test_stop_ends_a_runner_and_its_commands(ws):
    # a stand-in runner leading its own process group, with a child command
    proc = subprocess.Popen([sys.executable, "-c", "import subprocess; subprocess.run(['sleep', '60'])"],
                            start_new_session=True)
    ws.runner_dir().mkdir(parents=True)
    (ws.runner_dir() / f"cmr.{proc.pid}.json").write_text(json.dumps({"pid": proc.pid, "table": "cmr",
                                                                      "started": "now"}))
    assert "pid" in background.status(ws, TABLES, ["cmr"])
    assert background.stop(ws, TABLES["cmr"]) == [proc.pid]
    assert proc.wait(timeout=10) != 0
    assert background.live_runners(ws, "cmr") == []


# ---- real commands --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from scripts.data.phantoms import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("phantoms"), n_volumes=10, size=64, depth=12, seed=3)


def phantom_table(phantoms, rows):
    return Table(name="phantom_smoke", title="phantoms", dataset="phantom", dataset_dir=str(phantoms),
                 groups=(("liver", "spleen"),), folds=(0,), steps=4, rows=rows,
                 defaults={"setting": 1, "label_source": "both"},
                 overrides={"steps_per_epoch": 2, "batch_size": 2, "val_interval": 100, "ckpt_interval": 2,
                            "val_queries": 1})


def test_a_baseline_job_through_the_real_evaluate_workflow(phantoms, tmp_path):
    ws = Workspace(home=tmp_path / "home", results=tmp_path / "results", shared=tmp_path)
    table = phantom_table(phantoms, ({"method": "support_copy"},))
    (job,) = expand(table)
    assert run_job(job, ws, runner=run_subprocess, env=dict(os.environ, OMP_NUM_THREADS="1"), say=quiet) == "finished", \
        ws.log_path(job).read_text()[-3000:]
    result = load_result(job, ws)
    assert set(result["modes"]) == {"ep1", "in_volume", "no_oracle"}
    assert result["modes"]["in_volume"]["summary"]["mean"]["dice_mean"] > 0.3
    assert all(c["fold"] == 0 for c in result["modes"]["ep1"]["cases"])


@pytest.mark.skipif(os.environ.get("SDFSMIS_RUNNER_E2E") != "1", reason="minutes on 2 cores: SDFSMIS_RUNNER_E2E=1")
def test_a_network_job_trains_and_evaluates_through_the_real_workflows(phantoms, tmp_path):
    ws = Workspace(home=tmp_path / "home", results=tmp_path / "results", shared=tmp_path)
    table = phantom_table(phantoms, ({"method": "sdfsmis", "label": "tiny", "preset": "tiny",
                                      "autoencoder": "unshuffle"},))
    (job,) = expand(table)
    assert run_table(table, [job], ws, say=quiet) == {job.name: "finished"}, ws.log_path(job).read_text()[-3000:]
    result = load_result(job, ws)
    assert (ws.train_dir(job) / "checkpoints" / "checkpoint_iteration=4.pt").is_file()
    assert result["weights"]["model"]["sha256"] and result["training"]["steps"] == 4
    assert run_table(table, [job], ws, say=quiet) == {job.name: "done"}
