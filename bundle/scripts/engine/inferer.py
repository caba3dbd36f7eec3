"""The one seam: (support image, support label, query volume) -> label volume on the query's grid.

``inference.yaml``, the evaluator's multi-organ path and the MONAI Label task all call
``segment_volume`` (slice space) or ``segment_files`` (files in, original grid out); none has its own
copy of pre- or post-processing. Several organs: one 1-way pass per label value, merged by
per-pixel argmax of the scores among labels above threshold, original label values kept.

A label of the query volume itself (the in-volume case) is propagated by default: the volume is
walked out from the drawn slices, each slice served by its segmented neighbour and the drawn slices
around it, until the organ ends (``propagation.py``). ``mode="nearest"`` serves every slice from
the nearest drawn slices alone (the mode before propagation existed); across volumes it is the only one,
and each query slice is read twice where the model's ``self_support`` says so (off by default): the
second time with its own first answer as one more shot (``self_support.py``).

``threshold`` / ``threshold_mode`` set one call's own threshold (None: the method's), handed down to
the method's ``binarize``: a server answering several users never changes its shared model.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from scripts.data.volumes import present_values
from scripts.engine.propagation import propagate_organs, threshold_keywords
from scripts.engine.self_support import SelfSupport
from scripts.network.model_config import ModelConfig

logger = logging.getLogger(__name__)


VOLUME_MODES = ("propagate", "nearest")


class SupportError(ValueError):
    """The support cannot serve: no labelled slice, unknown label, wrong shape."""


@dataclass
class Segmentation:
    label: np.ndarray  # (D, H, W) int32, the support's label values
    labels: dict[str, int]
    shots_per_label: dict[str, int] = field(default_factory=dict)
    support_slices: dict[str, list[int]] = field(default_factory=dict)


def shots_of(method, max_shots: int | None) -> int:
    """Shots per query slice: as asked, else the model's own (``ModelConfig.max_shots``)."""
    if max_shots is not None:
        return int(max_shots)
    config = getattr(method, "config", None)
    return int(config.max_shots if isinstance(config, ModelConfig) else ModelConfig.max_shots)


def labelled_slices(label: np.ndarray, value: int) -> np.ndarray:
    return np.flatnonzero((label == value).reshape(label.shape[0], -1).any(axis=1))


def nearest_support_episodes(support_z: np.ndarray, support_depth: int, query_depth: int, shots: int,
                             same_volume: bool) -> tuple[np.ndarray, np.ndarray]:
    """For each query slice, the ``shots`` labelled support slices nearest by relative position along
    the slice axis (by index in the same volume). Returns (episodes (E, K) slice indices, query_episode (Q,))."""
    shots = min(shots, len(support_z))
    if same_volume:
        position_q = np.arange(query_depth, dtype=float)
        position_s = support_z.astype(float)
    else:
        position_q = np.arange(query_depth) / max(query_depth - 1, 1)
        position_s = support_z / max(support_depth - 1, 1)
    distance = np.abs(position_q[:, None] - position_s[None, :])
    nearest = np.sort(np.argsort(distance, axis=1, kind="stable")[:, :shots], axis=1)
    episodes, query_episode = np.unique(nearest, axis=0, return_inverse=True)
    return support_z[episodes], query_episode.reshape(-1)


