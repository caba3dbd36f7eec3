"""In-volume propagation: label one slice (or a few), get the organ in the whole volume (issue #38).

The nearest-support mode serves every slice from the drawn slice nearest to it, however far away,
and cannot tell where the organ ends. Here the volume is walked outwards from the drawn slices,
one slice per step in both directions, and each new slice is served by the slice just segmented
beside it (the K-shot path of the method: its predicted mask is a support like a drawn one) plus
the drawn slices on either side of it, nearest first, up to ``max_shots``. Slices between two drawn
slices are thus served from both sides. A walk stops by itself, with nothing of the ground truth:

- the organ is gone: the new mask is smaller than ``min_area`` pixels, or than ``min_area_ratio``
  of the drawn masks' mean area;
- the mask jumped: of the new mask only the connected components that touch the previous slice's
  mask grown by ``margin`` pixels are kept (anything else is a neighbour organ, not this one's
  continuation); a walk whose new mask keeps nothing stops;
- the mask drifted: it overlaps the previous slice's mask by less than ``min_iou`` (intersection
  over union), or the method is less sure of it: its mean score inside the mask falls under
  ``min_score_ratio`` of the first slice walked on that side. A network that never answers "empty"
  goes on finding look-alike tissue past an organ's end; these two notice it.

Between two drawn slices the organ is known to go on, so only the jump test applies there.

A walk sees each slice once, from one side. When all walks have stopped, the scores of the walked
slices are smoothed along the slice axis (a Gaussian of the method's ``z_sigma`` slices: the
network's config, 1 slice) and binarized again, keeping what touches the walk's mask: a slice then
also hears the slices after it, which evens out one-slice errors (chosen like the stop rule, on
fold 0's training patients: ``bench/z_smoothing_probe.py``). Drawn slices stay as drawn and nothing
is added outside the walked slices. Methods without a ``z_sigma`` (the baselines, whose 0/1
readings it would only erode) are not smoothed.

The
drift thresholds were chosen on the training patients of CHAOST2 fold 0 (walks recorded once with
fold 0's supervoxel-trained model, every threshold pair scored offline by cutting the walks where
it stops: docs/DESIGN.md, "Where a propagated organ ends"); the fold's test patients never saw them.
Every step is one batched call of the method for all walks (grouped by their number of shots), of
every organ walked together (``propagate_organs``), so the cost grows with the organs' extent in
slices, not with the number of drawn slices, and several organs share the network's batches.
Any method with ``predict_scores`` / ``binarize`` propagates this way, so the registration and
support-copy baselines are propagated by the same code as the network.

A walk's result is remembered per method (the last ``MEMO_SIZE`` organs), keyed by the volume's and
the drawn masks' contents and everything that shapes the walk (shots, stop rule, threshold): a
repeated call, or one that adds or edits another organ of the volume, walks only what changed.
A call may set its own threshold (``threshold`` / ``threshold_mode``, handed to ``binarize``)
instead of the method's.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from dataclasses import astuple, dataclass

import numpy as np
from scipy import ndimage

from scripts.network.model_config import ModelConfig

__all__ = ["StopRule", "propagate_organ", "propagate_organs", "clear_memo", "threshold_keywords"]

MEMO_SIZE = 8  # organs remembered per method: a 40-slice 256x256 organ holds about 13 MB
_memo: "weakref.WeakKeyDictionary[object, OrderedDict]" = weakref.WeakKeyDictionary()


def clear_memo() -> None:
    """Forget every remembered walk (benchmarks time first calls with it)."""
    _memo.clear()


def threshold_keywords(threshold: float | None = None, threshold_mode: str | None = None) -> dict:
    """What a call hands ``method.binarize`` for its own threshold: only what it sets, so a method
    whose ``binarize`` takes no threshold (the baselines) is called as before."""
    return {key: value for key, value in (("threshold", threshold), ("threshold_mode", threshold_mode))
            if value is not None}


def _memo_key(method, image: np.ndarray, drawn: dict, max_shots: int, rule, own_threshold: dict) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.ascontiguousarray(image, dtype=np.float32).tobytes())
    threshold = own_threshold.get("threshold", getattr(method, "threshold", None))
    threshold_mode = own_threshold.get("threshold_mode", getattr(method, "threshold_mode", None))
    z_sigma = getattr(method, "z_sigma", 0.0)
    digest.update(repr((image.shape, sorted(drawn), max_shots, astuple(rule), threshold, threshold_mode,
                        z_sigma)).encode())
    for z in sorted(drawn):
        digest.update(np.packbits(np.asarray(drawn[z]) > 0).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class StopRule:
    min_area: int = 20              # pixels; a 256x256 slice at 1.25 mm: 0.3 cm^2
    min_area_ratio: float = 0.05    # of the drawn masks' mean area
    margin: int = 8                 # pixels the organ may move from one slice to the next
    min_iou: float = 0.5            # overlap with the previous slice's mask, outside the drawn range
    min_score_ratio: float = 0.9    # mean score in the mask against the first slice walked on that side


@dataclass
class _Walk:
    z: int            # the last slice it segmented (or the drawn slice it starts from)
    step: int         # -1 or +1
    first_score: float | None = None  # mean score in the mask of its first slice outside the drawn range


def _grow(mask: np.ndarray, margin: int) -> np.ndarray:
    return ndimage.binary_dilation(mask, iterations=margin) if margin > 0 else mask


def propagate_organ(method, image: np.ndarray, drawn: dict[int, np.ndarray], max_shots: int = ModelConfig.max_shots,
                    latents=None, rule: StopRule = StopRule(), threshold: float | None = None,
                    threshold_mode: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One organ of one volume: ``image`` (D, H, W), ``drawn`` {slice index: (H, W) mask} of the
    slices the user drew (each non-empty). ``latents``: the volume's latents (D, C, h, w), or
    anything indexed like them (``SliceLatents``: each slice encoded when the walk first needs it),
    for a method that takes them (the network), so nothing is encoded twice. ``threshold`` /
    ``threshold_mode``: this call's own (None: the method's).
    Returns (scores (D, H, W) float32, masks (D, H, W) bool); drawn slices come back as drawn."""
    return propagate_organs(method, image, [drawn], max_shots, latents, rule, threshold, threshold_mode)[0]


