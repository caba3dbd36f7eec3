"""Which slices of an image the few-shot task filled itself, so that they do not come back as shots.

A user who accepts a prediction untouched saves it as the image's label; learning from those slices
again would feed the model its own answers. So the task records, per image, a digest of every
organ's mask on every slice it predicted (``RecordPredictionsd``, after each call), and the support
(``lib/supports.py``) leaves out a labelled slice whose organs all still match that record
(``PredictionRecord.untouched``); a slice the user edited or drew is a shot. Limits: only this
server's predictions are recorded; the decision is per slice; a record is dropped when the image
file changes. One small JSON file per image, in ``--conf prediction_record_dir``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

import numpy as np

from lib.labelmaps import slices_first

logger = logging.getLogger(__name__)


def slice_digests(plane: np.ndarray, names: dict[int, str]) -> dict[str, str]:
    """{organ name: digest of its mask} for the organs of ``names`` on one slice."""
    out = {}
    for value, name in names.items():
        mask = plane == value
        if mask.any():
            out[name] = hashlib.blake2b(np.packbits(mask).tobytes() + str(mask.shape).encode(), digest_size=12).hexdigest()
    return out


class PredictionRecord:
    """Per image, the organ masks of the slices this task predicted: ``{slice: {organ: digest}}``,
    kept as one small JSON file per image, dropped when the image file changes."""

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder else None  # None: nothing remembered
        self._lock = threading.Lock()

    def _file(self, image_path: str) -> Path:
        key = hashlib.sha1(os.path.realpath(image_path).encode()).hexdigest()[:20]
        return self.folder / f"{key}.json"

    @staticmethod
    def _stamp(image_path: str) -> list:
        stat = os.stat(image_path)
        return [os.path.realpath(image_path), stat.st_size, stat.st_mtime_ns]

    def load(self, image_path: str) -> dict[int, dict[str, str]]:
        if self.folder is None:
            return {}
        try:
            stored = json.loads(self._file(image_path).read_text())
            if stored.get("image") != self._stamp(image_path):
                return {}
            return {int(z): masks for z, masks in stored["slices"].items()}
        except (OSError, ValueError, KeyError):
            return {}

    def untouched(self, image_path: str, label: np.ndarray, names: dict[int, str], slices) -> list[int]:
        """Labelled slices (of ``label``, slice axis first) whose organs (of ``names``) all match
        what this task predicted there."""
        record = self.load(image_path)
        if not record:
            return []
        out = []
        for z in slices:
            masks = slice_digests(label[z], names)
            known = record.get(int(z), {})
            if masks and all(known.get(name) == digest for name, digest in masks.items()):
                out.append(int(z))
        return out

    def update(self, image_path: str, label: np.ndarray, names: dict[int, str], drawn) -> int:
        """Record the predicted slices (all but ``drawn``) of ``label`` (slice axis first) for the organs of ``names``;
        entries of other organs stay. Returns the number of slices recorded."""
        if self.folder is None:
            return 0
        drawn = {int(z) for z in drawn}
        with self._lock:
            record = self.load(image_path)
            for masks in record.values():
                for name in names.values():
                    masks.pop(name, None)
            count = 0
            for z in range(label.shape[0]):
                if z in drawn:
                    continue
                masks = slice_digests(label[z], names)
                if masks:
                    record.setdefault(z, {}).update(masks)
                    count += 1
            record = {z: masks for z, masks in record.items() if masks}
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                target = self._file(image_path)
                tmp = target.with_suffix(f".{threading.get_ident()}.tmp")
                tmp.write_text(json.dumps({"image": self._stamp(image_path), "slices": record}))
                tmp.replace(target)
            except OSError as error:  # e.g. a read-only datastore: the result still goes back
                logger.warning(f"cannot remember the predicted slices in {self.folder}: {error}")
                return 0
        return count


class RecordPredictionsd:
    """Post-transform: remembers which slices of a datastore image this call predicted, so that a
    later support made from them does not count them as drawn."""

    def __init__(self, record: PredictionRecord, slice_axis: int = 2):
        self.record = record
        self.slice_axis = slice_axis

    def __call__(self, data: dict) -> dict:
        if data.get("fewshot_query_id") is None:
            return data  # a scan uploaded with the request: nothing to remember it by
        names = {v: n for n, v in data["support"].labels.items()}
        drawn = data["result"]["support"]["drawn_slices"]
        self.record.update(data["image"], slices_first(np.asarray(data["pred"]), self.slice_axis), names, drawn)
        return data
