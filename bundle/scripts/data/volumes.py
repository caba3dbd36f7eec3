"""Loading volumes into slice space, and mapping slice-space results back to the scanner grid.

Every method of this project works on 2D slices of 256x256 (the field's convention). A `Volume`
holds one scan in *slice space*: arrays `(D, 256, 256)` with the slice axis first, the image min-max
scaled to [-1, 1], labels with their raw values. Rows and columns follow the array order SimpleITK
(and hence SSL-ALPNet and its `classmap_*.json`) uses: for files whose slice axis is 2, a slice is
`file[:, :, z].T` (rows = file axis 1, columns = file axis 0).

Loading uses MONAI's dictionary transforms (LoadImaged, EnsureChannelFirstd, ScaleIntensityd,
Resized, optionally Orientationd), held by a `SliceSpaceTransforms`: the bundle's configs spell
them (`preprocessing`), `default_transforms` is the same list for code without a config. The
resampling steps are recorded as the image's applied operations, kept in `Volume.meta`, so
`to_original_grid` can undo them with MONAI's inverse machinery and a prediction overlays the input
file voxel for voxel. Label-like arrays are resized
with "nearest-exact", which makes an upsample-then-invert round trip exact.

Support and query are brought to one orientation before slicing (`matching_orientation`: the
support's, from the affines, through `Orientationd`), so a query stored in another voxel order is
sliced like the support and mapped back onto its own grid after. `read_header` reads a file's grid
and voxel type without reading a voxel: the check a file of unknown origin gets before loading.

Bad inputs raise `DataError`, whose message starts with the offending file.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    Orientationd,
    Resized,
    ScaleIntensityd,
)
from monai.transforms.utils import convert_applied_interp_mode
from monai.utils import TraceKeys

from .presets import DatasetPreset, get_preset

__all__ = ["DataError", "Volume", "Header", "read_header", "orientation_codes", "matching_orientation",
           "SliceSpaceTransforms", "default_transforms", "in_plane_size", "load_volume", "volume_from_arrays",
           "load_dataset", "list_pids", "to_original_grid", "dataset_folder", "present_values"]

AFFINE_TOLERANCE = 1e-3
MAX_SLICE_ANGLE = 45.0          # degrees between support and query slices that one orientation can still match
THICK_SLICES = 1.5              # a voxel axis this many times coarser than the others is the scan's slice axis
MAX_NIFTI_EXTENSIONS = 16 << 20  # bytes of NIfTI header extensions (read whole by the readers) accepted
_KEYS = ("image", "label", "supervoxels")
_LABEL_KEYS = ("label", "supervoxels")
_LABEL_MODE = "nearest-exact"  # exact inverse of an integer-factor-free upsampling, unlike "nearest"


class DataError(ValueError):
    """A data file is missing, unreadable or inconsistent; the message names the file."""


@dataclass
class Volume:
    """One scan in slice space. `spacing` is (slice, row, col) in mm after the in-plane resize."""

    pid: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float]
    supervoxels: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def depth(self) -> int:
        return int(self.image.shape[0])

    def slices_with(self, value: int, min_pixels: int = 1) -> np.ndarray:
        """Indices of slices holding at least `min_pixels` pixels of label `value`."""
        if self.label is None:
            raise DataError(f"volume {self.pid}: no label loaded")
        counts = (self.label == value).sum(axis=(1, 2))
        return np.flatnonzero(counts >= max(1, min_pixels))


@dataclass(frozen=True)
class Header:
    """A volume file's grid as its header states it: shape (X, Y, Z), RAS affine, voxel type."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    dtype: np.dtype | None  # None where the format's reader does not say it without the data
    single_file: bool = True  # False: a NIfTI header whose voxels are in another file (.hdr/.img)

    @property
    def voxels(self) -> int:
        return int(np.prod(self.shape, dtype=object))


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def read_header(path: str | Path, max_voxels: int | None = None) -> Header:
    """The grid of a 3D single-channel volume file from its header alone: nothing is decompressed
    beyond the header, so a small file that expands huge is refused before it costs memory.

    NIfTI through nibabel (only the fixed header: extensions, which readers load whole, are bounded
    through ``vox_offset``); other formats through SimpleITK's header reader. Raises ``DataError``
    for a missing or unreadable file, another dimensionality, a non-numeric voxel type, or more
    than ``max_voxels`` voxels."""
    import io

    import nibabel as nib
    from nibabel.openers import ImageOpener

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    dtype = None
    try:
        if _is_nifti(path):
            with ImageOpener(str(path)) as stream:
                raw = stream.read(540)
            size = int.from_bytes(raw[:4], "little")
            klass = nib.Nifti2Header if 540 in (size, int.from_bytes(raw[:4], "big")) else nib.Nifti1Header
            header = klass.from_fileobj(io.BytesIO(raw[:klass.sizeof_hdr]))
            shape, dtype = tuple(int(n) for n in header.get_data_shape()), np.dtype(header.get_data_dtype())
            affine, single = np.asarray(header.get_best_affine(), float), header["magic"].item() in (b"n+1", b"n+2")
            if float(header["vox_offset"]) > MAX_NIFTI_EXTENSIONS:
                raise DataError(f"{path}: header extensions of {int(header['vox_offset'])} bytes (at most "
                                f"{MAX_NIFTI_EXTENSIONS} read)")
        else:
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            if reader.GetNumberOfComponents() != 1:
                raise DataError(f"{path}: expected a single-channel image, got {reader.GetNumberOfComponents()} "
                                "components per voxel")
            shape, single = tuple(int(n) for n in reader.GetSize()), True
            matrix = np.asarray(reader.GetDirection(), float).reshape(3, 3) * np.asarray(reader.GetSpacing(), float)
            affine = np.eye(4)
            affine[:3, :3], affine[:3, 3] = matrix, reader.GetOrigin()
            affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # ITK's LPS -> the RAS of nibabel and MONAI
    except DataError:
        raise
    except Exception as error:  # nibabel, ITK and gzip raise many types; all mean "unreadable"
        raise DataError(f"{path}: cannot read the header ({type(error).__name__}: {error})") from None
    if len(shape) < 3 or any(n != 1 for n in shape[3:]) or min(shape[:3], default=0) < 1:
        raise DataError(f"{path}: expected a 3D single-channel image, got array shape {shape}")
    if dtype is not None and dtype.kind not in "biuf":
        raise DataError(f"{path}: voxel type {dtype} is not a number per voxel")
    found = Header(shape[:3], affine, dtype, single)
    if max_voxels is not None and found.voxels > max_voxels:
        raise DataError(f"{path}: {'x'.join(map(str, found.shape))} is {found.voxels} voxels, more than the "
                        f"{max_voxels} allowed")
    return found