def propagate_organs(method, image: np.ndarray, organs: list[dict[int, np.ndarray]],
                     max_shots: int = ModelConfig.max_shots, latents=None, rule: StopRule = StopRule(),
                     threshold: float | None = None, threshold_mode: str | None = None) -> list[tuple]:
    """``propagate_organ`` for several organs of one volume (``organs``: each one's drawn slices),
    their walks in step: each step is one call of the method for every organ's next slices, so
    the network reads larger batches (on 2 CPU cores a query slice costs about half as much in a
    batch of 8 as in one of 2, both walks of one organ). Each organ's walk, and so its result, is
    its own; remembered organs are not walked again. Returns (scores, masks) per organ."""
    image = np.asarray(image, dtype=np.float32)
    if any(not drawn for drawn in organs):
        raise ValueError("propagation needs at least one drawn slice")
    try:
        memo = _memo.setdefault(method, OrderedDict())
    except TypeError:  # a method that cannot be weakly referenced is not remembered
        memo = None
    own_threshold = threshold_keywords(threshold, threshold_mode)
    keys = [_memo_key(method, image, drawn, max_shots, rule, own_threshold) if memo is not None else None
            for drawn in organs]
    results: list = [None] * len(organs)
    walkers: dict[int, _OrganWalk] = {}
    for i, (drawn, key) in enumerate(zip(organs, keys)):
        if key in (memo or {}):
            memo.move_to_end(key)
            scores, masks = memo[key]
            results[i] = (scores.copy(), masks.copy())
        else:
            walkers[i] = _OrganWalk(image.shape, drawn, max_shots, rule)
    active = dict(walkers)
    while active:
        plans = {}
        for i, walker in list(active.items()):
            plan = walker.plan()
            if not plan:
                del active[i]
            plans.update({(i, z): support for z, support in plan.items()})
        if not plans:
            break
        predicted = _predict(method, image, {i: w.masks for i, w in walkers.items()}, plans, latents, own_threshold)
        for i, walker in active.items():
            walker.advance({z: predicted[(i, z)] for z in walker.targets})
    for i, walker in walkers.items():
        scores, masks = smooth_along_z(method, walker.scores, walker.masks, walker.drawn_z,
                                       getattr(method, "z_sigma", 0.0), own_threshold)
        results[i] = (scores, masks)
        if memo is not None:
            memo[keys[i]] = (scores.copy(), masks.copy())
            while len(memo) > MEMO_SIZE:
                memo.popitem(last=False)
    return results