def segment_volume(method, support_image: np.ndarray, support_label: np.ndarray, query_image: np.ndarray,
                   labels: dict[str, int] | None = None, max_shots: int | None = None, same_volume: bool = False,
                   support_slices=None, mode: str = "propagate", threshold: float | None = None,
                   threshold_mode: str | None = None) -> Segmentation:
    """Segment every slice of ``query_image`` (D, H, W) in slice space for every organ of ``labels``
    (default: every value present in the support label, named by its value). ``mode`` applies to a
    label of the query itself (``same_volume``): ``propagate`` or ``nearest``. ``max_shots``: labelled
    slices per query slice, nearest first (None: the model's). ``threshold`` / ``threshold_mode``:
    this call's own (None: the method's)."""
    max_shots = shots_of(method, max_shots)
    if mode not in VOLUME_MODES:
        raise SupportError(f"mode must be one of {VOLUME_MODES}, got {mode!r}")
    support_image = np.asarray(support_image, dtype=np.float32)
    support_label = np.asarray(support_label)
    query_image = np.asarray(query_image, dtype=np.float32)
    if support_image.shape != support_label.shape:
        raise SupportError(f"support label shape {support_label.shape} does not match its image {support_image.shape}")
    if support_image.ndim != 3 or query_image.ndim != 3 or support_image.shape[1:] != query_image.shape[1:]:
        raise SupportError(f"support {support_image.shape} and query {query_image.shape} must be (D, H, W) with equal H, W")
    if same_volume and support_image.shape != query_image.shape:
        raise SupportError("a label of the query volume itself must have the query's shape")
    if support_slices is not None:
        keep = np.zeros(support_label.shape[0], dtype=bool)
        keep[np.asarray(list(support_slices), dtype=int)] = True
        support_label = np.where(keep[:, None, None], support_label, 0)
    present = present_values(support_label)
    if not present:
        raise SupportError("the support label has no labelled slice: label the organ on at least one slice")
    if labels is None:
        labels = {str(v): v for v in present}
    absent = {name: v for name, v in labels.items() if v not in present}
    if absent:
        raise SupportError(f"labels {absent} are not in the support label (present values: {present})")

    names = list(labels)
    own_threshold = threshold_keywords(threshold, threshold_mode)
    if same_volume and mode == "propagate":
        return _propagated(method, support_label, query_image, labels, max_shots, own_threshold)
    scores, masks = [], []
    plans = {}
    for name in names:
        support_z = labelled_slices(support_label, labels[name])
        plans[name] = (support_z, *nearest_support_episodes(
            support_z, support_label.shape[0], query_image.shape[0], max_shots, same_volume
        ))
    latents = _shared_latents(method, support_image, query_image, same_volume, [p[1] for p in plans.values()])
    if not same_volume and _reads_twice(method):
        method = SelfSupport(method, threshold=own_threshold)
    result = Segmentation(label=np.zeros(query_image.shape, np.int32), labels=dict(labels))
    for name in names:
        value = labels[name]
        support_z, episodes, query_episode = plans[name]
        kwargs = {}
        if latents is not None:  # encoded once for every organ and every episode sharing a slice
            query_latents, support_pool, pool_z = latents
            rows = torch.as_tensor(np.searchsorted(pool_z, episodes.reshape(-1)), device=support_pool.device)
            kwargs = {"query_latents": query_latents, "support_latents": support_pool.index_select(0, rows)}
        support_masks = (support_label[episodes] == value).astype(np.float32)
        organ_scores = method.predict_scores(support_image[episodes], support_masks, query_image, query_episode, **kwargs)
        scores.append(organ_scores)
        masks.append(method.binarize(organ_scores, support_masks=support_masks, **own_threshold))
        result.shots_per_label[name] = int(episodes.shape[1])
        result.support_slices[name] = [int(z) for z in support_z]
    merged = merge_organs(np.stack(scores), np.stack(masks), [labels[n] for n in names])
    result.label = keep_drawn(merged, support_label, labels) if same_volume else merged
    return result


def _propagated(method, label: np.ndarray, image: np.ndarray, labels: dict[str, int], max_shots: int,
                own_threshold: dict) -> Segmentation:
    """Every organ propagated through the volume from its drawn slices, merged as in the nearest
    mode; the drawn slices stay exactly as drawn."""
    # encoded as the walks reach them: the slices an organ never reaches are never encoded
    latents = method.latents_of(image) if hasattr(method, "latents_of") else None
    result = Segmentation(label=np.zeros(image.shape, np.int32), labels=dict(labels))
    organs = []
    for name, value in labels.items():
        drawn_z = labelled_slices(label, value)
        organs.append({int(z): label[z] == value for z in drawn_z})
        result.shots_per_label[name] = int(min(max_shots, len(drawn_z) + 1))
        result.support_slices[name] = [int(z) for z in drawn_z]
    walked = propagate_organs(method, image, organs, max_shots, latents, **own_threshold)  # walks in step
    scores, masks = (np.stack(parts) for parts in zip(*walked))
    result.label = keep_drawn(merge_organs(scores, masks, list(labels.values())), label, labels)
    return result


def keep_drawn(merged: np.ndarray, label: np.ndarray, labels: dict[str, int]) -> np.ndarray:
    """The user's own labelled slices of these organs, exactly as drawn, in the merged volume."""
    chosen = np.isin(label, list(labels.values()))
    drawn = chosen.reshape(chosen.shape[0], -1).any(axis=1)
    merged[drawn] = np.where(chosen[drawn], label[drawn], 0)
    return merged


