"""The floor every few-shot method must clear: paste the support mask onto the query slice.

Under EP1 the support slice is already matched to the query's chunk of the organ, so copying its
mask scores far above zero (about 40% Dice on CHAOS T2); a learned method is only interesting by
what it adds on top of that.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SupportCopy"]


class SupportCopy:
    """Scores = the mean over K shots of the support masks of each query slice's episode;
    binarize keeps scores > threshold (0.5: a majority of the shots)."""

    name = "support_copy"

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold

    def predict_scores(self, support_images, support_masks, query_images, query_episode):
        masks = np.asarray(support_masks, dtype=np.float32)
        if masks.ndim != 4:
            raise ValueError(f"support_masks must be (E, K, H, W), got shape {masks.shape}")
        episode = np.asarray(query_episode, dtype=np.int64)
        if masks.shape[-2:] != np.shape(query_images)[-2:]:
            raise ValueError("support and query slices differ in size")
        return masks.mean(axis=1)[episode]

    def binarize(self, scores, support_masks=None) -> np.ndarray:  # no component step: the support is the mask
        return np.asarray(scores) > self.threshold
