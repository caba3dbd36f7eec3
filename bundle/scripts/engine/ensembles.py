"""Test-time ensembles (issue #43, item 3): several readings of one query, their scores averaged.

- ``Flipped(method)``: the method on left-right mirrored support and query slices, its scores
  mirrored back (the network is not mirror-symmetric: the mirrored reading is a second opinion);
- ``Ensemble(methods)``: the mean of the methods' scores (e.g. a model and its flipped reading, or
  EMA snapshots of one training saved at different steps), thresholded and post-processed by the
  first method's rules.

Each is a method like any other (``predict_scores`` / ``binarize``), so the protocol and the seam
treat them alike; each reading costs one pass of its method (and, for a mirrored one, its own
encoding of the mirrored slices).
"""

from __future__ import annotations

import numpy as np


class Flipped:
    def __init__(self, method):
        self.method = method
        self.name = f"{getattr(method, 'name', 'method')}+flip"

    def __getattr__(self, name):
        return getattr(self.method, name)

    def binarize(self, scores, support_masks=None):
        return self.method.binarize(scores, support_masks=support_masks)

    def predict_scores(self, support_images, support_masks, query_images, query_episode, **_latents):
        mirror = lambda array: np.ascontiguousarray(np.asarray(array, dtype=np.float32)[..., ::-1])  # noqa: E731
        scores = self.method.predict_scores(mirror(support_images), mirror(support_masks), mirror(query_images),
                                            query_episode)
        return mirror(scores)


class Ensemble:
    def __init__(self, methods, name: str | None = None):
        if not methods:
            raise ValueError("an ensemble needs at least one method")
        self.methods = list(methods)
        self.name = name or "+".join(getattr(m, "name", "method") for m in self.methods)

    def __getattr__(self, name):
        return getattr(self.methods[0], name)

    def binarize(self, scores, support_masks=None):
        return self.methods[0].binarize(scores, support_masks=support_masks)

    def predict_scores(self, support_images, support_masks, query_images, query_episode, **latents):
        total = None
        for method in self.methods:
            # precomputed latents belong to the method that made them: a mirrored reading encodes its own
            scores = np.asarray(method.predict_scores(support_images, support_masks, query_images, query_episode,
                                                      **({} if isinstance(method, Flipped) else latents)))
            total = scores.astype(np.float32) if total is None else total + scores
        return total / len(self.methods)
