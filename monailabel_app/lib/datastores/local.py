"""MONAI Label's local folder datastore, with what a client sends checked before it is stored.

``PUT /datastore/label`` and ``PUT /datastore`` (add an image) hand ``save_label`` / ``add_image`` of
MONAI Label's ``LocalDatastore`` (the public datastore methods those endpoints call) a client's file
and names, which it copies into the folder as they are. ``CheckedDatastore`` refuses, before
anything is stored:

- a tag or image id that is not a plain name (400): both become paths, and ``../x`` would write
  outside the datastore;
- a label of an unknown image (404);
- an upload that is not one NIfTI file (415; OHIF's raw ``.bin`` labelmap is converted first, as
  MONAI Label's ``/infer`` does) or that holds more than ``max_voxels`` voxels (413, from its header);
- a label that cannot be read, is not on its image's grid (shape, affine), holds non-integer
  values, or, as the ``final`` label, labels nothing (422).

A refused upload is removed at once (MONAI Label removes it only after a call that succeeded).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict

from monailabel.datastore.local import LocalDatastore
from monailabel.datastore.utils.convert import binary_to_image
from monailabel.interfaces.datastore import DefaultLabelTag

from lib.responses import DEFAULT_MAX_VOXELS, check_label_on_image, refusal, volume_header

logger = logging.getLogger(__name__)

PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def plain_name(value, what: str) -> str:
    """``value`` if it can name a file inside the datastore's folder, else 400."""
    if not isinstance(value, str) or not PLAIN_NAME.fullmatch(value) or ".." in value:
        raise refusal(400, f"{what} {str(value)[:80]!r} is not a plain name (letters, digits, '_', '-', '.')",
                      "datastore")
    return value


class CheckedDatastore(LocalDatastore):
    def __init__(self, *args, max_voxels: int | None = DEFAULT_MAX_VOXELS, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_voxels = max_voxels
        self.on_image: Callable[[str], Any] | None = None  # told each image opened, added or labelled (lib/warmup.py)

    def get_image_uri(self, image_id: str) -> str:
        path = super().get_image_uri(image_id)
        if path and self.on_image is not None:
            self.on_image(path)  # cheap: a stat, and a job queued at most once per version of the file
        return path

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        converted, upload = "", label_filename
        try:
            plain_name(label_tag, "label tag")
            image = self.get_image_uri(image_id) if isinstance(image_id, str) else ""
            if not image:
                raise refusal(404, f"image {str(image_id)[:80]!r} is not an image of the datastore", "datastore")
            if "".join(Path(label_filename).suffixes) == ".bin":  # OHIF's raw labelmap on the image's grid
                converted = label_filename = binary_to_image(image, label_filename)
            check_label_on_image(label_filename, image, "the label", self.max_voxels, upload=True,
                                 nonempty=label_tag == DefaultLabelTag.FINAL.value)
            return super().save_label(image_id, label_filename, label_tag, label_info)
        except Exception:
            _remove_upload(upload)
            raise
        finally:
            if converted and os.path.exists(converted):
                os.unlink(converted)

    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        try:
            if image_id:
                plain_name(image_id, "image id")
            volume_header(image_filename, "the image", self.max_voxels, upload=True)
            stored = super().add_image(image_id, image_filename, image_info)
        except Exception:
            _remove_upload(image_filename)
            raise
        self.get_image_uri(stored)  # a new image: warm it (on_image)
        return stored


def _remove_upload(path: str) -> None:
    """Remove a refused upload: a file in the server's own temporary folder (``lib/uploads.py``)."""
    import tempfile

    from lib.uploads import PREFIX

    if isinstance(path, str) and os.path.isfile(path) and Path(tempfile.gettempdir()).name.startswith(PREFIX) \
            and os.path.dirname(os.path.realpath(path)) == os.path.realpath(tempfile.gettempdir()):
        os.unlink(path)
