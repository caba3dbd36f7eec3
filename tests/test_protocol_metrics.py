"""Dice, pooled Dice, HD95 and ASSD against cases computed by hand (and by brute force)."""

import numpy as np
import pytest
from scipy.ndimage import binary_erosion

from scripts.protocol.metrics import case_metrics, confusion, dice_from_counts, pooled_dice, surface_distances

SPACING = (3.0, 1.5, 0.5)  # (slice, row, col) mm, deliberately anisotropic


def box(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def brute_force(pred, gt, spacing):
    """HD95 (max of directed 95th percentiles, linear interpolation) and symmetric ASSD from
    the surface voxels (voxels with a 6-neighbour outside), all pairs."""
    def surface(m):
        return np.argwhere(m & ~binary_erosion(m)) * np.asarray(spacing)
    sp, sg = surface(pred), surface(gt)
    d = np.sqrt(((sp[:, None, :] - sg[None, :, :]) ** 2).sum(-1))
    d_pg, d_gp = d.min(axis=1), d.min(axis=0)
    return max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)), np.concatenate([d_pg, d_gp]).mean()


def test_dice_by_hand():
    shape = (6, 10, 10)
    gt = box(shape, (1, 2, 2), (5, 6, 6))  # 4 x 4 x 4 = 64 voxels
    pred = box(shape, (1, 2, 4), (5, 6, 8))  # shifted by 2 columns: overlap 4 x 4 x 2 = 32
    assert confusion(pred, gt) == (32, 32, 32)
    assert dice_from_counts(32, 32, 32) == pytest.approx(0.5)
    assert dice_from_counts(0, 0, 0) is None
    assert dice_from_counts(0, 0, 5) == 0.0


def test_parallel_plates_offset_in_slices():
    # two one-voxel-thick plates 2 slices apart: every surface voxel is 2 x 3 mm from the other plate
    shape = (8, 8, 8)
    gt = box(shape, (2, 1, 1), (3, 6, 6))
    pred = box(shape, (4, 1, 1), (5, 6, 6))
    hd95, assd = surface_distances(pred, gt, SPACING)
    assert hd95 == pytest.approx(6.0) and assd == pytest.approx(6.0)


def test_single_voxels_diagonal_offset():
    shape = (5, 5, 5)
    gt, pred = np.zeros(shape, bool), np.zeros(shape, bool)
    gt[1, 1, 1] = True
    pred[2, 3, 4] = True  # offset (1, 2, 3) voxels = (3, 3, 1.5) mm
    expected = np.sqrt(3.0 ** 2 + 3.0 ** 2 + 1.5 ** 2)
    hd95, assd = surface_distances(pred, gt, SPACING)
    assert hd95 == pytest.approx(expected) and assd == pytest.approx(expected)


def test_cubes_offset_match_brute_force():
    shape = (12, 14, 16)
    gt = box(shape, (2, 3, 3), (7, 9, 10))
    pred = box(shape, (3, 4, 5), (9, 10, 13))  # shifted by (1, 1, 2) voxels and larger
    hd95, assd = surface_distances(pred, gt, SPACING)
    ref_hd95, ref_assd = brute_force(pred, gt, SPACING)
    assert hd95 == pytest.approx(ref_hd95, rel=1e-5)
    assert assd == pytest.approx(ref_assd, rel=1e-5)
    # spacing matters: the same voxels at unit spacing give another answer
    assert surface_distances(pred, gt, (1.0, 1.0, 1.0))[1] != pytest.approx(assd)


def test_empty_masks_are_undefined_not_infinite():
    shape = (4, 6, 6)
    gt = box(shape, (1, 1, 1), (3, 4, 4))
    empty = np.zeros(shape, bool)
    m = case_metrics(empty, gt, SPACING)
    assert m["dice"] == 0.0 and m["hd95"] is None and m["assd"] is None and m["pred_empty"]
    m = case_metrics(gt, empty, SPACING)
    assert m["dice"] == 0.0 and m["hd95"] is None and m["gt_empty"]
    m = case_metrics(empty, empty, SPACING)
    assert m["dice"] is None and m["hd95"] is None
    assert case_metrics(gt, gt, SPACING)["hd95"] == 0.0


def test_pooled_differs_from_mean_where_sizes_differ():
    # a large organ segmented well and a small one badly: pooled Dice follows the large one
    cases = [{"tp": 900, "fp": 50, "fn": 50}, {"tp": 1, "fp": 9, "fn": 9}]
    dices = [dice_from_counts(c["tp"], c["fp"], c["fn"]) for c in cases]
    assert np.mean(dices) == pytest.approx((0.9473684 + 0.1) / 2, rel=1e-6)
    assert pooled_dice(cases) == pytest.approx(2 * 901 / (2 * 901 + 59 + 59))
    assert pooled_dice(cases) > np.mean(dices) + 0.3
    # equal sizes and equal errors: both agree
    same = [{"tp": 10, "fp": 5, "fn": 5}] * 2
    assert pooled_dice(same) == pytest.approx(dice_from_counts(10, 5, 5))
