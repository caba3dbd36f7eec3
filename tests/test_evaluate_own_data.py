"""The evaluate workflow on a checkpoint from elsewhere (the shipped model, a user's) and the user's
own data (issue #42): the shipped TAEF2 is found and `--autoencoder_path` still wins, a dataset given
as a mapping reports under its name, `--eval_folds null` means every fold, the folds scored are
stated in the log, no supervoxels are needed, and progress is logged with a time estimate."""

import csv
import logging
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
TRAIN = str(BUNDLE / "configs" / "train.yaml")
EVALUATE = str(BUNDLE / "configs" / "evaluate.yaml")
META = str(BUNDLE / "configs" / "metadata.json")
MINE = {"name": "mine", "labels": {"liver": 1, "spleen": 4}}  # no supervoxel_pattern: a user's own data


@pytest.fixture(scope="module")
def own_data(tmp_path_factory):
    from scripts.data.phantoms import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("mine"), n_volumes=10, size=64, depth=8, seed=4)


@pytest.fixture(scope="module")
def legacy_checkpoint(tmp_path_factory):
    """A tiny TAEF2 network saved as models/model.pt is today: its autoencoder stored as
    `weights/taef2`, a folder a clone does not have (the weights ship in models/taef2)."""
    import torch

    from scripts.network.model_file import save_checkpoint_file
    from scripts.network.presets import build_segmenter

    torch.manual_seed(0)
    segmenter = build_segmenter(preset="tiny", autoencoder="taef2")
    segmenter.config = segmenter.config.replace(autoencoder_path="weights/taef2")
    path = tmp_path_factory.mktemp("elsewhere") / "model.pt"
    save_checkpoint_file(segmenter, path)
    return path


def evaluate(checkpoint, data, tmp_path, **overrides):
    from monai.bundle import ConfigWorkflow

    args = dict(bundle_root=str(BUNDLE), checkpoint=str(checkpoint), dataset=MINE, dataset_dir=str(data),
                test_labels=["liver"], modes=["ep1"], output_dir=str(tmp_path / "run"),
                eval_dir=str(tmp_path / "eval"), device="cpu", **overrides)
    workflow = ConfigWorkflow(config_file=[TRAIN, EVALUATE], meta_file=META, workflow_type="infer",
                              run_id="evaluating", **args)
    workflow.initialize()
    try:
        workflow.run()
    finally:
        workflow.finalize()
    return workflow


def test_a_checkpoint_from_elsewhere_on_own_data_scores_every_fold(legacy_checkpoint, own_data, tmp_path, capfd):
    workflow = evaluate(legacy_checkpoint, own_data, tmp_path)  # label_source stays "both": no supervoxels read
    method = workflow.parser.get_parsed_content("network_def")
    assert method.config.autoencoder == "taef2" and method.autoencoder.latent_channels == 32
    with open(tmp_path / "eval" / "ep1" / "cases.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted({int(r["fold"]) for r in rows}) == [0, 1, 2, 3, 4]  # not fold 0 alone
    assert len(rows) == 5  # 5 folds x 1 organ x 1 query (two patients per fold)
    assert (tmp_path / "eval" / "ep1" / "table.md").read_text().startswith("### mine: ")
    log = "".join(capfd.readouterr())  # the bundle's logging.conf logs to the console
    assert "is not this run's model" in log and "every fold is scored" in log
    assert "evaluating 5 cases: modes ['ep1'], folds all of 5" in log
    assert "1/5 cases" in log and "5/5 cases" in log and "ETA 0m00s" in log


def test_eval_folds_null_and_lists_from_the_command_line(legacy_checkpoint, own_data, tmp_path):
    evaluate(legacy_checkpoint, own_data, tmp_path, eval_folds="[1, 3]")
    with open(tmp_path / "eval" / "ep1" / "cases.csv") as f:
        assert sorted({int(r["fold"]) for r in csv.DictReader(f)}) == [1, 3]
    from scripts.engine.evaluation import parse_eval_folds

    assert parse_eval_folds("null") is None and parse_eval_folds(" None ") is None and parse_eval_folds(None) is None
    assert parse_eval_folds(2) == [2] and parse_eval_folds("2") == [2] and parse_eval_folds(["0", 4]) == [0, 4]
    with pytest.raises(ValueError, match="eval_folds must be null, a fold index or a list"):
        parse_eval_folds("first")


def test_the_runs_own_model_scores_its_held_out_fold(tmp_path, caplog):
    from scripts.engine.evaluation import default_eval_folds

    caplog.set_level(logging.INFO)
    run = tmp_path / "runs" / "r"
    assert default_eval_folds("sdfsmis", 2, run / "model.pt", run) == [2]
    assert default_eval_folds("sdfsmis", 2, run / "model_3000steps.pt", run) == [2]  # the runner's learning curves
    assert "scoring fold 2, the one this run holds out" in caplog.text
    assert default_eval_folds("support_copy", 1, None, run) == [1]  # baselines: the run's fold
    assert default_eval_folds("sdfsmis", 2, BUNDLE / "models" / "model.pt", run) is None


def test_autoencoder_path_given_on_the_command_line_wins(legacy_checkpoint, own_data, tmp_path):
    from scripts.network.autoencoders import WeightsError

    with pytest.raises(Exception) as error:
        evaluate(legacy_checkpoint, own_data, tmp_path, autoencoder_path=str(tmp_path / "my_taef2"))
    chain = []
    cause = error.value
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    assert any(isinstance(c, WeightsError) and "my_taef2" in str(c) for c in chain)


def test_a_mapping_dataset_names_runs_and_caches_by_its_name():
    from scripts.engine.experiment import dataset_name, run_name

    assert dataset_name(MINE) == "mine" and dataset_name("chaost2") == "chaost2" and dataset_name(None) is None
    assert run_name(MINE, 1, ["liver"], 0) == "mine_s1_liver_fold0"


def test_progress_text_estimates_the_time_left():
    from scripts.engine.evaluation import progress_text

    assert progress_text(10, 40, 65.0) == "10/40 cases, 1m05s elapsed, ETA 3m15s"
    assert progress_text(40, 40, 4000.0) == "40/40 cases, 1h06m elapsed, ETA 0m00s"
    assert progress_text(0, 40, 0.0).endswith("ETA ?")
