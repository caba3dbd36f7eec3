"""The model the app serves: which file (the configured checkpoint, or the app's own fine-tuned
model), and the segmenter built from it.

Fine-tuning (``POST /train/fewshot``, ``lib/trainers``) never writes over the configured checkpoint
(``--conf checkpoint``, by default the repository's shipped ``bundle/models/model.pt``). It writes
into the app's training folder (``--conf train_dir``, default ``<app>/model/fewshot``):

- ``model.pt``: the fine-tuned model being served, replaced by one rename (a reader sees the old
  file or the new one, never a part);
- ``model.previous.pt``: the model it replaced (the way back: rename it to ``model.pt``, or delete
  both to serve the configured checkpoint again);
- ``model.json``: what ``model.pt`` was trained from, when, and the validation that let it serve.

``model.pt`` serves only while ``model.json`` says it was trained from the configured checkpoint as
it is now (same file, size and modification time): a server started on another checkpoint, or on a
new version of it, serves that checkpoint, not a fine-tuning of something else.

``FewShotModel`` builds the segmenter from the file serving now, once per device, and again when
that file changes (a promotion), so a fine-tuned model serves from the next call on without a restart.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

from lib.responses import task_refusal
from scripts.network.autoencoders import WeightsError
from scripts.network.presets import build_segmenter

logger = logging.getLogger(__name__)

SLOW_NOTE = ("With the 'sd15' preset on a CPU one call takes a minute or more (about 7 TFLOP of "
             "U-Net per 40-slice volume); the 'compact' preset takes seconds.")


def file_identity(path: str | os.PathLike) -> dict | None:
    """What tells one version of a file from another: its resolved path, size and modification time."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return {"path": os.path.realpath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _write_atomically(target: Path, write) -> None:
    """``write(tmp)`` then one rename over ``target``, flushed to disk first."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copyfile(source, target)


class ServedModel:
    """The configured checkpoint (``base``) and the training folder (``folder``) that may hold a
    fine-tuned model of it; ``path()`` is the file to load now."""

    def __init__(self, base: str | os.PathLike, folder: str | os.PathLike):
        self.base = str(base)
        self.folder = Path(folder)
        self.trained = self.folder / "model.pt"
        self.previous = self.folder / "model.previous.pt"
        self.record_file = self.folder / "model.json"

    def record(self) -> dict:
        try:
            return json.loads(self.record_file.read_text())
        except (OSError, ValueError):
            return {}

    def path(self) -> str:
        """The fine-tuned model where it was trained from the configured checkpoint as it is, else the checkpoint."""
        if self.trained.is_file() and self.record().get("trained_from") == file_identity(self.base):
            return str(self.trained)
        return self.base

    def promote(self, new_model: str | os.PathLike, record: dict) -> None:
        """Serve ``new_model`` (copied in); the model served until now, if fine-tuned, becomes
        ``model.previous.pt``. Each file changes by one rename."""
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {**record, "trained_from": file_identity(self.base), "promoted": time.strftime("%Y-%m-%d %H:%M:%S")}
        _write_atomically(self.record_file, lambda tmp: tmp.write_text(json.dumps(record, indent=2)))
        if self.trained.is_file():
            _write_atomically(self.previous, lambda tmp: _link_or_copy(self.trained, tmp))
        _write_atomically(self.trained, lambda tmp: shutil.copyfile(new_model, tmp))
        logger.info(f"few-shot: now serving {self.trained} (the previous one kept as {self.previous.name})")


class FewShotModel:
    """The segmenter, built from the file ``locate`` names (``ServedModel.path``) on first use per
    device and rebuilt when that file changes. ``lock`` serialises its use: its latent cache and
    propagation memo are shared by every call and by the warm-up (``lib/warmup.py``)."""

    def __init__(self, checkpoint: str | Path, keys: dict | None = None, locate: Callable[[], str] | None = None):
        self.checkpoint = str(checkpoint)  # the configured one; ``locate`` says which file serves now
        self.locate = locate or (lambda: self.checkpoint)
        self.keys = {k: v for k, v in (keys or {}).items() if v is not None}
        self.lock = threading.RLock()
        self._built: dict[str, tuple[Any, tuple]] = {}

    def get(self, device: str):
        with self.lock:
            path = self.locate()
            try:
                version = (path, os.stat(path).st_mtime_ns)
            except OSError:
                version = (path, None)
            cached = self._built.get(device)
            if cached is not None and cached[1] == version:
                return cached[0]
            start = time.time()
            try:
                segmenter = build_segmenter(checkpoint=path, device=device, **self.keys)
            except (WeightsError, ValueError) as error:
                raise task_refusal(424, f"the few-shot model cannot be loaded: {error}. Train one "
                                        "(POST /train/fewshot) or start the server with --conf checkpoint <file>") from None
            segmenter.eval()
            preset = segmenter.config.preset
            logger.info(f"few-shot model: preset '{preset}', autoencoder '{segmenter.config.autoencoder}', "
                        f"device {device}, loaded from {path} in {time.time() - start:.1f}s")
            if preset == "sd15" and str(device).startswith("cpu"):
                logger.warning(SLOW_NOTE)
            self._built[device] = (segmenter, version)
            return segmenter
