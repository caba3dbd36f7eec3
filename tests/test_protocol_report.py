"""Report aggregation (mean ± std over folds, pooled Dice, undefined distances) and its files."""

import csv
import json

import numpy as np
import pytest

from scripts.protocol.report import aggregate, write_report


def rec(fold, organ, dice, tp=10, fp=0, fn=0, hd95=1.0, assd=0.5, query="q"):
    return {"mode": "ep1", "fold": fold, "support_pid": "s", "query_pid": query, "organ": organ,
            "label_value": 1, "shots": 1, "dice": dice, "tp": tp, "fp": fp, "fn": fn, "hd95": hd95,
            "assd": assd, "pred_empty": False, "gt_empty": False, "n_scored": 3, "n_segmented": 3}


RECORDS = [
    rec(0, "liver", 0.8), rec(0, "liver", 0.6, query="r"),  # fold 0 mean 0.7
    rec(1, "liver", 0.9),                                    # fold 1 mean 0.9
    rec(0, "spleen", 0.2, hd95=None, assd=None), rec(1, "spleen", 0.4, hd95=3.0, assd=2.0),
]


def test_mean_and_std_over_folds():
    agg = aggregate(RECORDS, ["liver", "spleen"])
    liver = agg["organs"]["liver"]
    assert liver["per_fold"] == {"0": pytest.approx(0.7), "1": pytest.approx(0.9)}
    assert liver["dice_mean"] == pytest.approx(0.8)
    assert liver["dice_std"] == pytest.approx(np.std([0.7, 0.9], ddof=1))
    spleen = agg["organs"]["spleen"]
    assert spleen["hd95_mean"] == pytest.approx(3.0) and spleen["hd95_undefined"] == 1
    # the mean column averages organs within each fold, then over folds
    mean = agg["mean"]
    assert mean["per_fold"] == {"0": pytest.approx(0.45), "1": pytest.approx(0.65)}
    assert mean["dice_mean"] == pytest.approx(0.55)
    assert mean["dice_std"] == pytest.approx(np.std([0.45, 0.65], ddof=1))
    assert mean["hd95_undefined"] == 1 and mean["n_cases"] == 5


def test_undefined_dice_is_left_out_and_counted():
    agg = aggregate([rec(0, "rv", None, tp=0), rec(0, "rv", 0.5)])
    assert agg["organs"]["rv"]["dice_mean"] == pytest.approx(0.5)
    assert agg["organs"]["rv"]["n_dice_undefined"] == 1
    assert agg["organs"]["rv"]["dice_std"] is None  # one fold: no spread to report


def test_files_written(tmp_path):
    summary = write_report(RECORDS, tmp_path, method="support_copy", mode="ep1", organs=["liver", "spleen"],
                           dataset="toy", method_stats={"fallback_counts": {"pairs": 3}})
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["aggregate"]["organs"]["liver"]["dice_mean"] == pytest.approx(0.8)
    assert data["method_stats"]["fallback_counts"] == {"pairs": 3}
    assert summary["mode"] == "ep1"
    with open(tmp_path / "cases.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5 and rows[3]["hd95"] == ""
    table = (tmp_path / "table.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| |"))
    assert header == "| | liver | spleen | mean |"
    assert "80.0 ± 14.1" in table and "55.0 ± 14.1" in table
    assert "oracle" in table.lower() and "EP1" in table
    assert "1 undef." in table and "fallback_counts" in table
