"""Self-support (issue #43): read the query twice, the second time with its own first answer as a shot.

Where the support and the query differ in appearance (another patient, another scanner), the drawn
support is a poor guide for the query's own intensities. After a first pass, each query slice whose
mask has at least ``min_area`` pixels is segmented again from K+1 shots: the support slices of its
episode and the query slice itself with its first-pass mask (self-support prototypes, as in SSP,
ECCV 2022, made the network's own K-shot path here). Other slices keep the first scores. Twice the
network's cost per query slice; no encoding is repeated (the latents are shared by both passes).

``SelfSupport(method)`` is a method like any other (``predict_scores`` / ``binarize``), so the
protocol, the seam and the baselines' wrappers treat it alike. The seam reads a support from another
volume this way where the model config's ``self_support`` is on. It is off by default: on five
folds it lifts the four organs across patients under EP1, but on whole volumes, as the app reads
another patient, the kidneys lose what the liver and spleen gain (table ``chaost2_s1_supervoxel``
in docs/results.md; the demo's patient B loses on every organ). In-volume propagation never reads
twice: it loses there (``bench/propagation_reading_probe.py``). A call's own threshold
(``threshold=``) also decides the first answer.
"""

from __future__ import annotations

import numpy as np
import torch


class SelfSupport:
    def __init__(self, method, min_area: int = 20, threshold: dict | None = None):
        self.method = method
        self.min_area = min_area  # pixels: a smaller first answer is not worth a shot
        self.own_threshold = dict(threshold or {})  # a call's own threshold keywords, for the first answer too
        self.name = f"{getattr(method, 'name', 'method')}+self-support"

    def __getattr__(self, name):  # threshold, config, latent cache ... of the wrapped method
        return getattr(self.method, name)

    def binarize(self, scores, support_masks=None, **threshold):
        return self.method.binarize(scores, support_masks=support_masks, **threshold)

    def predict_scores(self, support_images, support_masks, query_images, query_episode, query_latents=None,
                       support_latents=None):
        support_images = np.asarray(support_images, dtype=np.float32)
        support_masks = np.asarray(support_masks, dtype=np.float32)
        query_images = np.asarray(query_images, dtype=np.float32)
        query_episode = np.asarray(query_episode)
        episodes, shots, height, width = support_images.shape
        if query_latents is None:
            query_latents = self.method.encode_images_cached(query_images)
        if support_latents is None:
            support_latents = self.method.encode_images_cached(support_images.reshape(-1, height, width))
        support_latents = torch.as_tensor(support_latents).reshape(episodes, shots, *query_latents.shape[1:])
        first = self.method.predict_scores(support_images, support_masks, query_images, query_episode,
                                           query_latents=query_latents,
                                           support_latents=support_latents.reshape(-1, *query_latents.shape[1:]))
        masks = np.asarray(self.method.binarize(first, support_masks=support_masks, **self.own_threshold)).astype(bool)
        own = np.flatnonzero(masks.reshape(len(masks), -1).sum(axis=1) >= self.min_area)
        if own.size == 0:
            return first
        rows = torch.as_tensor(own, device=query_latents.device)
        episode_of = torch.as_tensor(query_episode[own], device=support_latents.device)
        images = np.concatenate([support_images[query_episode[own]], query_images[own][:, None]], axis=1)
        shot_masks = np.concatenate([support_masks[query_episode[own]], masks[own][:, None].astype(np.float32)], axis=1)
        latents = torch.cat([support_latents.index_select(0, episode_of),
                             query_latents.index_select(0, rows)[:, None].to(support_latents.device)], dim=1)
        second = self.method.predict_scores(images, shot_masks, query_images[own], np.arange(own.size),
                                            query_latents=query_latents.index_select(0, rows),
                                            support_latents=latents.reshape(-1, *query_latents.shape[1:]))
        scores = np.array(first, copy=True)
        scores[own] = second
        return scores