def orientation_codes(affine, name: str) -> str:
    """The axis codes (e.g. "LPS") of an affine; ``DataError`` for one without a direction per axis."""
    import nibabel as nib

    matrix = np.asarray(affine, dtype=float)[:3, :3]
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-12:
        raise DataError(f"{name}: its affine is degenerate ({np.round(matrix, 4).tolist()}): the file does not "
                        "say how its voxels lie in space")
    return "".join(nib.aff2axcodes(np.asarray(affine, dtype=float)))


def matching_orientation(support_affine, query_affine, slice_axis: int, support_name: str, query_name: str) -> str:
    """The orientation to read a query in so that its slices meet the support's: the support's axis
    codes. Refuses (``DataError``) a query whose own slices (its thickest voxel axis, where it is
    ``THICK_SLICES`` times thicker than the others) stack along another axis than the support's, a
    query whose axes are all more than ``MAX_SLICE_ANGLE`` degrees from the support's slice
    direction, and affines without a direction per axis."""
    import nibabel as nib

    codes = orientation_codes(support_affine, support_name)
    orientation_codes(query_affine, query_name)
    support_affine, query_affine = np.asarray(support_affine, float), np.asarray(query_affine, float)
    world = nib.orientations.io_orientation(support_affine)[slice_axis, 0]  # the world axis the slices stack along
    axis = int(np.flatnonzero(nib.orientations.io_orientation(query_affine)[:, 0] == world)[0])
    spacing = np.linalg.norm(query_affine[:3, :3], axis=0)
    thick = int(np.argmax(spacing))
    if thick != axis and spacing[thick] >= THICK_SLICES * np.delete(spacing, thick).max():
        raise DataError(f"{query_name}: its slices ({spacing[thick]:.3g} mm apart, voxel axis {thick}) are cut along "
                        f"another plane than the support's (which stack along {codes[slice_axis]}): a scan cut along "
                        "another plane cannot be segmented from this support; label a slice of the query itself")
    normals = [a[:3, i] / np.linalg.norm(a[:3, i]) for a, i in ((support_affine, slice_axis), (query_affine, axis))]
    angle = float(np.degrees(np.arccos(np.clip(abs(np.dot(*normals)), 0.0, 1.0))))
    if angle > MAX_SLICE_ANGLE:
        raise DataError(f"{query_name}: its slices are {angle:.0f} degrees away from the support's once both are in "
                        f"the support's orientation ({codes}); at most {MAX_SLICE_ANGLE:.0f} can be matched: resample "
                        "the query onto the support's orientation, or label a slice of the query itself")
    return codes


