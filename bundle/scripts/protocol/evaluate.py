"""Run any few-shot method through the field's evaluation protocol and report it.

For each fold and each organ, the support slices (E, K, 256, 256) and the query slices of one query
volume are gathered by the chosen matching (`ep1`, `in_volume`, `no_oracle`), the method is called
once for that (query volume, organ) with all its query slices batched, its scores are binarized by
the method itself, and the predicted slices are scored in 3D against the ground truth. Slices the
matching does not segment count as predicted background; slices it does not score (in-volume: the
support slice) are left out of both prediction and ground truth, for Dice and surface distances
alike. Masks are `label == value`. Baselines and the network go through this same code.

In `ep1` and `no_oracle` the fold's support patient (first id unless `support_index` says otherwise)
serves the fold's other volumes. In `in_volume` every volume of the fold is its own support, so all
volumes of the fold are queries (the record's support_pid equals its query_pid).

The `draw<k>` modes are the labeller's use: k slices of the organ are drawn (`matching.drawn_slices`)
and the whole volume is segmented through the one seam (`engine.inferer.segment_volume`, in its
``volume_mode``: ``propagate`` or ``nearest``), or by the method's own ``segment_drawn`` (contour
interpolation). Dice and distances are taken on the whole volume, and again on the slices not drawn
(``dice_undrawn``, ``hd95_undrawn``): drawn slices come back exactly as drawn.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from .folds import make_folds, support_pid
from .matching import DRAW_MODES, SliceEpisodes, drawn_slices, ep1_episodes, in_volume_episodes, no_oracle_episodes
from .metrics import case_metrics
from .report import write_report

__all__ = ["FewShotMethod", "MODES", "episodes_for", "predict_case", "protocol_cases", "evaluate_case", "run_protocol",
           "evaluate_and_report"]

MODES = ("ep1", "in_volume", "no_oracle", *DRAW_MODES)
VOLUME_MODES = ("propagate", "nearest")


class FewShotMethod(Protocol):
    """What the protocol needs of a method (docs/ARCHITECTURE.md, "The method interface")."""

    name: str

    def predict_scores(self, support_images: np.ndarray, support_masks: np.ndarray,
                       query_images: np.ndarray, query_episode: np.ndarray) -> np.ndarray: ...

    def binarize(self, scores: np.ndarray, support_masks: np.ndarray | None = None) -> np.ndarray: ...


def episodes_for(mode: str, support, query, value: int, shots: int = 1) -> SliceEpisodes:
    """The slice selection of `mode` for one organ; `support` and `query` are Volume-like
    (`.label` (D, H, W)). In `in_volume` the support is ignored: the query serves itself."""
    if mode == "ep1":
        return ep1_episodes(support.label, query.label, value, shots=shots)
    if mode == "in_volume":
        return in_volume_episodes(query.label, value, shots=shots)
    if mode == "no_oracle":
        return no_oracle_episodes(support.label, query.label.shape[0], value, shots=shots)
    raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")


def predict_case(method: FewShotMethod, support, query, value: int,
                 episodes: SliceEpisodes) -> np.ndarray:
    """Call the method once for one (query volume, organ); return the predicted mask (D, H, W) of
    the query volume, background wherever the episodes do not segment."""
    pred = np.zeros(query.label.shape, dtype=bool)
    if episodes.query_z.size == 0:
        return pred
    support_images = np.asarray(support.image, dtype=np.float32)[episodes.support_z]
    support_masks = (np.asarray(support.label)[episodes.support_z] == value).astype(np.float32)
    query_images = np.asarray(query.image, dtype=np.float32)[episodes.query_z]
    scores = method.predict_scores(support_images, support_masks, query_images,
                                   episodes.query_episode.copy())
    binary = np.asarray(method.binarize(scores, support_masks=support_masks)).astype(bool)
    if binary.shape != query_images.shape:
        raise ValueError(f"{getattr(method, 'name', method)} returned masks of shape {binary.shape} "
                         f"for query slices of shape {query_images.shape}")
    pred[episodes.query_z] = binary
    return pred


def _scored_only(mask: np.ndarray, scored_z: np.ndarray) -> np.ndarray:
    keep = np.zeros(mask.shape[0], dtype=bool)
    keep[scored_z] = True
    return mask & keep[:, None, None]


def protocol_cases(volumes: Sequence, labels: dict[str, int], mode: str = "ep1", shots: int = 1,
                   n_folds: int = 5, folds: Sequence[int] | None = None, support_index: int = 0,
                   volume_mode: str = "propagate") -> list[dict]:
    """Every (fold, organ, query volume) case of the protocol, as plain dicts (a dataset of cases).
    ``volume_mode`` (``propagate`` | ``nearest``) goes with the `draw<k>` modes' cases."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if volume_mode not in VOLUME_MODES:
        raise ValueError(f"unknown volume_mode {volume_mode!r}; expected one of {VOLUME_MODES}")
    own_volume = mode == "in_volume" or mode in DRAW_MODES
    pids = [str(v.pid) for v in volumes]
    if len(set(pids)) != len(pids):
        raise ValueError("volumes have duplicate pids")
    all_folds = make_folds(pids, n_folds)
    chosen = range(len(all_folds)) if folds is None else list(folds)
    cases = []
    for f in chosen:
        if not 0 <= f < len(all_folds):
            raise ValueError(f"fold {f} does not exist ({len(all_folds)} folds)")
        fold = all_folds[f]
        sup_pid = support_pid(fold, support_index)
        queries = list(fold) if own_volume else [p for p in fold if p != sup_pid]
        for organ, value in labels.items():
            for q_pid in queries:
                cases.append({"mode": mode, "fold": f, "organ": organ, "label_value": int(value), "shots": shots,
                              "support_pid": q_pid if own_volume else sup_pid, "query_pid": q_pid,
                              **({"volume_mode": volume_mode} if mode in DRAW_MODES else {})})
    return cases