class _OrganWalk:
    """One organ's walks out from its drawn slices: ``plan`` the next slices and the slices that
    serve them, ``advance`` with what the method read there (see the module docstring)."""

    def __init__(self, shape, drawn: dict[int, np.ndarray], max_shots: int, rule: StopRule):
        self.drawn_z = np.array(sorted(drawn), dtype=int)
        self.masks = np.zeros(shape, dtype=bool)
        self.scores = np.full(shape, -1.0, dtype=np.float32)
        for z in self.drawn_z:
            self.masks[z] = np.asarray(drawn[z]) > 0
            if not self.masks[z].any():
                raise ValueError(f"drawn slice {z} is empty: draw the organ on it or leave the slice out")
            self.scores[z] = np.where(self.masks[z], 1.0, -1.0)
        self.done = np.zeros(shape[0], dtype=bool)
        self.done[self.drawn_z] = True
        self.min_area = max(rule.min_area, rule.min_area_ratio * self.masks[self.drawn_z].sum(axis=(1, 2)).mean())
        self.max_shots, self.rule = max_shots, rule
        self.walks = [_Walk(int(z), step) for z in self.drawn_z for step in (-1, 1)]
        self.targets: dict[int, list[_Walk]] = {}

    def plan(self) -> dict[int, tuple[int, ...]]:
        """{next slice: the slices serving it} for every walk still going (empty: all stopped)."""
        self.targets = {}
        for walk in self.walks:
            z = walk.z + walk.step
            if 0 <= z < len(self.done) and not self.done[z]:
                self.targets.setdefault(z, []).append(walk)
        return {z: _supports(z, [w.z for w in ws], self.drawn_z, self.max_shots) for z, ws in self.targets.items()}

    def advance(self, predicted: dict) -> None:
        """Take the planned slices' readings {z: (scores, mask)}; the walks that go on step."""
        walks = []
        for z, ws in self.targets.items():
            score, mask = predicted[z]
            self.done[z] = True
            neighbours = np.logical_or.reduce([self.masks[w.z] for w in ws])
            between = self.drawn_z.min() < z < self.drawn_z.max()
            mask = _connected_to(mask, neighbours, self.rule.margin)
            if not mask.any() or not (between or _goes_on(mask, score, neighbours, ws, self.min_area, self.rule)):
                continue  # a walk that stopped leaves the slice empty and goes no further
            self.masks[z], self.scores[z] = mask, score
            walks += ws
        for walk in walks:
            walk.z += walk.step
        self.walks = walks


