"""What the app's tasks and datastores share when they answer a request or write a label file.

The few-shot task (``lib.infers``) imports the PACS datastore (``lib.datastores``), so what both use
lives here, below them.
"""

from __future__ import annotations

import logging
import os
import threading

import numpy as np
from fastapi import HTTPException

logger = logging.getLogger(__name__)


def refusal(status: int, message: str, who: str) -> HTTPException:
    """The HTTP error a refused request answers with, logged once with ``who`` refused it."""
    logger.warning(f"{who} request refused ({status}): {message}")
    return HTTPException(status_code=status, detail=message)


def write_label_like(array: np.ndarray, reference, path: str | os.PathLike, dtype=np.int32) -> None:
    """Write the labelmap ``array`` (X, Y, Z) with the geometry of the SimpleITK image ``reference``.

    The file appears whole or not at all: it is written beside ``path`` and renamed over it, so a
    reader (the datastore, a client fetching it) never sees half a file."""
    import SimpleITK as sitk

    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)).astype(dtype))
    image.CopyInformation(reference)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp.nii.gz"
    try:
        sitk.WriteImage(image, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