def predict_drawn(method, volume, value: int, drawn_z: np.ndarray, max_shots: int | None = None,
                  volume_mode: str = "propagate") -> np.ndarray:
    """The organ's mask (D, H, W) in ``volume`` from its ground truth on ``drawn_z`` alone: the
    method's own ``segment_drawn`` where it has one, else the one seam in ``volume_mode``."""
    label = np.asarray(volume.label)
    drawn = np.zeros(label.shape, dtype=np.int32)
    drawn[drawn_z] = np.where(label[drawn_z] == value, value, 0)
    image = np.asarray(volume.image, dtype=np.float32)
    if hasattr(method, "segment_drawn"):
        return np.asarray(method.segment_drawn(image, drawn, value)).astype(bool)
    from scripts.engine.inferer import segment_volume

    result = segment_volume(method, image, drawn, image, {"organ": int(value)}, max_shots=max_shots, same_volume=True,
                            mode=volume_mode)
    return result.label == value


def _evaluate_drawn(method, volume, case: dict, distances: bool) -> dict:
    value = case["label_value"]
    drawn_z = drawn_slices(volume.label, value, DRAW_MODES[case["mode"]])
    pred = predict_drawn(method, volume, value, drawn_z, case["shots"], case.get("volume_mode", "propagate"))
    gt = np.asarray(volume.label) == value
    undrawn = np.setdiff1d(np.arange(gt.shape[0]), drawn_z)
    rest = case_metrics(_scored_only(pred, undrawn), _scored_only(gt, undrawn), tuple(volume.spacing), distances)
    return {**case, **case_metrics(pred, gt, tuple(volume.spacing), distances=distances),
            "dice_undrawn": rest["dice"], "hd95_undrawn": rest["hd95"], "drawn_z": [int(z) for z in drawn_z],
            "n_scored": int(gt.shape[0]), "n_segmented": int(gt.shape[0])}