def _reads_twice(method) -> bool:
    """Whether a support from another volume is read with self-support (``self_support.py``): the
    model config's ``self_support``, for a method that reads latents (the bundle's segmenter); a
    baseline, or a plain network called slice by slice, reads once."""
    if isinstance(method, SelfSupport) or not hasattr(method, "encode_images_cached"):
        return False
    config = getattr(method, "config", None)
    return isinstance(config, ModelConfig) and bool(config.self_support)


def _shared_latents(method, support_image, query_image, same_volume, episode_sets):
    """(query latents, support latents of the slices used, their slice indices) through the
    method's content-keyed cache, or None for a method without one. Every support slice is encoded
    once per call (several organs and overlapping K-shot episodes share slices) and, like the query,
    not again on a repeated call; in the same-volume case, or where the support image is kept in
    the cache, the supports are rows of its latents."""
    if not hasattr(method, "encode_images_cached"):
        return None

    query_latents = method.encode_images_cached(query_image)
    if same_volume and (support_image is query_image or np.array_equal(support_image, query_image)):
        return query_latents, query_latents, np.arange(query_image.shape[0])
    used = np.unique(np.concatenate([e.reshape(-1) for e in episode_sets]))
    # the support image warmed or segmented before: its slices are kept (those missing are encoded)
    whole_support = method.cached_latents(support_image) if hasattr(method, "cached_latents") else None
    if whole_support is not None:
        return query_latents, whole_support[used], used
    return query_latents, method.encode_images_cached(support_image[used]), used


def merge_organs(scores: np.ndarray, masks: np.ndarray, values: list[int]) -> np.ndarray:
    """(L, D, H, W) scores and binary masks -> one label volume: the highest-scoring organ among
    those whose mask is on at a voxel, background where none is."""
    ranked = np.where(masks, scores, -np.inf)
    winner = ranked.argmax(axis=0)
    out = np.asarray(values, dtype=np.int32)[winner]
    out[~masks.any(axis=0)] = 0
    return out


def _same_file(a, b) -> bool:
    """Whether two paths name one file (``data/./q.nii.gz`` and ``data/q.nii.gz`` do)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # a missing file: the loader names it
        return os.path.abspath(a) == os.path.abspath(b)


def segment_files(method, support_image_path, support_label_path, query_image_path, labels=None,
                  max_shots: int | None = None, support_slices=None, slice_axis: int = 2, mode: str = "propagate",
                  timings: dict | None = None, threshold: float | None = None, threshold_mode: str | None = None,
                  transforms=None):
    """Files in (anything MONAI's LoadImage reads), label volume out on the query's original grid.

    Returns (label array in the query file's original shape, the query ``Volume`` (its ``meta`` has
    the affine), ``Segmentation`` in slice space). The support may be the query itself (the same
    file, however the path is spelled): the in-volume case, where the user's drawn slices are kept
    as drawn. Another query is read in the support's orientation (from both affines; ``slice_axis``
    is the support file's), so its slices meet the support's as in space, and mapped back after; a
    query whose slices lie too far from the support's is refused (``DataError``). ``timings``, if
    given, receives the seconds of each part: ``load``, ``segment``, ``map_back``. ``threshold`` /
    ``threshold_mode``: this call's own (None: the method's). ``transforms``: a config's
    ``preprocessing`` (``scripts.data.volumes.SliceSpaceTransforms``; None: the default list)."""
    from scripts.data.volumes import load_volume, matching_orientation, read_header, to_original_grid

    start = time.perf_counter()
    same_volume = _same_file(support_image_path, query_image_path)
    support = load_volume(support_image_path, support_label_path, slice_axis=slice_axis, transforms=transforms)
    if same_volume:
        query = support
    else:
        codes = matching_orientation(support.meta["original_affine"], read_header(query_image_path).affine,
                                     slice_axis, str(support_image_path), str(query_image_path))
        query = load_volume(query_image_path, slice_axis=slice_axis, axcodes=codes, transforms=transforms)
    loaded = time.perf_counter()
    result = segment_volume(method, support.image, support.label, query.image, labels, max_shots,
                            same_volume, support_slices, mode, threshold, threshold_mode)
    segmented = time.perf_counter()
    label = to_original_grid(result.label, query)
    if timings is not None:
        timings.update(load=loaded - start, segment=segmented - loaded, map_back=time.perf_counter() - segmented)
    return label, query, result
