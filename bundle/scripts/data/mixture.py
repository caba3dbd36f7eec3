"""Episodes of several datasets in one training: each episode comes from one dataset.

`EpisodeMixture` holds one `EpisodeDataset` per dataset (each with its own volumes and label
values, so label 1 is liver in CHAOST2 and nothing in CMR) and draws, for item i of an epoch, which
dataset it comes from; the episode is then that dataset's item i. A support and its query are
therefore always from the same dataset. The draw uses its own random stream of (seed, epoch, i), so
items are reproducible, `set_epoch` gives new ones, and a dataset's item i is the very episode it
would give alone.

Proportion: by default each dataset is drawn in proportion to its number of training classes.
Within one dataset a "gt" episode picks its class uniformly, so this makes every class of every
dataset about equally frequent, as if all the classes were one dataset's; equal shares would favour
the classes of the dataset with fewer classes, and shares by slice count would favour the dataset
with the thickest stacks rather than the most anatomy. `weights` overrides it.

Not torch's ConcatDataset plus a WeightedRandomSampler: the sampler would draw from torch's global
generator rather than from (seed, epoch, i), and it would take the sampler slot that
multi_gpu_train.yaml gives to DistributedSampler.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch.utils.data import Dataset

from .episodes import EpisodeDataset

__all__ = ["EpisodeMixture"]

_STREAM = 1  # appended to (seed, epoch, i): the dataset draw never reuses an episode's own random numbers


class EpisodeMixture(Dataset):
    """Map-style episodes drawn from several `EpisodeDataset`s; items gain `dataset` (its name).

    Args:
        parts: one EpisodeDataset per dataset, each with at least `n_episodes` items.
        names: a name per part (distinct). n_episodes: `len(self)`. seed: with the epoch and index, fixes an item.
        weights: relative share of each part (default: its number of training classes, see the module docstring).
    """

    def __init__(self, parts: Sequence[EpisodeDataset], names: Sequence[str], n_episodes: int, seed: int = 0,
                 weights: Sequence[float] | None = None):
        if not parts or len(parts) != len(names):
            raise ValueError(f"one name per dataset: {len(parts)} part(s), {len(names)} name(s)")
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names must be distinct, got {list(names)}")
        if n_episodes < 1 or any(len(part) < n_episodes for part in parts):
            raise ValueError(f"every part needs >= n_episodes = {n_episodes} items: {[len(p) for p in parts]}")
        if weights is None:
            weights = [max(1, len(part.train_values)) for part in parts]
        weights = np.asarray(weights, dtype=float)
        if weights.shape != (len(parts),) or not np.isfinite(weights).all() or (weights < 0).any() or not weights.sum():
            raise ValueError(f"weights: one non-negative number per dataset, not all zero; got {weights.tolist()}")
        self.parts, self.names = list(parts), [str(n) for n in names]
        self.shares = weights / weights.sum()
        self.n_episodes, self.seed, self.epoch = int(n_episodes), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """Draw a different set of episodes (same seed and epoch: same episodes)."""
        self.epoch = int(epoch)
        for part in self.parts:
            part.set_epoch(epoch)

    def __len__(self) -> int:
        return self.n_episodes

    def part_of(self, index: int) -> int:
        """Which dataset item `index` of the current epoch comes from."""
        rng = np.random.default_rng([self.seed, self.epoch, int(index), _STREAM])
        return int(rng.choice(len(self.parts), p=self.shares))

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.n_episodes:
            raise IndexError(f"episode {index} out of range [0, {self.n_episodes})")
        k = self.part_of(index)
        return {**self.parts[k][index], "dataset": self.names[k]}
