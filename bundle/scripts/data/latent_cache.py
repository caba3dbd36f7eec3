"""Image latents of every slice of a dataset, encoded once per autoencoder and kept on disk.

Encoding is the expensive step on a CPU (TAEF2 ~0.2-0.3 s per slice), so training and evaluation
read latents from here and augment them in latent space. Files are keyed by the autoencoder and a
content hash of each volume's slice-space image, so a changed image or another autoencoder never
reads a stale entry. The cache folder may vanish between sessions: missing entries are rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)


def volume_key(image: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(image, dtype=np.float32).tobytes(), digest_size=12).hexdigest()


class LatentCache:
    """pid -> (D, C, h, w) float32 latents of a list of volumes; ``None`` folder = memory only.

    Pids must be unique across the volumes added: a second dataset's are namespaced ("cmr:1",
    ``experiment.namespaced``); a pid added again with another image is an error, not a stale read."""

    def __init__(self, encode, autoencoder_name: str, folder: str | Path | None = None, chunk: int = 16):
        self.encode = encode
        self.autoencoder_name = autoencoder_name
        self.folder = Path(folder) / autoencoder_name if folder else None
        self.chunk = chunk
        self.latents: dict[str, torch.Tensor] = {}
        self.keys: dict[str, str] = {}  # pid -> content hash of the image it was added with

    def add_volumes(self, volumes) -> "LatentCache":
        for volume in volumes:
            key = volume_key(volume.image)
            if volume.pid in self.keys and self.keys[volume.pid] != key:
                raise ValueError(f"latent cache: pid {volume.pid!r} was added with another image; pids of "
                                 "different datasets must be namespaced (e.g. 'cmr:1')")
            if volume.pid not in self.latents:
                self.latents[volume.pid] = self._load_or_encode(volume, key)
                self.keys[volume.pid] = key
        return self

    def _load_or_encode(self, volume, key: str) -> torch.Tensor:
        # an extra dataset's pid is "<dataset>:<pid>"; ':' is no file-name character on every system
        name = str(volume.pid).replace(":", "-")
        path = self.folder / f"{name}_{key}.pt" if self.folder else None
        if path is not None and path.is_file():
            try:
                return torch.load(path, map_location="cpu", weights_only=True).float()
            except Exception as error:  # a torn file from a killed run: rebuild it
                logger.warning("latent cache entry %s unreadable (%s); re-encoding", path, error)
        images = torch.as_tensor(volume.image, dtype=torch.float32)[:, None]
        with torch.no_grad():
            latents = torch.cat([self.encode(part).cpu() for part in images.split(self.chunk)])
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")  # ranks of a DDP run may write the same entry
            torch.save(latents.half() if self.autoencoder_name != "unshuffle" else latents, tmp)
            tmp.replace(path)
        return latents

    def slices(self, pids, zs) -> torch.Tensor:
        """Latents of the given (pid, z) pairs, stacked."""
        return torch.stack([self.latents[pid][int(z)] for pid, z in zip(pids, zs)])
