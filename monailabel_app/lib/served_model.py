"""Which model file the app serves: the configured checkpoint, or the app's own fine-tuned model.

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
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

logger = logging.getLogger(__name__)


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
