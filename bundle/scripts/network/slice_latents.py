"""Latents of a volume's slices, encoded when first asked for and kept by the slices' content.

Encoding with TAEF2 is most of a first call's time on the CPU (about 0.15 s a 256x256 slice), and a
call does not always need every slice: a propagated organ needs the slices it walks through, a
kidney a quarter of the volume. ``SliceLatents`` encodes the slices an index asks for that are not
encoded yet (in one batch) and keeps them; ``LatentCache`` keeps the most recently used volumes by
content (any change to the values makes a new key), so a repeated call, another organ of the same
volume, or a volume warmed in the background by the server finds its slices ready.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import Callable

import numpy as np
import torch

Encode = Callable[[torch.Tensor], torch.Tensor]  # (N, 1, H, W) images -> (N, C, h, w) latents


class SliceLatents:
    def __init__(self, images: np.ndarray, encode: Encode, stats: dict):
        self._images: np.ndarray | None = images  # dropped once every slice is encoded
        self._encode = encode
        self._stats = stats
        self._depth = images.shape[0]
        self._rows: torch.Tensor | None = None  # (D, C, h, w), allocated at the first encoding
        self._done = np.zeros(self._depth, dtype=bool)

    def __len__(self) -> int:
        return self._depth

    @property
    def complete(self) -> bool:
        return bool(self._done.all())

    def __getitem__(self, index) -> torch.Tensor:
        """Latents of the slices ``index`` (an int sequence or array; a slice), encoding the missing."""
        rows = np.arange(self._depth)[index] if isinstance(index, slice) else np.asarray(index, dtype=int).reshape(-1)
        if rows.size and (rows.min() < -self._depth or rows.max() >= self._depth):
            raise IndexError(f"slice index out of range for a volume of {self._depth} slices")
        rows %= self._depth
        missing = np.unique(rows[~self._done[rows]])
        if missing.size:
            start = time.perf_counter()
            encoded = self._encode(torch.as_tensor(self._images[missing], dtype=torch.float32)[:, None])
            if self._rows is None:
                self._rows = encoded.new_zeros((self._depth, *encoded.shape[1:]))
            self._rows[torch.as_tensor(missing, device=encoded.device)] = encoded
            self._done[missing] = True
            self._stats["slices_encoded"] += int(missing.size)
            self._stats["encode_s"] += time.perf_counter() - start
            if self.complete:
                self._images = None
        return self._rows[torch.as_tensor(rows, device=self._rows.device)]

    def all(self) -> torch.Tensor:
        return self[np.arange(self._depth)]


class LatentCache:
    def __init__(self, size: int = 8):
        self.size = size
        self._entries: OrderedDict[str, SliceLatents] = OrderedDict()
        # volumes found / added; slices encoded and the seconds it took
        self.stats = {"hits": 0, "misses": 0, "slices_encoded": 0, "encode_s": 0.0}

    @staticmethod
    def key(images: np.ndarray) -> str:
        return hashlib.blake2b(np.ascontiguousarray(images, dtype=np.float32).tobytes(), digest_size=16).hexdigest()

    def _kept(self, key: str) -> SliceLatents | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self.stats["hits"] += 1
        return entry

    def peek(self, images: np.ndarray) -> SliceLatents | None:
        """This volume's entry if it is kept (nothing is encoded)."""
        return self._kept(self.key(images))

    def get(self, images: np.ndarray, encode: Encode) -> SliceLatents:
        """This volume's entry, made (empty: slices encode when asked for) if it is not kept."""
        key = self.key(images)
        entry = self._kept(key)
        if entry is None:
            self.stats["misses"] += 1
            entry = self._entries[key] = SliceLatents(np.array(images, dtype=np.float32), encode, self.stats)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return entry

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
