"""From decoded mask scores to a binary mask: threshold, then the largest component per slice."""

from __future__ import annotations

import numpy as np
import torch

THRESHOLD_MODES = ("absolute", "relative")


def threshold_scores(scores: np.ndarray, threshold: float, mode: str = "absolute") -> np.ndarray:
    """(Q, H, W) scores in about [-1, 1] -> bool. ``relative``: the authors' rule, above
    ``threshold`` x the slice's maximum (it always yields a blob, even on a slice without the organ);
    ``absolute``: above a fixed value chosen on training-class episodes."""
    if mode == "absolute":
        return scores > threshold
    if mode == "relative":
        peak = scores.reshape(scores.shape[0], -1).max(axis=1)[:, None, None]
        return (scores > threshold * peak) & (peak > 0)
    raise ValueError(f"threshold mode must be one of {THRESHOLD_MODES}, got {mode!r}")


def keep_largest_component_per_slice(masks: np.ndarray) -> np.ndarray:
    """(Q, H, W) bool -> the largest 8-connected component of each slice (MONAI's transform)."""
    from monai.transforms import KeepLargestConnectedComponent

    keep = KeepLargestConnectedComponent(applied_labels=[1], is_onehot=False, connectivity=2)
    out = np.zeros_like(masks, dtype=bool)
    for index, mask in enumerate(masks):
        if mask.any():
            out[index] = np.asarray(keep(torch.as_tensor(mask[None].astype(np.uint8))))[0] > 0
    return out
