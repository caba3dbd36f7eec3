"""Turn per-case records into the numbers a paper table shows, and write them down.

Aggregation follows the field: for each organ, the mean 3D Dice over the query volumes of a fold,
then the mean and standard deviation of those fold means (sample std, ddof = 1: the spread between
folds). The "mean" column averages organs within each fold first, then over folds. Pooled Dice
(TP/FP/FN summed over every case of an organ) sits beside it. HD95 and ASSD are means over the
cases where they exist, with the count of cases where they do not (empty prediction or ground
truth). Files: `results.json` (everything), `cases.csv` (one row per case) and `table.md` (organs
as columns, a mean column, and a note stating the mode and the oracle it relies on).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .matching import DRAW_MODES, EP1_ORACLE, IN_VOLUME_ORACLE
from .metrics import pooled_dice

__all__ = ["MODE_NOTES", "CASE_FIELDS", "aggregate", "markdown_table", "write_report"]

MODE_NOTES = {
    "ep1": "EP1, the field's protocol: each query organ's slices are split into 3 chunks, each served by "
           "the support slice at the centre of the support organ's matching chunk. Oracle: " + EP1_ORACLE + ".",
    "in_volume": "In-volume: the support is the organ's middle slice of the query volume itself; its other "
                 "organ slices are segmented and scored. Oracle: " + IN_VOLUME_ORACLE + ".",
    "no_oracle": "No oracle: every slice of each query volume is segmented and scored; its support is the "
                 "support organ slice nearest by relative position along the slice axis. No ground truth "
                 "of the query is used.",
    **{mode: f"Label {k} slice{'s' if k > 1 else ''}, get the volume: the organ's ground truth on {k} slice"
             f"{'s' if k > 1 else ''} evenly spaced within its extent is the support (k = 1: the middle slice); "
             "every slice of the volume is segmented and scored (whole-volume Dice; `dice_undrawn` leaves the "
             "drawn slices out). The ground truth chooses the drawn slices, as a user looking at the scan would."
       for mode, k in DRAW_MODES.items()},
}

CASE_FIELDS = ["mode", "fold", "support_pid", "query_pid", "organ", "label_value", "shots", "dice",
               "tp", "fp", "fn", "hd95", "assd", "pred_empty", "gt_empty", "n_scored", "n_segmented",
               "volume_mode", "dice_undrawn", "hd95_undrawn", "drawn_z"]


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _std(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.std(vals, ddof=1)) if len(vals) >= 2 else None


def _organs_in_order(records: Sequence[dict], organs: Sequence[str] | None) -> list[str]:
    if organs is not None:
        return list(organs)
    seen: list[str] = []
    for r in records:
        if r["organ"] not in seen:
            seen.append(r["organ"])
    return seen


def aggregate(records: Sequence[dict], organs: Sequence[str] | None = None) -> dict:
    """Per organ and overall: fold means of Dice, their mean and std over folds, pooled Dice,
    HD95/ASSD means with counts of undefined cases. Dice values are fractions in [0, 1]."""
    organs = _organs_in_order(records, organs)
    folds = sorted({r["fold"] for r in records})
    out: dict = {"folds": folds, "organs": {}}
    for organ in organs:
        rows = [r for r in records if r["organ"] == organ]
        per_fold = {str(f): _mean(r["dice"] for r in rows if r["fold"] == f) for f in folds}
        fold_values = [per_fold[str(f)] for f in folds]
        out["organs"][organ] = {
            "per_fold": per_fold,
            "dice_mean": _mean(fold_values),
            "dice_std": _std(fold_values),
            "dice_pooled": pooled_dice(rows) if rows else None,
            "n_cases": len(rows),
            "n_dice_undefined": sum(r["dice"] is None for r in rows),
            "hd95_mean": _mean(r["hd95"] for r in rows),
            "hd95_undefined": sum(r["hd95"] is None for r in rows),
            "assd_mean": _mean(r["assd"] for r in rows),
            "assd_undefined": sum(r["assd"] is None for r in rows),
        }
        if any("dice_undrawn" in r for r in rows):  # the draw<k> modes: the slices not drawn alone
            out["organs"][organ]["dice_undrawn_mean"] = _mean(
                _mean(r.get("dice_undrawn") for r in rows if r["fold"] == f) for f in folds)
    per_organ = out["organs"]
    # per_fold is keyed by str(fold) so that it reads the same before and after JSON
    fold_means = {str(f): _mean(per_organ[o]["per_fold"].get(str(f)) for o in organs) for f in folds}
    out["mean"] = {
        "per_fold": fold_means,
        "dice_mean": _mean(fold_means.values()),
        "dice_std": _std(fold_means.values()),
        "dice_pooled": _mean(per_organ[o]["dice_pooled"] for o in organs),
        "n_cases": len(records),
        "n_dice_undefined": sum(per_organ[o]["n_dice_undefined"] for o in organs),
        "hd95_mean": _mean(per_organ[o]["hd95_mean"] for o in organs),
        "hd95_undefined": sum(per_organ[o]["hd95_undefined"] for o in organs),
        "assd_mean": _mean(per_organ[o]["assd_mean"] for o in organs),
        "assd_undefined": sum(per_organ[o]["assd_undefined"] for o in organs),
    }
    if all("dice_undrawn_mean" in per_organ[o] for o in organs) and organs:
        out["mean"]["dice_undrawn_mean"] = _mean(per_organ[o]["dice_undrawn_mean"] for o in organs)
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _mm(v: float | None, undefined: int) -> str:
    text = "-" if v is None else f"{v:.1f}"
    return text + (f" ({undefined} undef.)" if undefined else "")


def markdown_table(summary: dict, title: str | None = None) -> str:
    """One markdown table: organs as columns plus a mean column; Dice in %, distances in mm."""
    agg = summary["aggregate"]
    organs = list(agg["organs"])
    cols = [agg["organs"][o] for o in organs] + [agg["mean"]]
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines.append("| | " + " | ".join(organs + ["mean"]) + " |")
    lines.append("|---" * (len(cols) + 1) + "|")

    def row(name, cells):
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    row("Dice % (mean ± std over folds)", [
        _pct(c["dice_mean"]) + ("" if c["dice_std"] is None else f" ± {100 * c['dice_std']:.1f}") for c in cols])
    row("pooled Dice %", [_pct(c["dice_pooled"]) for c in cols])
    row("HD95 mm", [_mm(c["hd95_mean"], c["hd95_undefined"]) for c in cols])
    row("ASSD mm", [_mm(c["assd_mean"], c["assd_undefined"]) for c in cols])
    for f in agg["folds"]:
        row(f"fold {f} Dice %", [_pct(c["per_fold"].get(str(f))) for c in cols])
    row("cases", [str(c["n_cases"]) for c in cols])
    lines.append("")
    mode = summary.get("mode")
    note = MODE_NOTES.get(mode, f"mode {mode}")
    lines.append(f"Method `{summary.get('method')}`, {summary.get('shots', 1)}-shot, mode `{mode}`. {note}")
    lines.append("Dice: 3D per query volume, mean over the volumes of a fold, then mean ± std (ddof 1) over "
                 "folds; pooled Dice sums TP/FP/FN over all cases of an organ. HD95/ASSD: mean over cases "
                 "where both masks are non-empty; 'undef.' counts the others.")
    for key, value in (summary.get("method_stats") or {}).items():
        lines.append(f"{key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def write_report(records: Sequence[dict], out_dir, *, method: str, mode: str, shots: int = 1,
                 organs: Sequence[str] | None = None, dataset: str | None = None,
                 method_stats: dict | None = None, settings: dict | None = None) -> dict:
    """Aggregate `records` and write results.json, cases.csv and table.md into `out_dir`.
    Returns the summary written to results.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = _jsonable({
        "method": method, "mode": mode, "shots": shots, "dataset": dataset,
        "mode_note": MODE_NOTES.get(mode), "settings": settings or {},
        "method_stats": method_stats or {},
        "aggregate": aggregate(records, organs),
        "cases": list(records),
    })
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    with open(out / "cases.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CASE_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in records:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CASE_FIELDS})
    title = f"{dataset + ': ' if dataset else ''}{method}, {mode}, {shots}-shot"
    (out / "table.md").write_text(markdown_table(summary, title=title))
    return summary
