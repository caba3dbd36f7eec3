"""Training episodes: 1-way K-shot (support slices + masks, one query slice + mask) from labelled volumes.

Two label sources, as in the field:
- "gt": a training class c; the K support slices come from volume A and the query from another
  volume B, at the same relative position r within c's z-range (the EP1 idea used at training time).
- "supervoxel" (SSL-ALPNet's self-supervision): one supervoxel id of one volume; the query slice is
  2-4 slices away from each support slice (`supervoxel_offset`), so the model has to match the
  structure across slices rather than copy the support mask.

Two settings for the test classes:
- Setting 1: test classes may appear in training slices, unlabelled (background of the episode).
  With no test class at all, every labelled class trains (the shipped model).
- Setting 2: every slice that contains a test class is dropped, for support and query alike; it
  needs at least one test class (without one it would be Setting 1, and is refused).
  `exclusion_rule="any"` drops a slice holding any test class (correct); "all" reproduces the bug of
  the SSL-ALPNet lineage, which dropped only slices holding every test class at once.

`EpisodeDataset` is map-style and deterministic: item i of epoch e with seed s is always the same
episode; `set_epoch` draws new ones. Items carry (pid, z) keys and masks but no images by default:
training reads cached latents by (pid, z). Masks are 256x256 {0, 1} float32 tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from .volumes import Volume

__all__ = ["EpisodeError", "excluded_slices", "usable_slices", "usable_slice_counts", "EpisodeDataset",
           "EpisodeSampler"]

RULES = ("any", "all")
SOURCES = ("gt", "supervoxel", "both")


class EpisodeError(ValueError):
    """No training episode can be formed from the given volumes and configuration."""


def _require_label(volume: Volume) -> np.ndarray:
    if volume.label is None:
        raise EpisodeError(f"volume {volume.pid} has no label map; episodes need labelled volumes")
    return volume.label


def excluded_slices(volume: Volume, test_values: Sequence[int], rule: str = "any") -> np.ndarray:
    """Boolean (D,): slices Setting 2 drops. "any": slice holds any test class; "all": all of them at once (legacy bug)."""
    if rule not in RULES:
        raise ValueError(f"exclusion rule must be one of {RULES}, got {rule!r}")
    label = _require_label(volume)
    if len(test_values) == 0:
        return np.zeros(label.shape[0], dtype=bool)
    present = np.stack([(label == int(v)).any(axis=(1, 2)) for v in test_values])  # (T, D)
    return present.any(axis=0) if rule == "any" else present.all(axis=0)


def usable_slices(volume: Volume, test_values: Sequence[int], setting: int, rule: str = "any") -> np.ndarray:
    """Boolean (D,): slices episodes may use (all of them in Setting 1)."""
    if setting not in (1, 2):
        raise ValueError(f"setting must be 1 or 2, got {setting!r}")
    if setting == 1:
        return np.ones(volume.depth, dtype=bool)
    return ~excluded_slices(volume, test_values, rule)


def usable_slice_counts(volumes: Sequence[Volume], train_values: Sequence[int], test_values: Sequence[int],
                        setting: int = 2, rule: str = "any", min_pixels: int = 1) -> dict[str, dict]:
    """Per patient: slices in all, slices kept, kept slices holding any / each training class.

    `{pid: {"slices": D, "kept": n, "train": n, "per_class": {value: n}}}`: how much training data a
    setting leaves (under Setting 2 with the correct rule, very little for CHAOST2).
    """
    out = {}
    for volume in volumes:
        label = _require_label(volume)
        keep = usable_slices(volume, test_values, setting, rule)
        per_class = {int(v): (label == int(v)).sum(axis=(1, 2)) >= max(1, min_pixels) for v in train_values}
        any_train = np.zeros(volume.depth, dtype=bool)
        for has in per_class.values():
            any_train |= has
        out[volume.pid] = {
            "slices": int(volume.depth),
            "kept": int(keep.sum()),
            "train": int((keep & any_train).sum()),
            "per_class": {v: int((keep & has).sum()) for v, has in per_class.items()},
        }
    return out


@dataclass
class _ClassSlices:
    """Candidate slices of one class in one volume, with their relative position in the class's z-range."""

    z: np.ndarray    # int64, sorted
    rel: np.ndarray  # float, in [0, 1]