def _slice_permutation(slice_axis: int) -> tuple[int, int, int]:
    """File-axis order of slice space: slice axis, then the in-plane axes in reversed (SimpleITK) order."""
    a, b = (ax for ax in range(3) if ax != slice_axis)
    return slice_axis, b, a


def in_plane_size(size: int, slice_axis: int) -> tuple[int, int, int]:
    """``Resized``'s ``spatial_size`` for slices of ``size`` x ``size``: -1 keeps the slice axis."""
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
    spatial = [int(size)] * 3
    spatial[slice_axis] = -1
    return tuple(spatial)


class SliceSpaceTransforms:
    """The MONAI transforms that bring one file to slice space, in the order they run.

    ``read`` (LoadImaged, EnsureChannelFirstd) reads each file on its own, so a failure names it;
    the checks that need two files (a label on its image's grid, integer labels, finite voxels) run
    next, in Python; then ``intensity`` (ScaleIntensityd) and the invertible geometry, recorded and
    undone by ``to_original_grid``: ``orientation`` (given the call's axis codes, e.g. an
    ``Orientationd`` partial, since a query is read in its support's codes, chosen per call from both
    affines; None: the stored orientation) and ``resize`` (Resized in-plane, the slice axis kept).
    The bundle's configs spell these transforms (``preprocessing``); ``default_transforms`` is
    the same list, for the code that loads data without a config."""

    def __init__(self, read: Sequence, intensity: Sequence, resize: Sequence, orientation=None):
        self.read, self.intensity = Compose(list(read)), Compose(list(intensity))
        self.resize, self.orientation = list(resize), orientation

    def geometry(self, axcodes: str | None) -> Compose:
        """The invertible part for one call: orientation to ``axcodes`` (if any), then resize."""
        steps = list(self.resize)
        if axcodes:
            if self.orientation is None:
                raise ValueError("these transforms have no orientation step, so a query cannot be read in "
                                 f"its support's axis codes ({axcodes})")
            steps.insert(0, self.orientation(axcodes=axcodes))
        return Compose(steps)


@functools.lru_cache(maxsize=None)
def default_transforms(slice_axis: int = 2, size: int = 256) -> SliceSpaceTransforms:
    """What ``inference.yaml``'s ``preprocessing`` spells, for the image, its label and supervoxels."""
    spatial = in_plane_size(size, slice_axis)
    return SliceSpaceTransforms(
        read=[LoadImaged(keys=_KEYS, image_only=True, allow_missing_keys=True),
              EnsureChannelFirstd(keys=_KEYS, allow_missing_keys=True)],
        intensity=[ScaleIntensityd(keys="image", minv=-1.0, maxv=1.0)],
        orientation=functools.partial(Orientationd, keys=_KEYS, labels=None, allow_missing_keys=True),
        resize=[Resized(keys="image", spatial_size=spatial, mode="area", allow_missing_keys=True),
                Resized(keys=_LABEL_KEYS, spatial_size=spatial, mode=_LABEL_MODE, allow_missing_keys=True)],
    )


