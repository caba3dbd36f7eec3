"""What the app's tasks and datastores share when they answer a request, read a volume of unknown
origin or write a label file.

What the few-shot task (``lib.infers``, ``lib.supports``) and the datastores (``lib.datastores``) both
use lives here and in the other modules below them (``lib.request_params``, ``lib.labelmaps``), so
neither side imports the other. Every volume the app reads is first judged by its header alone
(``volume_header``): a file that would expand past ``max_voxels`` is refused before a voxel is
decompressed, and an upload must be one self-contained NIfTI file (formats whose header names a
separate data file could point anywhere on the server). Error bodies never carry server paths:
``refusal`` shortens every absolute path in a message to its file name.
"""

from __future__ import annotations

import logging
import os
import re
import threading

import numpy as np
from fastapi import HTTPException

logger = logging.getLogger(__name__)

DEFAULT_MAX_VOXELS = 512 * 512 * 512  # one volume (image or label); about 0.5 GB as float32
_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s'\"`,;:()\[\]{}<>/]+/)+([^\s'\"`,;:()\[\]{}<>/]+)")


def without_paths(message: str) -> str:
    """``message`` with every absolute path shortened to its file name (URLs are kept)."""
    return _PATH.sub(lambda match: match.group(1), message)


def refusal(status: int, message: str, who: str) -> HTTPException:
    """The HTTP error a refused request answers with, logged once (with paths) with ``who`` refused
    it; the answer itself names files but shows no server path."""
    logger.warning(f"{who} request refused ({status}): {message}")
    return HTTPException(status_code=status, detail=without_paths(message))


def task_refusal(status: int, message: str) -> HTTPException:
    """A ``refusal`` by the few-shot task."""
    return refusal(status, message, "few-shot")


def volume_header(path: str, what: str, max_voxels: int | None, upload: bool = False):
    """The header (``scripts.data.volumes.Header``) of a volume the app is about to read, or the
    refusal: 422 unreadable or not one 3D single-channel volume, 415 an upload that is not one
    NIfTI file, 413 more than ``max_voxels`` voxels. ``what`` names the file in the message."""
    from scripts.data.volumes import DataError, read_header

    try:
        header = read_header(path)
    except DataError as error:
        detail = str(error).removeprefix(f"{path}: ")
        raise refusal(422, f"{what}: {detail}", "few-shot") from None
    if upload and not (str(path).lower().endswith((".nii", ".nii.gz")) and header.single_file):
        raise refusal(415, f"{what}: upload one NIfTI file (.nii or .nii.gz); other formats are not read from uploads",
                      "few-shot")
    if max_voxels is not None and header.voxels > max_voxels:
        raise refusal(413, f"{what}: {'x'.join(map(str, header.shape))} is {header.voxels} voxels, more than the "
                           f"{max_voxels} this server reads (--conf max_voxels)", "few-shot")
    return header


def read_label(path: str, what: str = "the label", max_voxels: int | None = DEFAULT_MAX_VOXELS,
               upload: bool = False) -> tuple[np.ndarray, object]:
    """A label file as an integer array in the file's voxel order (X, Y, Z), and its SimpleITK image;
    its header is judged first (``volume_header``)."""
    import SimpleITK as sitk

    volume_header(path, what, max_voxels, upload)
    try:
        image = sitk.ReadImage(str(path))
    except Exception as error:
        raise refusal(422, f"cannot read {what} ({error})".strip(), "few-shot") from None
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() != 3:
        raise refusal(422, f"{what} must be one 3D labelmap; got a {image.GetDimension()}D image with "
                           f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel", "few-shot")
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # SimpleITK gives (Z, Y, X)
    if array.dtype.kind == "f" and (not np.all(np.isfinite(array)) or np.any(array != np.rint(array))):
        raise refusal(422, f"{what} has non-integer values: upload a labelmap, not an image", "few-shot")
    return array.astype(np.int32), image


def check_label_on_image(label_path: str, image_path: str, what: str, max_voxels: int | None,
                         upload: bool = False, nonempty: bool = False) -> np.ndarray:
    """Read a label and check it lies on its image's grid (shape and affine from the image's header),
    and, with ``nonempty``, that it labels something; returns the array (X, Y, Z)."""
    from scripts.data.volumes import AFFINE_TOLERANCE

    image = volume_header(image_path, "the image", max_voxels)
    label_header = volume_header(label_path, what, max_voxels, upload)
    if label_header.shape != image.shape:
        raise refusal(422, f"{what}: its shape {label_header.shape} does not match the image's {image.shape}; a label "
                           "must be drawn on the image's own grid", "few-shot")
    if np.abs(label_header.affine - image.affine).max() > AFFINE_TOLERANCE:
        raise refusal(422, f"{what}: its affine differs from the image's: a label must be drawn on the image's own "
                           "grid (same origin, spacing and directions)", "few-shot")
    array, _ = read_label(label_path, what, max_voxels, upload)
    if nonempty and not array.any():
        raise refusal(422, f"{what} is empty (every voxel 0): draw the organ on at least one slice", "few-shot")
    return array


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