def evaluate_case(method: FewShotMethod, by_pid: dict, case: dict, distances: bool = True) -> dict:
    """One case: gather its episodes, predict, score the scored slices in 3D; returns its record."""
    if case["mode"] in DRAW_MODES:
        return _evaluate_drawn(method, by_pid[case["query_pid"]], case, distances)
    query, support = by_pid[case["query_pid"]], by_pid[case["support_pid"]]
    value = case["label_value"]
    episodes = episodes_for(case["mode"], support, query, value, case["shots"])
    pred = _scored_only(predict_case(method, support, query, value, episodes), episodes.scored_z)
    gt = _scored_only(np.asarray(query.label) == value, episodes.scored_z)
    return {**case, **case_metrics(pred, gt, tuple(query.spacing), distances=distances),
            "n_scored": int(episodes.scored_z.size), "n_segmented": int(episodes.query_z.size)}


def run_protocol(method: FewShotMethod, volumes: Sequence, labels: dict[str, int], mode: str = "ep1",
                 shots: int = 1, n_folds: int = 5, folds: Sequence[int] | None = None,
                 support_index: int = 0, progress: Callable[[str], None] | None = None,
                 distances: bool = True) -> list[dict]:
    """Evaluate `method` on Volume-like objects (`.pid`, `.image`, `.label`, `.spacing`).

    `labels` maps organ names to label values; `folds` picks fold indices (default: all).
    Returns one record per (fold, query volume, organ) with Dice, TP/FP/FN, HD95 and ASSD (mm),
    the number of scored and segmented slices, and the mode.
    """
    by_pid = {str(v.pid): v for v in volumes}
    records = []
    for case in protocol_cases(volumes, labels, mode, shots, n_folds, folds, support_index):
        t0 = time.perf_counter()
        rec = evaluate_case(method, by_pid, case, distances)
        records.append(rec)
        if progress is not None:
            dice = "undefined" if rec["dice"] is None else f"{100 * rec['dice']:.1f}"
            progress(f"{getattr(method, 'name', 'method')} {mode} fold {rec['fold']} {rec['organ']} "
                     f"support {rec['support_pid']} query {rec['query_pid']}: Dice {dice} "
                     f"({rec['n_segmented']} slices, {time.perf_counter() - t0:.1f} s)")
    return records


def _counter_delta(before: dict, after: dict) -> dict:
    return {k: v - before.get(k, 0) if isinstance(v, (int, float)) else v for k, v in after.items()}


def evaluate_and_report(method: FewShotMethod, volumes: Sequence, labels: dict[str, int], out_dir,
                        mode: str = "ep1", shots: int = 1, n_folds: int = 5,
                        folds: Sequence[int] | None = None, support_index: int = 0,
                        progress: Callable[[str], None] | None = None, dataset: str | None = None,
                        distances: bool = True) -> dict:
    """`run_protocol`, then `report.write_report` into `out_dir`. A method's `fallback_counts`
    (registration) are reported for this run alone. Returns the summary of results.json."""
    before = dict(getattr(method, "fallback_counts", {}) or {})
    t0 = time.perf_counter()
    records = run_protocol(method, volumes, labels, mode=mode, shots=shots, n_folds=n_folds,
                           folds=folds, support_index=support_index, progress=progress,
                           distances=distances)
    stats = {"seconds": round(time.perf_counter() - t0, 1)}
    if hasattr(method, "fallback_counts"):
        stats["fallback_counts"] = _counter_delta(before, dict(method.fallback_counts))
    settings = {"n_folds": n_folds, "folds": None if folds is None else list(folds),
                "support_index": support_index, "labels": dict(labels)}
    return write_report(records, out_dir, method=getattr(method, "name", type(method).__name__),
                        mode=mode, shots=shots, organs=list(labels), dataset=dataset,
                        method_stats=stats, settings=settings)
