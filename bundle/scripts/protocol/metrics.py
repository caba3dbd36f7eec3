"""Per-case segmentation metrics in 3D: Dice, the TP/FP/FN counts behind pooled Dice, and HD95 and
ASSD in millimetres.

The field reports the mean over query volumes of a per-volume 3D Dice; some papers pool TP/FP/FN
over volumes instead, which weights large organs more, so both are kept. Surface distances use
MONAI (`compute_hausdorff_distance(percentile=95)`, the larger of the two directed 95th
percentiles, and `compute_average_surface_distance(symmetric=True)`, the mean over both directions'
surface distances) with the volume's spacing, so they are in mm. When the prediction or the ground
truth is empty the distances do not exist: they are returned as None and flagged, never as an
infinity that an average would swallow.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["confusion", "dice_from_counts", "surface_distances", "case_metrics", "pooled_dice"]


def _as_bool(a) -> np.ndarray:
    return np.asarray(a).astype(bool, copy=False)


def confusion(pred, gt) -> tuple[int, int, int]:
    """True positives, false positives and false negatives of two binary arrays."""
    p, g = _as_bool(pred), _as_bool(gt)
    if p.shape != g.shape:
        raise ValueError(f"prediction {p.shape} and ground truth {g.shape} differ in shape")
    tp = int(np.count_nonzero(p & g))
    return tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(g)) - tp


def dice_from_counts(tp: int, fp: int, fn: int) -> float | None:
    """2 TP / (2 TP + FP + FN); None when both masks are empty (undefined, not 0 or 1)."""
    denom = 2 * tp + fp + fn
    return None if denom == 0 else 2.0 * tp / denom


def surface_distances(pred, gt, spacing: Sequence[float]) -> tuple[float | None, float | None]:
    """(HD95, ASSD) in the units of `spacing` (mm); (None, None) if either mask is empty."""
    p, g = _as_bool(pred), _as_bool(gt)
    if p.shape != g.shape:
        raise ValueError(f"prediction {p.shape} and ground truth {g.shape} differ in shape")
    if len(spacing) != p.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match a {p.ndim}-D mask")
    if not p.any() or not g.any():
        return None, None
    # imported here: monai costs seconds, and Dice alone does not need it
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    # MONAI crops to the union's bounding box itself; crop first anyway to save the copies
    box = np.argwhere(p | g)
    lo = np.maximum(box.min(axis=0) - 1, 0)
    hi = box.max(axis=0) + 2
    window = tuple(slice(a, b) for a, b in zip(lo, hi))
    yp = torch.from_numpy(np.ascontiguousarray(p[window]))[None, None].float()
    yt = torch.from_numpy(np.ascontiguousarray(g[window]))[None, None].float()
    sp = [float(s) for s in spacing]
    with warnings.catch_warnings():
        # MONAI 1.6 warns about an argument its own code passes (always_return_as_numpy)
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        hd95 = compute_hausdorff_distance(yp, yt, include_background=True, percentile=95, spacing=sp)
        assd = compute_average_surface_distance(yp, yt, include_background=True, symmetric=True, spacing=sp)
    return float(hd95.reshape(-1)[0]), float(assd.reshape(-1)[0])


def case_metrics(pred, gt, spacing: Sequence[float], distances: bool = True) -> dict:
    """All metrics of one case (one organ in one query volume) as a flat dict of plain numbers."""
    tp, fp, fn = confusion(pred, gt)
    out = {"dice": dice_from_counts(tp, fp, fn), "tp": tp, "fp": fp, "fn": fn,
           "pred_empty": tp + fp == 0, "gt_empty": tp + fn == 0, "hd95": None, "assd": None}
    if distances:
        out["hd95"], out["assd"] = surface_distances(pred, gt, spacing)
    return out


def pooled_dice(records: Iterable[dict]) -> float | None:
    """Dice of the TP/FP/FN summed over cases (each record has 'tp', 'fp', 'fn')."""
    tp = fp = fn = 0
    for r in records:
        tp, fp, fn = tp + r["tp"], fp + r["fp"], fn + r["fn"]
    return dice_from_counts(tp, fp, fn)