def smooth_along_z(method, scores, masks, drawn_z, sigma: float, own_threshold: dict | None = None):
    """The walked slices' scores smoothed along z by a Gaussian of ``sigma`` slices and binarized
    again by the method (its threshold, component rules), keeping the components that touch the
    walk's mask on that slice; drawn slices and slices no walk reached are left as they are.
    Returns (scores, masks): the inputs where nothing changes, else new arrays."""
    walked = masks.any(axis=(1, 2))
    walked[drawn_z] = False
    if sigma <= 0 or not walked.any():
        return scores, masks
    # only the walked slices and the kernel's reach around them (ndimage's radius, truncate=4): the same
    # numbers as filtering the whole volume, for a fraction of it
    reach = int(4.0 * sigma + 0.5)
    zs = np.flatnonzero(walked)
    lo, hi = max(0, zs[0] - reach), min(len(walked), zs[-1] + 1 + reach)
    smoothed = np.empty_like(scores)
    smoothed[lo:hi] = ndimage.gaussian_filter1d(scores[lo:hi], sigma, axis=0, mode="nearest")
    scores, masks = scores.copy(), masks.copy()
    for z in np.flatnonzero(walked):
        support = masks[z][None, None].astype(np.float32)  # the first reading picks the component
        binary = np.asarray(method.binarize(smoothed[z][None], support_masks=support, **(own_threshold or {})))[0] > 0
        masks[z] = _connected_to(binary, masks[z], 0)  # what the walk refused (a neighbour organ) stays out
        scores[z] = smoothed[z]
    return scores, masks


def _supports(z: int, neighbours: list[int], drawn_z: np.ndarray, max_shots: int) -> tuple[int, ...]:
    """The slices serving ``z``: the neighbours just segmented, then the nearest drawn slice below
    and above, then other drawn slices by distance; at most ``max_shots``, each once."""
    below, above = drawn_z[drawn_z < z], drawn_z[drawn_z > z]
    ordered = list(neighbours) + [int(s) for s in (below[-1:].tolist() + above[:1].tolist())]
    ordered += [int(s) for s in drawn_z[np.argsort(np.abs(drawn_z - z), kind="stable")]]
    out = []
    for s in ordered:
        if s not in out:
            out.append(s)
    return tuple(out[:max(1, max_shots)])


def _predict(method, image, masks: dict, plans: dict[tuple[int, int], tuple[int, ...]], latents,
             own_threshold: dict) -> dict:
    """One call of the method per number of shots for every target slice of this step, of every
    organ (``plans``: {(organ, z): its support slices}; ``masks``: each organ's masks); returns
    {(organ, z): (scores (H, W), binary mask (H, W))}."""
    out = {}
    by_shots: dict[int, list[tuple[int, int]]] = {}
    for target, support in plans.items():
        by_shots.setdefault(len(support), []).append(target)
    for _, targets in sorted(by_shots.items()):
        episodes = np.array([plans[t] for t in targets], dtype=int)       # (E, K): one episode per target
        support_masks = np.stack([masks[organ][list(plans[(organ, z)])] for organ, z in targets]).astype(np.float32)
        zs = [z for _, z in targets]
        kwargs = {}
        if latents is not None:
            kwargs = {"query_latents": latents[zs], "support_latents": latents[episodes.reshape(-1)]}
        scores = method.predict_scores(image[episodes], support_masks, image[zs], np.arange(len(zs)), **kwargs)
        for i, target in enumerate(targets):
            binary = method.binarize(scores[i:i + 1], support_masks=support_masks[i:i + 1], **own_threshold)
            out[target] = (np.asarray(scores[i], dtype=np.float32), np.asarray(binary)[0] > 0)
    return out


def _goes_on(mask, score, previous, walks: list[_Walk], min_area: float, rule: StopRule) -> bool:
    """Outside the drawn range: whether the organ is still there (see the module docstring)."""
    if mask.sum() < min_area:
        return False
    union = np.logical_or(mask, previous).sum()
    if np.logical_and(mask, previous).sum() < rule.min_iou * union:
        return False
    confidence = float(np.mean(score[mask]))
    for walk in walks:
        if walk.first_score is None:
            walk.first_score = confidence
        elif walk.first_score > 0 and confidence < rule.min_score_ratio * walk.first_score:
            return False
    return True


def _connected_to(mask: np.ndarray, neighbours: np.ndarray, margin: int) -> np.ndarray:
    """The connected components of ``mask`` that touch ``neighbours`` grown by ``margin`` pixels."""
    components, count = ndimage.label(mask)
    if count == 0:
        return mask
    touching = np.unique(components[_grow(neighbours, margin) & mask])
    return np.isin(components, touching[touching > 0])
