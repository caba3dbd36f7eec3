"""The two training-free baselines: support_copy and registration (with its fallbacks)."""

import numpy as np
import pytest

from scripts.baselines.registration import Registration
from scripts.baselines.support_copy import SupportCopy
from scripts.data.volumes import Volume
from scripts.protocol.evaluate import run_protocol
from scripts.protocol.metrics import confusion, dice_from_counts

N = 128


def phantom_slice(dy=0, dx=0):
    """An abdomen-like slice: body ellipse, a textured 'liver' and a bright 'kidney', all moved by
    (dy, dx) pixels. Returns the image in [-1, 1] and the organ (kidney) mask."""
    yy, xx = np.mgrid[:N, :N].astype(np.float32)
    yy, xx = yy - dy, xx - dx
    body = ((yy - 64) / 52) ** 2 + ((xx - 64) / 44) ** 2 < 1
    liver = ((yy - 55) / 22) ** 2 + ((xx - 45) / 18) ** 2 < 1
    kidney = ((yy - 78) / 12) ** 2 + ((xx - 88) / 9) ** 2 < 1
    image = np.full((N, N), -1.0, np.float32)
    image[body] = -0.2 + 0.1 * np.sin(xx[body] / 5.0) * np.cos(yy[body] / 7.0)
    image[liver] = 0.3
    image[kidney] = 0.8
    return image, kidney.astype(np.float32)


def dice(a, b):
    return dice_from_counts(*confusion(a, b))


def test_support_copy_identical_support_and_query_gives_dice_one():
    image, mask = phantom_slice()
    vol = lambda pid: Volume(pid=pid, image=np.stack([image] * 6), label=np.stack([mask.astype(np.int32)] * 6),
                             spacing=(5.0, 1.0, 1.0))
    records = run_protocol(SupportCopy(), [vol("1"), vol("2")], {"kidney": 1}, mode="ep1", n_folds=1)
    assert records[0]["dice"] == pytest.approx(1.0) and records[0]["hd95"] == 0.0


def test_support_copy_k_shot_majority():
    masks = np.zeros((2, 3, 4, 4), np.float32)
    masks[0, :2, 0, 0] = 1  # two of three shots
    masks[0, 0, 1, 1] = 1  # one of three shots
    method = SupportCopy()
    scores = method.predict_scores(np.zeros_like(masks), masks, np.zeros((2, 4, 4)), np.array([0, 1]))
    assert scores.shape == (2, 4, 4) and scores[0, 0, 0] == pytest.approx(2 / 3)
    binary = method.binarize(scores)
    assert binary[0, 0, 0] and not binary[0, 1, 1] and not binary[1].any()


def test_registration_recovers_a_shift_better_than_copying():
    support, mask = phantom_slice()
    query, truth = phantom_slice(dy=7, dx=-9)
    sup = support[None, None]
    msk = mask[None, None]
    reg = Registration()
    reg_pred = reg.binarize(reg.predict_scores(sup, msk, query[None], np.array([0])))[0]
    copy_pred = SupportCopy().binarize(SupportCopy().predict_scores(sup, msk, query[None], np.array([0])))[0]
    assert dice(copy_pred, truth > 0) < 0.5
    assert dice(reg_pred, truth > 0) > 0.85
    assert reg.fallback_counts["pairs"] == 1 and reg.fallback_counts["affine_failed"] == 0


def test_failed_bspline_falls_back_to_affine_and_is_counted(monkeypatch):
    support, mask = phantom_slice()
    query, _ = phantom_slice(dy=5, dx=4)
    affine_only = Registration(use_bspline=False).warp_mask(support, mask, query)
    reg = Registration()

    def broken(*args, **kwargs):
        raise RuntimeError("ITK ERROR: All samples map outside moving image buffer")

    monkeypatch.setattr(reg, "_bspline", broken)
    out = reg.warp_mask(support, mask, query)
    np.testing.assert_allclose(out, affine_only)
    assert reg.fallback_counts == {"pairs": 1, "bspline_failed": 1, "affine_failed": 0, "itk_errors": 1}


def test_failed_affine_falls_back_to_identity_and_is_counted():
    support, mask = phantom_slice()
    reg = Registration()
    # a constant query slice: ITK's correlation metric raises on it
    out = reg.warp_mask(support, mask, np.full((N, N), -1.0, np.float32))
    np.testing.assert_array_equal(out, mask)
    assert reg.fallback_counts["affine_failed"] == 1 and reg.fallback_counts["itk_errors"] == 1
    # a query showing a few pixels only: registration "succeeds" but loses the overlap
    tiny = np.full((N, N), -1.0, np.float32)
    tiny[:4, :4] = 1.0
    out = reg.warp_mask(support, mask, tiny)
    np.testing.assert_array_equal(out, mask)
    assert reg.fallback_counts["affine_failed"] == 2 and reg.fallback_counts["pairs"] == 2
