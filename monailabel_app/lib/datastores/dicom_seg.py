"""DICOM SEG in and out, on the grid of the series it belongs to.

``read_seg`` turns a SEG (what OHIF saves, or any binary/fractional SEG) into a label volume on the
voxel grid of its source series: every frame is placed by its ImagePositionPatient, and a frame that
does not lie on a slice of the series, or a SEG with another orientation or pixel spacing, is
refused with the reason (``SegError``). Segment numbers become label values and SegmentLabel their
names. ``write_seg`` does the opposite for a result, through pydicom-seg's writer, with two fixes
that writer needs: the SEG keeps the series' Frame of Reference (pydicom-seg 0.4 draws a new one,
which viewers then refuse to overlay), and every segment of the support is declared, even one the
result left empty, so that segment numbers stay the support's label values.

Arrays here are in the file order of the series' SimpleITK image: (X, Y, Z) = (column, row, slice).
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import pydicom
from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
ALGORITHM_NAME = "SD-FSMIS"  # marks the SEGs this app writes (they are never taken as a user's label)
TOLERANCE_MM = 0.05


class SegError(ValueError):
    """The SEG cannot be used as a label of this series (the message says why)."""


def referenced_series(ds: Dataset) -> str | None:
    items = ds.get("ReferencedSeriesSequence") or []
    return str(items[0].SeriesInstanceUID) if items and "SeriesInstanceUID" in items[0] else None


def segment_names(ds: Dataset) -> dict[int, str]:
    return {int(s.SegmentNumber): str(s.get("SegmentLabel") or f"segment_{int(s.SegmentNumber)}")
            for s in ds.get("SegmentSequence") or []}


def is_ours(ds: Dataset) -> bool:
    """Written by this app's inference (an unedited result), not drawn by a user."""
    segments = ds.get("SegmentSequence") or []
    return bool(segments) and all(str(s.get("SegmentAlgorithmName", "")) == ALGORITHM_NAME
                                  and str(s.get("SegmentAlgorithmType", "")) == "AUTOMATIC" for s in segments)