class EpisodeDataset(Dataset):
    """Map-style dataset of 1-way K-shot training episodes (see the module docstring).

    Args:
        volumes: labelled slice-space volumes (supervoxels needed for supervoxel episodes).
        train_values: label values that may be the episode class in "gt" episodes.
        test_values: label values held out (background in Setting 1, slices dropped in Setting 2).
        setting: 1 or 2. exclusion_rule: "any" (correct) or "all" (legacy).
        label_source: "gt", "supervoxel" or "both" (supervoxel with probability `supervoxel_prob`).
        shots: K support slices. n_episodes: `len(self)`. seed: with the epoch and index, fixes an item.
        min_pixels: least pixels of the class in every support and query mask of a "gt" episode.
        min_supervoxel_pixels: the same for a supervoxel in a supervoxel episode.
        supervoxel_offset: (lo, hi) slice distance between the query and each support slice.
        support_spread: for K > 1, the K supports sit at relative positions spread over this width around r.
        with_images: add `support_image` (K,256,256) and `query_image` (1,256,256) from the volumes.
        empty_query_prob: the share of episodes whose query is a slice 1-3 slices past the end of the
            class (or supervoxel) along z, its target empty, with the supports taken nearest that end:
            it teaches the model to answer "not here", which in-volume propagation needs to find an
            organ's ends and no-oracle use needs on slices without the organ. 0 draws exactly the
            episodes of earlier versions.
    """

    def __init__(self, volumes: Sequence[Volume], train_values: Sequence[int], test_values: Sequence[int] = (),
                 setting: int = 1, exclusion_rule: str = "any", label_source: str = "gt",
                 supervoxel_prob: float = 0.5, shots: int = 1, n_episodes: int = 1000, seed: int = 0,
                 min_pixels: int = 20, min_supervoxel_pixels: int = 100,
                 supervoxel_offset: tuple[int, int] = (2, 4), support_spread: float = 1.0 / 3.0,
                 with_images: bool = False, empty_query_prob: float = 0.0):
        if label_source not in SOURCES:
            raise ValueError(f"label_source must be one of {SOURCES}, got {label_source!r}")
        if exclusion_rule not in RULES:
            raise ValueError(f"exclusion_rule must be one of {RULES}, got {exclusion_rule!r}")
        if setting not in (1, 2):
            raise ValueError(f"setting must be 1 or 2, got {setting!r}")
        if shots < 1 or n_episodes < 1:
            raise ValueError(f"shots and n_episodes must be >= 1, got {shots}, {n_episodes}")
        lo, hi = (int(x) for x in supervoxel_offset)
        if not 1 <= lo <= hi:
            raise ValueError(f"supervoxel_offset must be (lo, hi) with 1 <= lo <= hi, got {supervoxel_offset}")
        if not 0.0 <= supervoxel_prob <= 1.0:
            raise ValueError(f"supervoxel_prob must be in [0, 1], got {supervoxel_prob}")
        if not 0.0 <= empty_query_prob <= 1.0:
            raise ValueError(f"empty_query_prob must be in [0, 1], got {empty_query_prob}")
        self.empty_query_prob = float(empty_query_prob)
        self.train_values = [int(v) for v in train_values]
        self.test_values = [int(v) for v in test_values]
        overlap = set(self.train_values) & set(self.test_values)
        if overlap:
            raise ValueError(f"classes {sorted(overlap)} are both training and test classes")
        if setting == 2 and not self.test_values:
            # Setting 2 is defined by the test classes it keeps out of training; with none it would
            # silently be Setting 1 under another name (and a run named s2 that is not)
            raise ValueError("Setting 2 drops the slices of the test classes, but no test class is given "
                             "(test_labels is empty): use setting 1 to train on every class")
        if not volumes:
            raise EpisodeError("no volumes given")
        self.volumes = list(volumes)
        self.setting, self.exclusion_rule, self.label_source = setting, exclusion_rule, label_source
        self.supervoxel_prob = supervoxel_prob if label_source == "both" else float(label_source == "supervoxel")
        self.shots, self.n_episodes, self.seed = int(shots), int(n_episodes), int(seed)
        self.min_pixels, self.min_supervoxel_pixels = int(min_pixels), int(min_supervoxel_pixels)
        self.offsets = (lo, hi)
        self.support_spread = float(support_spread)
        self.with_images = with_images
        self.epoch = 0

        needs_label = label_source != "supervoxel" or setting == 2
        self.usable = [usable_slices(v, self.test_values, setting, exclusion_rule) if needs_label
                       else np.ones(v.depth, dtype=bool) for v in self.volumes]
        if label_source in ("gt", "both"):
            self._build_gt_index()
        if label_source in ("supervoxel", "both"):
            self._build_supervoxel_index()

    # ----------------------------------------------------------------------------- indices
    def _setting_note(self) -> str:
        if self.setting == 1:
            return "Setting 1"
        return f"Setting 2 (rule {self.exclusion_rule!r}, test classes {self.test_values})"

    def _build_gt_index(self) -> None:
        """Per class: candidate slices per volume, and which volumes can serve as support / query."""
        if not self.train_values:
            raise EpisodeError("gt episodes need at least one training class")
        self._gt: dict[int, dict] = {}
        report = []
        for c in self.train_values:
            slices: dict[int, _ClassSlices] = {}
            for vi, volume in enumerate(self.volumes):
                counts = (_require_label(volume) == c).sum(axis=(1, 2))
                present = np.flatnonzero(counts > 0)
                if len(present) == 0:
                    continue
                # positions are relative to the class's whole z-range, so Setting 2's dropped slices
                # leave gaps instead of stretching the rest
                z0, z1 = present[0], present[-1]
                cand = np.flatnonzero((counts >= max(1, self.min_pixels)) & self.usable[vi]).astype(np.int64)
                if len(cand):
                    slices[vi] = _ClassSlices(cand, (cand - z0) / max(z1 - z0, 1))
            query_vols = sorted(slices)
            support_vols = [vi for vi in query_vols if len(slices[vi].z) >= self.shots
                            and any(q != vi for q in query_vols)]
            report.append(f"class {c}: {len(query_vols)} volume(s) with usable slices, "
                          f"{len(support_vols)} with >= {self.shots} and a partner volume")
            if support_vols:
                self._gt[c] = {"slices": slices, "support": support_vols, "query": query_vols}
        if not self._gt:
            raise EpisodeError(f"no gt episode can be formed in {self._setting_note()} with min_pixels="
                               f"{self.min_pixels}: a class needs usable slices in two volumes; " + "; ".join(report))
        self._gt_classes = sorted(self._gt)

    def _build_supervoxel_index(self) -> None:
        """Every (volume, query slice, supervoxel id) with >= K support slices at the allowed offsets."""
        lo, hi = self.offsets
        shifts = [s * d for d in range(lo, hi + 1) for s in (-1, 1)]
        self._sv: list[tuple[int, np.ndarray, np.ndarray]] = []  # (volume index, z, id) arrays
        n_with = 0
        for vi, volume in enumerate(self.volumes):
            sv = volume.supervoxels
            if sv is None:
                continue
            n_with += 1
            depth = volume.depth
            n_ids = int(sv.max()) + 1
            counts = np.stack([np.bincount(sv[z].ravel(), minlength=n_ids) for z in range(depth)])  # (D, ids)
            ok = counts >= max(1, self.min_supervoxel_pixels)
            ok[:, 0] = False  # 0 is "no supervoxel"
            ok[~self.usable[vi]] = False
            partners = np.zeros(ok.shape, dtype=np.int32)
            for s in shifts:
                if s > 0:
                    partners[:-s] += ok[s:]
                else:
                    partners[-s:] += ok[:s]
            zs, ids = np.nonzero(ok & (partners >= self.shots))
            if len(zs):
                self._sv.append((vi, zs.astype(np.int64), ids.astype(np.int64)))
        if n_with == 0:
            raise EpisodeError("supervoxel episodes need volumes loaded with supervoxels (with_supervoxels=True)")
        if not self._sv:
            raise EpisodeError(f"no supervoxel episode can be formed in {self._setting_note()}: no supervoxel has "
                               f">= {self.min_supervoxel_pixels} pixels on a usable slice and on {self.shots} usable "
                               f"slice(s) {lo}-{hi} slices away")

    # ----------------------------------------------------------------------------- sampling
    def set_epoch(self, epoch: int) -> None:
        """Draw a different set of episodes (same seed and epoch: same episodes)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n_episodes

    def _nearest(self, cand: _ClassSlices, targets: Sequence[float]) -> np.ndarray:
        """For each target position, the nearest candidate slice not taken yet (greedy, in target order)."""
        taken = np.zeros(len(cand.z), dtype=bool)
        picks = []
        for t in targets:
            dist = np.where(taken, np.inf, np.abs(cand.rel - t))
            i = int(np.argmin(dist))
            taken[i] = True
            picks.append(cand.z[i])
        return np.sort(np.asarray(picks, dtype=np.int64))

    def _gt_episode(self, rng: np.random.Generator) -> tuple:
        c = self._gt_classes[rng.integers(len(self._gt_classes))]
        entry = self._gt[c]
        a = entry["support"][rng.integers(len(entry["support"]))]
        partners = [q for q in entry["query"] if q != a]
        b = partners[rng.integers(len(partners))]
        r = float(rng.random())
        query_z = self._nearest(entry["slices"][b], [r])[0]
        k = self.shots
        targets = [r] if k == 1 else np.clip(r + self.support_spread * ((np.arange(k) + 0.5) / k - 0.5), 0.0, 1.0)
        support_z = self._nearest(entry["slices"][a], targets)
        va, vb = self.volumes[a], self.volumes[b]
        support_mask = va.label[support_z] == c
        query_mask = vb.label[query_z] == c
        return "gt", c, a, support_z, b, int(query_z), support_mask, query_mask

    def _supervoxel_episode(self, rng: np.random.Generator) -> tuple:
        vi, zs, ids = self._sv[rng.integers(len(self._sv))]
        j = rng.integers(len(zs))
        query_z, sv_id = int(zs[j]), int(ids[j])
        volume = self.volumes[vi]
        lo, hi = self.offsets
        cand = [query_z + s * d for d in range(lo, hi + 1) for s in (-1, 1)]
        cand = [z for z in cand if 0 <= z < volume.depth and self.usable[vi][z]
                and (volume.supervoxels[z] == sv_id).sum() >= max(1, self.min_supervoxel_pixels)]
        support_z = np.sort(rng.choice(np.asarray(cand, dtype=np.int64), size=self.shots, replace=False))
        support_mask = volume.supervoxels[support_z] == sv_id
        query_mask = volume.supervoxels[query_z] == sv_id
        return "supervoxel", sv_id, vi, support_z, vi, query_z, support_mask, query_mask

    def _past_the_end(self, episode: tuple, rng: np.random.Generator) -> tuple | None:
        """The episode with its query moved 1-3 slices past one end of its class along z (an empty
        target) and its supports the class's slices nearest that end; None where the volume has no
        such slice (the organ reaches the volume's edge)."""
        source, value, a, _, b, _, _, _ = episode
        query_vol, support_vol = self.volumes[b], self.volumes[a]
        regions = (lambda v: v.supervoxels) if source == "supervoxel" else _require_label
        least = self.min_supervoxel_pixels if source == "supervoxel" else self.min_pixels
        counts_q = (regions(query_vol) == value).sum(axis=(1, 2))
        present = np.flatnonzero(counts_q > 0)
        top = bool(rng.random() < 0.5)
        end = present[-1] if top else present[0]
        beyond = [int(end + (d if top else -d)) for d in (1, 2, 3)]
        beyond = [z for z in beyond if 0 <= z < query_vol.depth and counts_q[z] == 0 and self.usable[b][z]]
        if not beyond:
            return None
        query_z = beyond[int(rng.integers(len(beyond)))]
        counts_s = (regions(support_vol) == value).sum(axis=(1, 2))
        cand = np.flatnonzero((counts_s >= max(1, least)) & self.usable[a])
        if a == b:  # the same volume (supervoxel episodes): the slices nearest the query
            order = np.argsort(np.abs(cand - query_z), kind="stable")
        else:       # another volume: the slices nearest the same end of the class there
            order = np.argsort(-cand if top else cand, kind="stable")
        if len(cand) < self.shots:
            return None
        support_z = np.sort(cand[order[:self.shots]]).astype(np.int64)
        support_mask = regions(support_vol)[support_z] == value
        query_mask = np.zeros(query_vol.image.shape[1:], dtype=bool)
        return source, value, a, support_z, b, query_z, support_mask, query_mask

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.n_episodes:
            raise IndexError(f"episode {index} out of range [0, {self.n_episodes})")
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        use_sv = self.supervoxel_prob > 0 and rng.random() < self.supervoxel_prob
        episode = self._supervoxel_episode(rng) if use_sv else self._gt_episode(rng)
        if self.empty_query_prob > 0 and rng.random() < self.empty_query_prob:  # no draw at 0: old streams
            episode = self._past_the_end(episode, rng) or episode
        source, value, a, support_z, b, query_z, s_mask, q_mask = episode
        va, vb = self.volumes[a], self.volumes[b]
        item = {
            "support_pid": [va.pid] * len(support_z),
            "support_z": torch.as_tensor(support_z, dtype=torch.int64),
            "support_mask": torch.from_numpy(s_mask.astype(np.float32)),
            "query_pid": vb.pid,
            "query_z": torch.tensor(query_z, dtype=torch.int64),
            "query_mask": torch.from_numpy(q_mask[None].astype(np.float32)),
            "class_value": int(value),  # label value, or the supervoxel id for supervoxel episodes
            "source": source,
        }
        if self.with_images:
            item["support_image"] = torch.from_numpy(np.ascontiguousarray(va.image[support_z], dtype=np.float32))
            item["query_image"] = torch.from_numpy(np.ascontiguousarray(vb.image[query_z][None], dtype=np.float32))
        return item


EpisodeSampler = EpisodeDataset  # the name docs/ARCHITECTURE.md uses
