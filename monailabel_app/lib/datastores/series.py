"""A volume (any file SimpleITK reads, or a SimpleITK image) as a DICOM series a PACS accepts.

One MR (or CT) instance per slice with the geometry a viewer needs: ImagePositionPatient of every
slice, ImageOrientationPatient, PixelSpacing (row spacing first), SliceThickness and
SpacingBetweenSlices, one Frame of Reference, one study and one series. A volume whose slice axis
runs against the normal of its rows and columns (det(direction) < 0, as many NIfTI files from
radiological conventions) is written with its slices reversed: the same voxels at the same places,
in the order DICOM readers sort them. Used to put phantoms and NIfTI volumes into a PACS for the
app's tests and benchmark, and by anyone who has only NIfTI files and wants them in a PACS.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SOP_CLASSES = {"MR": "1.2.840.10008.5.1.4.1.1.4", "CT": "1.2.840.10008.5.1.4.1.1.2"}


@dataclass
class SeriesInfo:
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    files: list[Path]


def _as_image(volume):
    import SimpleITK as sitk

    return volume if isinstance(volume, sitk.Image) else sitk.ReadImage(str(volume))


def right_handed(image):
    """``image`` with its slice order reversed when its slice axis runs against row x column."""
    import SimpleITK as sitk

    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    if np.linalg.det(direction) > 0:
        return image
    return sitk.Flip(image, [False, False, True], flipAboutOrigin=False)  # voxels keep their positions


def write_series(volume, out_dir: str | Path, patient_id: str, patient_name: str | None = None,
                 modality: str = "MR", study_uid: str | None = None, series_description: str = "",
                 series_number: int = 1, positions: list | None = None) -> SeriesInfo:
    """Write ``volume`` as ``out_dir/<k>.dcm`` (k = 0..depth-1) and return its UIDs.

    ``positions`` (mm, one 3-vector per written slice) replaces the computed ImagePositionPatient
    values; only tests use it, to make a series with a gap."""
    image = right_handed(_as_image(volume))
    array = _stored_array(image)  # (Z, Y, X) = (slice, row, column)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = image.GetSpacing()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    now = datetime.datetime.now()
    window_low, window_high = np.percentile(array, [1, 99]) if array.size else (0, 1)
    files = []
    for k in range(array.shape[0]):
        position = positions[k] if positions is not None else image.TransformIndexToPhysicalPoint((0, 0, k))
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = SOP_CLASSES[modality]
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientID, ds.PatientName = patient_id, patient_name or patient_id
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.StudyDescription = f"{patient_id} study"
        ds.SeriesDescription = series_description or f"{patient_id} {modality}"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, series_number, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientPosition = "HFS"
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [f"{x:.6f}" for x in position]
        ds.ImageOrientationPatient = [f"{x:.6f}" for x in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]  # row spacing, then column spacing
        ds.SliceThickness = ds.SpacingBetweenSlices = f"{spacing[2]:.6f}"
        ds.SliceLocation = f"{float(np.dot(position, direction[:, 2])):.6f}"
        ds.Rows, ds.Columns = array.shape[1], array.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
        ds.WindowCenter = f"{(window_low + window_high) / 2:.1f}"
        ds.WindowWidth = f"{max(window_high - window_low, 1):.1f}"
        ds.PixelData = np.ascontiguousarray(array[k]).tobytes()
        ds.is_little_endian, ds.is_implicit_VR = True, False
        path = out_dir / f"{k:04d}.dcm"
        pydicom.dcmwrite(path, ds, write_like_original=False)
        files.append(path)
    return SeriesInfo(study_uid, series_uid, frame_uid, files)


def _stored_array(image) -> np.ndarray:
    """Voxels as int16 (rounded; the range is checked, never wrapped)."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)
    if array.dtype.kind == "f":
        array = np.rint(array)
    if array.size and (array.min() < -32768 or array.max() > 32767):
        raise ValueError(f"voxel values {array.min()}..{array.max()} do not fit a 16-bit DICOM image")
    return array.astype(np.int16)