def _frame_item(ds: Dataset, index: int, name: str):
    """The functional group ``name`` of frame ``index`` (per-frame first, then shared)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    for group in ([per_frame[index]] if index < len(per_frame) else []) + list(shared[:1]):
        if name in group and group[name].value:
            return group[name].value[0]
    raise SegError(f"frame {index + 1} of the SEG has no {name}")


def read_seg(ds: Dataset, reference) -> tuple[np.ndarray, dict[int, str]]:
    """(label array (X, Y, Z) on the grid of ``reference``, a SimpleITK image of the source series;
    {value: name} of the segments that have pixels). Overlapping segments: the higher number wins."""
    if str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS and str(ds.get("Modality", "")) != "SEG":
        raise SegError(f"not a DICOM SEG (SOP class {ds.get('SOPClassUID', '?')}, modality {ds.get('Modality', '?')})")
    frames = int(ds.get("NumberOfFrames", 0) or 0)
    size = reference.GetSize()
    direction = np.asarray(reference.GetDirection()).reshape(3, 3)
    spacing = np.asarray(reference.GetSpacing())
    out = np.zeros(size, dtype=np.int32)
    if frames == 0:
        return out, {}
    pixels = ds.pixel_array.reshape(frames, int(ds.Rows), int(ds.Columns))
    cutoff = 0
    if str(ds.get("SegmentationType", "BINARY")) == "FRACTIONAL":
        cutoff = int(ds.get("MaximumFractionalValue", 255)) / 2
    present: set[int] = set()
    order = sorted(range(frames), key=lambda i: int(_frame_item(ds, i, "SegmentIdentificationSequence").ReferencedSegmentNumber))
    for i in order:
        segment = int(_frame_item(ds, i, "SegmentIdentificationSequence").ReferencedSegmentNumber)
        orientation = np.asarray(_frame_item(ds, i, "PlaneOrientationSequence").ImageOrientationPatient, float)
        if not np.allclose(orientation, np.concatenate([direction[:, 0], direction[:, 1]]), atol=1e-3):
            raise SegError(f"the SEG's planes are oriented {orientation.round(4).tolist()}, the series' "
                           f"{np.concatenate([direction[:, 0], direction[:, 1]]).round(4).tolist()}: "
                           "it was drawn on another series or a reformatted view")
        row_col = np.asarray(_frame_item(ds, i, "PixelMeasuresSequence").PixelSpacing, float)
        if not np.allclose(row_col, [spacing[1], spacing[0]], rtol=1e-3, atol=1e-4):
            raise SegError(f"the SEG's pixel spacing {row_col.tolist()} mm differs from the series' "
                           f"{[round(spacing[1], 4), round(spacing[0], 4)]} mm")
        position = [float(x) for x in _frame_item(ds, i, "PlanePositionSequence").ImagePositionPatient]
        index = np.asarray(reference.TransformPhysicalPointToContinuousIndex(position))
        nearest = np.rint(index).astype(int)
        if np.any(np.abs((index - nearest) * spacing) > TOLERANCE_MM) or not 0 <= nearest[2] < size[2] \
                or nearest[0] < 0 or nearest[1] < 0 \
                or nearest[0] + int(ds.Columns) > size[0] or nearest[1] + int(ds.Rows) > size[1]:
            raise SegError(f"frame {i + 1} of the SEG (segment {segment}) lies at {np.round(position, 2).tolist()} mm, "
                           "which is not on a slice of the series")
        mask = pixels[i].T > cutoff  # (rows, columns) -> (X, Y)
        if mask.any():
            x, y, z = nearest
            plane = out[x:x + mask.shape[0], y:y + mask.shape[1], z]
            plane[mask] = segment
            present.add(segment)
    names = segment_names(ds)
    return out, {value: names.get(value, f"segment_{value}") for value in sorted(present)}


def write_seg(label: np.ndarray, reference, source_datasets: list[Dataset], names: dict[int, str],
              algorithm_type: str = "AUTOMATIC", description: str = "SD-FSMIS few-shot") -> Dataset:
    """A SEG of ``label`` (X, Y, Z on the grid of ``reference``, the series' SimpleITK image) that
    references ``source_datasets`` (the series' instances, headers suffice). ``names`` {value: name}
    declares the segments (every value of ``label`` must be named). ``algorithm_type`` AUTOMATIC marks
    a result of this app, MANUAL a user's saved label."""
    import pydicom_seg
    import SimpleITK as sitk

    values = sorted({int(v) for v in names} | {int(v) for v in np.unique(label) if v != 0})
    if not values or not np.any(label):
        raise SegError("the label is empty: a SEG needs at least one labelled voxel")
    if values[0] < 1 or values[-1] > 65535:
        raise SegError(f"label values must be 1..65535 to be SEG segment numbers, got {values[0]}..{values[-1]}")
    automatic = algorithm_type == "AUTOMATIC"
    segments = [{
        "labelID": value,
        "SegmentLabel": names.get(value, f"segment_{value}")[:64],
        "SegmentDescription": names.get(value, f"segment_{value}")[:64],
        "SegmentAlgorithmType": algorithm_type,
        **({"SegmentAlgorithmName": ALGORITHM_NAME} if automatic else {}),
        "SegmentedPropertyCategoryCodeSequence": {"CodeValue": "123037004", "CodingSchemeDesignator": "SCT",
                                                  "CodeMeaning": "Anatomical Structure"},
        "SegmentedPropertyTypeCodeSequence": {"CodeValue": "78961009", "CodingSchemeDesignator": "SCT",
                                              "CodeMeaning": names.get(value, f"segment_{value}")[:64]},
        "recommendedDisplayRGBValue": _colour(value),
    } for value in values]
    template = pydicom_seg.template.from_dcmqi_metainfo({
        "ContentCreatorName": "SD-FSMIS" if automatic else "Reader1",
        "ClinicalTrialSeriesID": "Session1", "ClinicalTrialTimePointID": "1",
        "SeriesDescription": description[:64], "SeriesNumber": "300", "InstanceNumber": "1",
        "segmentAttributes": [segments], "ContentLabel": "SEGMENTATION",
        "ContentDescription": description[:64], "BodyPartExamined": "",
    })
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(label).transpose(2, 1, 0)).astype(np.uint16))
    image.CopyInformation(reference)
    writer = pydicom_seg.MultiClassWriter(template=template, inplane_cropping=False, skip_empty_slices=True,
                                          skip_missing_segment=False)
    frame_of_reference = str(source_datasets[0].FrameOfReferenceUID)
    # copies: pydicom-seg shares data elements with its reference dataset, then changes them
    ds = writer.write(image, [copy.deepcopy(d) for d in source_datasets])
    ds.FrameOfReferenceUID = frame_of_reference  # pydicom-seg replaces it with a new one
    written = {int(s.SegmentNumber) for s in ds.SegmentSequence}
    declared = {int(s.SegmentNumber): s for s in template.SegmentSequence}
    ds.SegmentSequence = pydicom.Sequence([ds_segment for ds_segment in ds.SegmentSequence]
                                          + [declared[v] for v in values if v not in written])
    ds.SegmentSequence = pydicom.Sequence(sorted(ds.SegmentSequence, key=lambda s: int(s.SegmentNumber)))
    ds.Manufacturer = "MONAI Label SD-FSMIS app" if automatic else ds.get("Manufacturer", "")
    return ds


def _colour(value: int) -> list[int]:
    palette = [(221, 130, 101), (144, 238, 144), (111, 184, 210), (157, 108, 162), (250, 250, 210),
               (244, 214, 49), (255, 99, 71), (0, 151, 206)]
    return list(palette[(value - 1) % len(palette)])