def _read(path: Path, key: str, transforms: SliceSpaceTransforms) -> MetaTensor:
    """Read one file as a channel-first MetaTensor (1, X, Y, Z), naming the file on any failure."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        data = transforms.read({key: str(path)})
    except Exception as err:  # nibabel, ITK and gzip raise many types; all mean "unreadable"
        cause = err
        while cause.__cause__ is not None:  # MONAI wraps the reader's error in "applying transform ..."
            cause = cause.__cause__
        raise DataError(f"{path}: cannot read {key} ({type(cause).__name__}: {cause})") from err
    if not isinstance(data.get(key), MetaTensor):
        raise ValueError(f"the preprocessing's read transforms do not load the key {key!r} (their keys must "
                         f"include it, and end with a channel-first image): {path}")
    data = data[key]
    if data.ndim != 4 or data.shape[0] != 1:
        raise DataError(f"{path}: expected a 3D single-channel image, got array shape {tuple(data.shape[1:])}"
                        f" with {data.shape[0]} channel(s)")
    return data


def _check_pair(name: str, ref: MetaTensor, other: MetaTensor, ref_name: str, check_affine: bool) -> None:
    if tuple(other.shape[1:]) != tuple(ref.shape[1:]):
        raise DataError(f"{name}: shape {tuple(other.shape[1:])} does not match {ref_name} shape {tuple(ref.shape[1:])}")
    if check_affine:
        diff = float(np.abs(np.asarray(other.affine) - np.asarray(ref.affine)).max())
        if diff > AFFINE_TOLERANCE:
            fmt = lambda a: np.round(np.asarray(a, dtype=float)[:3], 4).tolist()  # noqa: E731
            raise DataError(f"{name}: affine differs from the one of {ref_name} by {diff:.4g} "
                            f"(tolerance {AFFINE_TOLERANCE}): {fmt(other.affine)} vs {fmt(ref.affine)}")


def _check_integer(name: str, arr: np.ndarray) -> None:
    if not np.all(np.isfinite(arr)) or np.any(arr != np.rint(arr)):
        raise DataError(f"{name}: label map has non-integer or non-finite values")


def present_values(label: np.ndarray) -> list[int]:
    """Non-zero values of a label map, sorted (bincount: np.unique's sort of every voxel is the slow
    part of loading and of the inferer's checks, ~0.1-0.5 s on a 40-slice volume)."""
    label = np.asarray(label)
    if label.size == 0:
        return []
    lo, hi = int(label.min()), int(label.max())
    if lo >= 0 and hi < 1 << 20 and np.issubdtype(label.dtype, np.integer):
        return [int(v) for v in np.flatnonzero(np.bincount(label.ravel(), minlength=1)) if v != 0]
    return [int(v) for v in np.unique(label) if v != 0]


def _to_volume(pid: str, tensors: dict[str, MetaTensor], names: dict[str, str], slice_axis: int,
               transforms: SliceSpaceTransforms, axcodes: str | None, meta: dict[str, Any]) -> Volume:
    """Validate channel-first tensors, bring them to slice space and record how to invert."""
    image = tensors["image"]
    img_name = names["image"]
    if not torch.isfinite(image).all():
        bad = int((~torch.isfinite(image)).sum())
        raise DataError(f"{img_name}: image has {bad} NaN or infinite voxel(s)")
    if "label" in tensors:
        _check_pair(names["label"], image, tensors["label"], img_name, check_affine=True)
        _check_integer(names["label"], tensors["label"].numpy())
    if "supervoxels" in tensors:
        # SSL-ALPNet wrote its supervoxels with a default affine: only the grid must agree, and the
        # image's affine is the one that describes them.
        _check_pair(names["supervoxels"], image, tensors["supervoxels"], img_name, check_affine=False)
        _check_integer(names["supervoxels"], tensors["supervoxels"].numpy())
        tensors["supervoxels"] = MetaTensor(tensors["supervoxels"].as_tensor(), affine=image.affine.clone())

    if axcodes:  # Orientationd needs a direction per axis: say so rather than fail inside it
        orientation_codes(image.affine, img_name)
    geometry = transforms.geometry(axcodes)
    data = geometry(transforms.intensity(dict(tensors)))
    out = data["image"]
    in_plane = [n for axis, n in enumerate(out.shape[1:]) if axis != slice_axis]
    if in_plane[0] != in_plane[1]:  # a resize that keeps another axis than slice_axis, say
        raise ValueError(f"the preprocessing must resize the slices (axis {slice_axis} kept) to squares; "
                         f"{img_name} came out {tuple(out.shape[1:])} from {tuple(image.shape[1:])}")
    perm = _slice_permutation(slice_axis)
    to_slices = lambda t: np.ascontiguousarray(t.as_tensor()[0].numpy().transpose(perm))  # noqa: E731
    pixdim = np.asarray(out.pixdim, dtype=float)
    ops = copy.deepcopy(out.applied_operations)
    for op in ops:  # the ops are replayed by a fresh Compose in to_original_grid: skip the instance check
        op[TraceKeys.ID] = TraceKeys.NONE
    meta = dict(meta)
    meta.update(
        original_shape=tuple(int(s) for s in image.shape[1:]),
        original_affine=np.asarray(image.affine, dtype=float),
        slice_space_affine=np.asarray(out.affine, dtype=float),
        slice_axis=slice_axis,
        geometry=geometry,  # its orientation (axcodes) and resize, replayed backwards by to_original_grid
        inverse_ops=ops,
    )
    label = supervoxels = None
    if "label" in data:
        label = np.rint(to_slices(data["label"])).astype(np.int32)
        meta["label_values"] = present_values(label)
    if "supervoxels" in data:
        supervoxels = np.rint(to_slices(data["supervoxels"])).astype(np.int32)
    return Volume(
        pid=str(pid),
        image=to_slices(out).astype(np.float32),
        label=label,
        spacing=tuple(float(pixdim[p]) for p in perm),
        supervoxels=supervoxels,
        meta=meta,
    )


def load_volume(image_path: str | Path, label_path: str | Path | None = None,
                supervoxel_path: str | Path | None = None, slice_axis: int = 2, size: int = 256,
                pid: str | None = None, axcodes: str | None = None,
                transforms: SliceSpaceTransforms | None = None) -> Volume:
    """Load one scan (and its label and supervoxels) into slice space.

    `axcodes` (e.g. "RAS") reorients before anything else; the default keeps the stored orientation,
    as the field does. `pid` defaults to the file name's trailing number or stem. `transforms`: a
    config's `preprocessing` (default: `default_transforms(slice_axis, size)`).
    """
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
    paths = {"image": Path(image_path)}
    if label_path is not None:
        paths["label"] = Path(label_path)
    if supervoxel_path is not None:
        paths["supervoxels"] = Path(supervoxel_path)
    transforms = transforms or default_transforms(slice_axis, size)
    tensors = {key: _read(path, key, transforms) for key, path in paths.items()}
    if pid is None:
        stem = paths["image"].name.split(".")[0]
        match = re.search(r"(\d+)$", stem)
        pid = match.group(1) if match else stem
    meta = {f"{key}_path": str(path) for key, path in paths.items()}
    return _to_volume(str(pid), tensors, {k: str(p) for k, p in paths.items()}, slice_axis, transforms, axcodes, meta)


def volume_from_arrays(pid: str, image: np.ndarray, label: np.ndarray | None = None,
                       supervoxels: np.ndarray | None = None, affine: np.ndarray | None = None,
                       slice_axis: int = 2, size: int = 256, axcodes: str | None = None) -> Volume:
    """As `load_volume`, for arrays already in memory (file layout, e.g. X, Y, Z); no disk I/O."""
    affine_t = torch.as_tensor(np.eye(4) if affine is None else np.asarray(affine), dtype=torch.float64)
    tensors, names = {}, {}
    for key, arr in (("image", image), ("label", label), ("supervoxels", supervoxels)):
        if arr is None:
            continue
        arr = np.asarray(arr)
        names[key] = f"<array {key} of volume {pid}>"
        if arr.ndim != 3:
            raise DataError(f"{names[key]}: expected a 3D array, got shape {arr.shape}")
        tensors[key] = MetaTensor(torch.as_tensor(arr.astype(np.float32))[None], affine=affine_t.clone())
    return _to_volume(str(pid), tensors, names, slice_axis, default_transforms(slice_axis, size), axcodes,
                      {"source": "arrays"})


def to_original_grid(label_slices: np.ndarray, volume: Volume) -> np.ndarray:
    """Map a slice-space array (D, 256, 256) back onto the volume's file grid (its original shape).

    Uses the resampling record of `volume` and MONAI's inverse transforms with nearest-exact
    interpolation, so integer labels stay integers and a loaded label comes back unchanged.
    Integer and boolean inputs keep their dtype; float inputs (scores) come back as float32.
    """
    arr = np.asarray(label_slices)
    if "inverse_ops" not in volume.meta:
        raise DataError(f"volume {volume.pid}: no resampling record; load it with load_volume or volume_from_arrays")
    if arr.shape != volume.image.shape:
        raise ValueError(f"volume {volume.pid}: slice-space array has shape {arr.shape}, expected {volume.image.shape}")
    meta = volume.meta
    perm = _slice_permutation(meta["slice_axis"])
    file_order = np.argsort(perm)  # inverse permutation: slice space -> file axes
    tensor = MetaTensor(torch.as_tensor(arr.transpose(file_order).astype(np.float32))[None],
                        affine=torch.as_tensor(meta["slice_space_affine"]))
    tensor.applied_operations = convert_applied_interp_mode(copy.deepcopy(meta["inverse_ops"]), mode=_LABEL_MODE)
    inverted = meta["geometry"].inverse({"image": tensor})["image"]
    out = inverted.as_tensor()[0].numpy() if isinstance(inverted, MetaTensor) else np.asarray(inverted)[0]
    if out.shape != tuple(meta["original_shape"]):  # guards the contract; MONAI should never break it
        raise RuntimeError(f"volume {volume.pid}: inverse gave shape {out.shape}, expected {meta['original_shape']}")
    if arr.dtype == bool:
        return out > 0.5
    if np.issubdtype(arr.dtype, np.integer):
        return np.rint(out).astype(arr.dtype)
    return out.astype(np.float32)


def dataset_folder(root: str | Path, preset: DatasetPreset | str) -> Path:
    """Folder holding the image/label files of `preset` under `root`."""
    preset = get_preset(preset)
    root = Path(root)
    return root / preset.subdir if preset.subdir else root


def _pid_sort_key(pid: str) -> tuple:
    return (0, int(pid), pid) if pid.isdigit() else (1, 0, pid)


def list_pids(root: str | Path, preset: DatasetPreset | str) -> list[str]:
    """Patient ids of every image file of `preset` under `root`, sorted numerically."""
    preset = get_preset(preset)
    folder = dataset_folder(root, preset)
    if not folder.is_dir():
        raise DataError(f"{folder}: dataset folder not found (preset {preset.name!r})")
    head, tail = preset.image_pattern.split("{pid}", 1)
    regex = re.compile(re.escape(head) + r"(.+?)" + re.escape(tail) + r"$")
    pids = [m.group(1) for p in folder.iterdir() if (m := regex.match(p.name))]
    return sorted(pids, key=_pid_sort_key)


def load_dataset(root: str | Path, preset: DatasetPreset | str, pids: Sequence[str | int] | None = None,
                 with_supervoxels: bool = False, labels: dict[str, int] | None = None, min_volumes: int = 1,
                 size: int = 256, axcodes: str | None = None,
                 transforms: SliceSpaceTransforms | None = None) -> list[Volume]:
    """Load the labelled volumes of a dataset, sorted by numeric pid.

    `labels` (default: the preset's) is checked against the data: a value found in no volume means
    the label map does not describe these files, and raises. Fewer than `min_volumes` volumes raises.
    """
    preset = get_preset(preset)
    root = Path(root)
    folder = dataset_folder(root, preset)
    pids = list_pids(root, preset) if pids is None else sorted((str(p) for p in pids), key=_pid_sort_key)
    if len(pids) < max(1, min_volumes):
        raise DataError(f"{folder / preset.image_pattern}: found {len(pids)} volume(s), need at least {max(1, min_volumes)}")
    if with_supervoxels and preset.supervoxel_pattern is None:
        raise DataError(f"{root}: preset {preset.name!r} has no supervoxel_pattern")
    volumes = []
    for pid in pids:
        sv = root / preset.supervoxel_pattern.format(pid=pid) if with_supervoxels else None
        volume = load_volume(folder / preset.image_pattern.format(pid=pid), folder / preset.label_pattern.format(pid=pid),
                             sv, slice_axis=preset.slice_axis, size=size, pid=pid, axcodes=axcodes,
                             transforms=transforms)
        volume.meta["preset"] = preset.name
        volumes.append(volume)
    label_map = preset.labels if labels is None else dict(labels)
    found = set().union(*(v.meta["label_values"] for v in volumes))
    missing = {name: value for name, value in label_map.items() if int(value) not in found}
    if missing:
        raise DataError(f"{folder / preset.label_pattern}: label map names value(s) {missing} found in none of the "
                        f"{len(volumes)} label files (values present: {sorted(found)})")
    return volumes
