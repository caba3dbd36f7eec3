"""The protocol loop: what it hands a method, what it scores, and what it writes."""

import json

import numpy as np
import pytest

from scripts.data.volumes import Volume
from scripts.protocol.evaluate import evaluate_and_report, run_protocol

SIZE = 24


def volume(pid, depth, organ_z, value=1, spacing=(5.0, 1.5, 1.5)):
    """A volume whose organ is a fixed square on slices `organ_z` (image = label-based texture)."""
    label = np.zeros((depth, SIZE, SIZE), np.int32)
    for z in organ_z:
        label[z, 6:14, 8:16] = value
    image = np.where(label > 0, 0.5, -0.5).astype(np.float32)
    return Volume(pid=str(pid), image=image, label=label, spacing=spacing)


class Recorder:
    """A method that predicts the support mask and remembers what it was given."""

    name = "recorder"

    def __init__(self):
        self.calls = []

    def predict_scores(self, support_images, support_masks, query_images, query_episode):
        self.calls.append((support_images.shape, support_masks.copy(), query_images.shape,
                           query_episode.copy()))
        return support_masks.mean(axis=1)[query_episode]

    def binarize(self, scores, support_masks=None):
        return scores > 0.5


VOLUMES = [volume(1, 12, range(3, 9)), volume(2, 10, range(2, 8)), volume(10, 14, range(4, 11)),
           volume(3, 9, range(1, 7))]


def test_ep1_calls_once_per_query_and_organ():
    method = Recorder()
    records = run_protocol(method, VOLUMES, {"organ": 1}, mode="ep1", n_folds=2, distances=False)
    # folds by numeric id: [1, 2] and [3, 10]; supports 1 and 3
    assert [(r["fold"], r["support_pid"], r["query_pid"]) for r in records] == [(0, "1", "2"), (1, "3", "10")]
    assert len(method.calls) == 2
    sup_shape, _, q_shape, episode = method.calls[0]
    assert sup_shape == (3, 1, SIZE, SIZE) and q_shape == (6, SIZE, SIZE)
    assert episode.tolist() == [0, 0, 1, 1, 2, 2]
    # the organ is the same square on every slice: copying the support is exact
    assert all(r["dice"] == pytest.approx(1.0) for r in records)
    assert records[0]["n_scored"] == 6 and records[0]["mode"] == "ep1"


def test_in_volume_excludes_support_slice_from_scoring():
    method = Recorder()
    records = run_protocol(method, VOLUMES, {"organ": 1}, mode="in_volume", n_folds=2, distances=False)
    assert [r["query_pid"] for r in records] == ["1", "2", "3", "10"]  # every volume is its own support
    assert all(r["support_pid"] == r["query_pid"] for r in records)
    rec = records[0]  # pid 1: organ on 6 slices, one of them is the support
    assert rec["n_scored"] == 5 and rec["tp"] == 5 * 8 * 8 and rec["fn"] == 0


def test_no_oracle_segments_and_scores_every_slice():
    method = Recorder()
    records = run_protocol(method, VOLUMES, {"organ": 1}, mode="no_oracle", n_folds=2, folds=[0])
    rec = records[0]  # query pid 2: 10 slices, organ on 6
    assert rec["n_scored"] == rec["n_segmented"] == 10
    assert method.calls[0][2] == (10, SIZE, SIZE)
    # copying onto the 4 organ-free slices costs 4 slices of false positives
    assert rec["fp"] == 4 * 8 * 8 and rec["fn"] == 0
    assert rec["dice"] == pytest.approx(2 * 6 / (2 * 6 + 4))
    assert rec["hd95"] is not None and rec["hd95"] > 0


def test_surface_distances_use_spacing_and_unscored_slices_are_background():
    class Shift(Recorder):
        def predict_scores(self, support_images, support_masks, query_images, query_episode):
            return np.roll(super().predict_scores(support_images, support_masks, query_images, query_episode),
                           2, axis=-1)  # two columns = 3 mm to the right

    vols = [volume(1, 8, range(2, 6)), volume(2, 8, range(2, 6))]
    rec = run_protocol(Shift(), vols, {"organ": 1}, mode="ep1", n_folds=1)[0]
    assert rec["dice"] == pytest.approx(6 / 8)
    assert rec["hd95"] == pytest.approx(3.0)


def test_evaluate_and_report_writes_files(tmp_path):
    class Counting(Recorder):
        def __init__(self):
            super().__init__()
            self.fallback_counts = {"pairs": 7}

    summary = evaluate_and_report(Counting(), VOLUMES, {"organ": 1}, tmp_path, mode="ep1", n_folds=2,
                                  dataset="toy", distances=False)
    assert summary["aggregate"]["organs"]["organ"]["dice_mean"] == pytest.approx(1.0)
    assert summary["method_stats"]["fallback_counts"] == {"pairs": 0}  # only this run's increments
    assert json.loads((tmp_path / "results.json").read_text())["dataset"] == "toy"
    assert (tmp_path / "cases.csv").exists() and "| organ | mean |" in (tmp_path / "table.md").read_text()


def test_errors():
    with pytest.raises(ValueError, match="unknown mode"):
        run_protocol(Recorder(), VOLUMES, {"organ": 1}, mode="ep2")
    with pytest.raises(ValueError, match="does not exist"):
        run_protocol(Recorder(), VOLUMES, {"organ": 1}, n_folds=2, folds=[2])
