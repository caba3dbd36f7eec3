"""A PACS (any DICOMweb server: Orthanc, dcm4chee, Google/Azure DICOM) as the app's datastore.

MONAI Label's ``DICOMWebDatastore`` lists the series, downloads them and converts them to NIfTI;
this subclass makes the few-shot task work there, without touching the task's own logic:

- **labels are DICOM SEGs in the PACS.** The ``final`` label of a series is the newest SEG that
  references it and was drawn by a person (OHIF's SEG export or MONAI Label panel, Slicer, or
  ``PUT /datastore/label``); SEGs this app wrote as results are skipped, so an unedited result is
  never taken as the user's label. The SEG is read onto the series' own voxel grid
  (``dicom_seg.read_seg``): segment numbers are label values, SegmentLabels their names. So
  ``get_label_by_image_id`` / ``get_label_uri`` / ``get_label_info`` give the task (and the trainer)
  exactly what the local folder gives them.
- **labels and results go back as DICOM SEGs** (``save_label``, ``store_result``), written here
  with pydicom-seg, so the dcmqi binaries MONAI Label would download are not needed.
- **errors a user can act on are 4xx**: an unknown series or SEG 404, a series with inconsistent
  slice spacing or a SEG that is not on its series' grid 422, a PACS that does not answer (refused,
  timed out, 5xx) 424 with the URL; a series is checked before it is converted, and a SEG is
  built completely before the one STOW request that stores it, so a failed call leaves nothing in
  the PACS.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional

import numpy as np
import pydicom
import requests
from fastapi import HTTPException
from pydicom.dataset import Dataset

from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.datastore.utils.convert import binary_to_image, dicom_to_nifti
from monailabel.datastore.utils.dicom import dicom_web_download_series
from monailabel.interfaces.datastore import DefaultLabelTag

from lib.datastores.dicom_seg import SegError, is_ours, read_seg, referenced_series, segment_names, write_seg
from lib.request_params import parse_label_info  # the label's label_info, read as the infer task reads it
from lib.responses import DEFAULT_MAX_VOXELS, check_label_on_image, refusal, write_label_like

logger = logging.getLogger(__name__)

FINAL = DefaultLabelTag.FINAL.value
SPACING_TOLERANCE = 0.01  # relative: slices whose gaps differ by more are not one regular volume


def _error(status: int, message: str) -> HTTPException:
    return refusal(status, message, "PACS")


def checked_uid(uid: str, what: str) -> str:
    """A DICOM UID (it becomes a file name in the cache), else 404."""
    if not isinstance(uid, str) or not re.fullmatch(r"[0-9]+(\.[0-9]+)*", uid) or len(uid) > 64:
        raise _error(404, f"{what} {str(uid)[:80]!r} is not a DICOM UID (digits and dots): name a series of the PACS")
    return uid


def slice_spacing_problem(datasets: list[Dataset]) -> str | None:
    """Why the instances do not form one regular volume (None if they do)."""
    if len(datasets) < 2:
        return None
    orientations = {tuple(np.round(np.asarray(d.ImageOrientationPatient, float), 4)) for d in datasets}
    if len(orientations) > 1:
        return f"its slices have {len(orientations)} different orientations"
    row, col = np.asarray(datasets[0].ImageOrientationPatient, float).reshape(2, 3)
    normal = np.cross(row, col)
    where = np.sort([float(np.dot(np.asarray(d.ImagePositionPatient, float), normal)) for d in datasets])
    gaps = np.diff(where)
    typical = float(np.median(gaps))
    if typical <= 0:
        return "several slices share one position"
    odd = np.flatnonzero(np.abs(gaps - typical) > max(SPACING_TOLERANCE * typical, 1e-3))
    if len(odd) == 0:
        return None
    shown = ", ".join(f"{gaps[i]:.2f} mm after slice {i + 1}" for i in odd[:3])
    return (f"its slices are {typical:.2f} mm apart except {shown}"
            + (f" and {len(odd) - 3} more" if len(odd) > 3 else "") + " (a missing slice, or two acquisitions in one series)")


class SegInfo(NamedTuple):
    uid: str                 # the SEG's series UID
    study: str
    references: str | None   # the series it labels
    ours: bool               # a result of this app (never a user's label)
    stamp: str               # series / instance creation date and time, to pick the newest


class PacsDatastore(DICOMWebDatastore):
    """See the module docstring. Built from the ``DICOMWebDatastore`` MONAI Label configured."""

    def __init__(self, store: DICOMWebDatastore, label_names: dict[int, str] | None = None,
                 timeout_s: float = 30.0, attempts: int = 2):
        client = store._client
        # a PACS that hangs must end the call, not block it: a timeout on every request, few retries
        request = client._session.request
        client._session.request = lambda method, url, **kw: request(method, url, **{"timeout": timeout_s, **kw})
        client.set_http_retry_params(retry=attempts > 1, max_attempts=max(attempts, 1), wait_exponential_multiplier=200)
        self.url = client.base_url
        self.label_names = dict(label_names or {})
        self._lock = threading.RLock()
        self._segs: dict[str, Dataset] = {}  # SEG series UID -> instance (a stored SEG never changes)
        self._seg_infos_seen: dict[str, SegInfo] = {}
        if getattr(store, "_observer", None) is not None:  # this object replaces it, watcher included
            store._observer.stop()
        super().__init__(client=client, search_filter=store._search_filter,
                         cache_path=os.path.dirname(store._datastore_path), fetch_by_frame=store._fetch_by_frame,
                         convert_to_nifti=True)

    # ---- talking to the PACS ------------------------------------------------------------------
    @contextlib.contextmanager
    def answering(self, doing: str):
        """PACS failures while ``doing`` -> 4xx HTTP errors that say what to check."""
        try:
            yield
        except HTTPException:
            raise
        except (requests.ConnectionError, requests.Timeout) as error:
            kind = "timed out" if isinstance(error, requests.Timeout) else "refused or dropped the connection"
            raise _error(424, f"the PACS at {self.url} does not answer ({kind}) while {doing}: check that it runs "
                              "and that --studies names its DICOMweb root") from None
        except requests.HTTPError as error:
            code = error.response.status_code if error.response is not None else "?"
            if code == 404:
                raise _error(404, f"the PACS at {self.url} has no such object while {doing}") from None
            raise _error(424, f"the PACS at {self.url} answered HTTP {code} while {doing}") from None

    def _series(self, series_uid: str) -> Dataset | None:
        with self.answering(f"looking up series {series_uid}"):
            found = self._client.search_for_series(search_filters={"SeriesInstanceUID": series_uid})
        found = [Dataset.from_json(s) for s in found]
        found = [s for s in found if str(s.get("SeriesInstanceUID", "")) == series_uid]
        return found[0] if found else None

    def has_series(self, series_uid: str) -> bool:
        return self._series(series_uid) is not None

    def require_series(self, series_uid: str) -> bool:
        """True for a series of the PACS; otherwise a 404 that says why (not a UID, or not there)."""
        if not self.has_series(checked_uid(series_uid, "image")):
            raise _error(404, f"series {series_uid} is not in the PACS at {self.url}")
        return True

    def image_id_of(self, path: str) -> str | None:
        """The series UID of a cached image path (None for a file that is not a cached series)."""
        real = Path(os.path.realpath(path))
        if real.parent != Path(os.path.realpath(self._datastore.image_path())) or not real.name.endswith(".nii.gz"):
            return None
        return real.name[: -len(".nii.gz")]

    # ---- images ---------------------------------------------------------------------------------
    def get_image_uri(self, image_id: str) -> str:
        image_dir = os.path.realpath(os.path.join(self._datastore.image_path(), checked_uid(image_id, "image")))
        image_nii = f"{image_dir}.nii.gz"
        if os.path.exists(image_nii):
            return image_nii
        with self._lock, self.answering(f"fetching series {image_id}"):
            if os.path.exists(image_nii):
                return image_nii
            if not (os.path.isdir(image_dir) and os.listdir(image_dir)):
                if not self.has_series(image_id):
                    raise _error(404, f"series {image_id} is not in the PACS at {self.url}")
                part = f"{image_dir}.part"  # a download cut short never looks complete
                shutil.rmtree(part, ignore_errors=True)
                dicom_web_download_series(None, image_id, part, self._client, self._fetch_by_frame)
                os.replace(part, image_dir)
            headers = self._headers(image_id)
            problem = slice_spacing_problem(headers)
            if problem:
                raise _error(422, f"series {image_id} cannot be segmented as one volume: {problem}. "
                                  "Send the complete series to the PACS, or choose another series")
            converted = dicom_to_nifti(image_dir)
            LocalDatastore.add_image(self, image_id, converted, self._dicom_info(image_id))
            os.unlink(converted)
        return image_nii

    def _headers(self, image_id: str) -> list[Dataset]:
        image_dir = os.path.join(self._datastore.image_path(), image_id)
        return [pydicom.dcmread(os.path.join(image_dir, f), stop_before_pixels=True) for f in sorted(os.listdir(image_dir))]

    def _reference(self, image_id: str):
        import SimpleITK as sitk

        return sitk.ReadImage(self.get_image_uri(image_id))

    # ---- SEGs -------------------------------------------------------------------------------------
    def _seg_infos(self, study: str | None, doing: str) -> list[SegInfo]:
        """The SEGs of one study (or of the whole PACS): one query, plus the metadata of each SEG not
        seen before (a stored SEG never changes)."""
        with self.answering(doing):
            found = [Dataset.from_json(s) for s in self._client.search_for_series(study, search_filters={"Modality": "SEG"})]
            for series in found:
                uid = str(series.SeriesInstanceUID)
                if uid not in self._seg_infos_seen:
                    meta = Dataset.from_json(self._client.retrieve_series_metadata(str(series.StudyInstanceUID), uid)[0])
                    stamp = "".join(str(meta.get(k, "")) for k in ("SeriesDate", "SeriesTime", "InstanceCreationDate",
                                                                   "InstanceCreationTime"))
                    self._seg_infos_seen[uid] = SegInfo(uid, str(series.StudyInstanceUID), referenced_series(meta),
                                                        is_ours(meta), stamp)
        return [self._seg_infos_seen[str(series.SeriesInstanceUID)] for series in found]

    def segs_of(self, series_uid: str, drawn_only: bool = True) -> list[SegInfo]:
        """The SEGs that reference the series, newest first (drawn by a person only, unless
        ``drawn_only`` is False)."""
        series = self._series(series_uid)
        if series is None:
            return []
        infos = self._seg_infos(str(series.StudyInstanceUID), f"looking for SEGs of series {series_uid}")
        infos = [i for i in infos if i.references == series_uid and not (drawn_only and i.ours)]
        return sorted(infos, key=lambda i: i.stamp, reverse=True)

    def seg(self, seg_uid: str) -> Dataset:
        """The SEG instance of the SEG series ``seg_uid`` (404 if the PACS has none)."""
        if seg_uid in self._segs:
            return self._segs[seg_uid]
        series = self._series(seg_uid)
        if series is None or str(series.get("Modality", "")) != "SEG":
            raise _error(404, f"SEG {seg_uid} is not in the PACS at {self.url}"
                              + (f" (that series is {series.get('Modality')}, not SEG)" if series is not None else ""))
        with self.answering(f"fetching SEG {seg_uid}"):
            instances = self._client.retrieve_series(str(series.StudyInstanceUID), seg_uid)
        if len(self._segs) > 64:
            self._segs.clear()
        self._segs[seg_uid] = instances[0]
        return instances[0]

    def seg_reference(self, seg_uid: str) -> str | None:
        return referenced_series(self.seg(seg_uid))

    def series_of(self, uid: str) -> str:
        """A series UID as it is; a study UID -> its series with the newest SEG drawn by a person."""
        if self.has_series(uid):
            return uid
        with self.answering(f"looking up study {uid}"):
            found = [Dataset.from_json(s) for s in self._client.search_for_series(uid)]
        labelled = []
        for series in found:
            if str(series.get("Modality", "")) == "SEG":
                continue
            segs = self.segs_of(str(series.SeriesInstanceUID))
            if segs:
                labelled.append((segs[0].stamp, str(series.SeriesInstanceUID)))
        if not labelled:
            raise _error(404, f"'{uid}' is neither a series nor a study with a labelled series in the PACS at {self.url}")
        return max(labelled)[1]

    # ---- the Datastore interface for final labels ---------------------------------------------------
    def get_label_by_image_id(self, image_id: str, tag: str) -> str:
        if tag != FINAL:
            return super().get_label_by_image_id(image_id, tag)
        segs = self.segs_of(image_id)
        return segs[0].uid if segs else ""

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        """A SEG series (``label_id``) as a label file on its series' grid, cached by SEG UID."""
        if label_tag != FINAL:
            return LocalDatastore.get_label_uri(self, label_id, label_tag)
        cached = os.path.join(self._datastore.label_path(FINAL), "seg", f"{checked_uid(label_id, 'SEG')}.nii.gz")
        if not os.path.exists(cached):
            ds = self.seg(label_id)
            series_uid = referenced_series(ds)
            if not series_uid or (image_id and series_uid != image_id):
                raise _error(422, f"SEG {label_id} references series {series_uid}, not {image_id}")
            reference = self._reference(series_uid)
            try:
                label, _ = read_seg(ds, reference)
            except SegError as error:
                raise _error(422, f"SEG {label_id} cannot be read onto series {series_uid}: {error}") from None
            write_label_like(label, reference, cached, dtype=np.uint16)
        return cached

    def get_label_info(self, label_id: str, label_tag: str) -> Dict[str, Any]:
        if label_tag != FINAL:
            return super().get_label_info(label_id, label_tag)
        ds = self.seg(label_id)
        return {"label_info": [{"name": name, "id": value} for value, name in segment_names(ds).items()],
                "SeriesInstanceUID": label_id, "references": referenced_series(ds)}

    def get_labeled_images(self, label_tag: Optional[str] = None, labels: Optional[List[str]] = None) -> List[str]:
        drawn = {i.references for i in self._seg_infos(None, "looking for SEGs") if not i.ours}
        return [image_id for image_id in self.list_images() if image_id in drawn]

    def status(self) -> Dict[str, Any]:
        """Counts for ``/info``; a PACS that does not answer is reported there, not raised (each
        call that needs the PACS answers 424 itself)."""
        try:
            with self.answering("counting its series"):
                return super().status()
        except HTTPException as error:
            return {"total": None, "completed": None, "label_tags": {}, "pacs": error.detail}

    # ---- writing SEGs ------------------------------------------------------------------------------
    def store_seg(self, image_id: str, label: np.ndarray, names: dict[int, str], algorithm_type: str) -> dict:
        """Write ``label`` (X, Y, Z on the series' grid) as a SEG of ``image_id`` and store it with one
        STOW request. Returns the UIDs of the stored SEG."""
        reference = self._reference(image_id)
        if tuple(label.shape) != tuple(reference.GetSize()):
            raise _error(422, f"the label's shape {tuple(label.shape)} is not series {image_id}'s {reference.GetSize()}")
        try:
            ds = write_seg(label, reference, self._headers(image_id), names, algorithm_type=algorithm_type)
        except SegError as error:
            raise _error(422, f"no SEG written for series {image_id}: {error}") from None
        with self.answering(f"storing a SEG of series {image_id}"):
            answer = self._client.store_instances([ds])
        failed = answer.get("FailedSOPSequence") or []
        if failed:
            raise _error(424, f"the PACS at {self.url} refused the SEG of series {image_id} "
                              f"(failure reason {failed[0].get('FailureReason', '?')})")
        if self._series(str(ds.SeriesInstanceUID)) is None:  # some PACS report a SEG their rules dropped as stored
            raise _error(424, f"the PACS at {self.url} answered that it stored the SEG of series {image_id} but does "
                              "not hold it: a rule of the PACS drops such objects (e.g. a filter on modality SEG); "
                              "ask its administrator")
        logger.info(f"stored SEG {ds.SeriesInstanceUID} of series {image_id}: segments {names}")
        return {"SeriesInstanceUID": str(ds.SeriesInstanceUID), "StudyInstanceUID": str(ds.StudyInstanceUID),
                "SOPInstanceUID": str(ds.SOPInstanceUID), "references": image_id,
                "segments": {name: int(value) for value, name in sorted(names.items())}}

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any],
                   label_id: str = "") -> str:
        """``PUT /datastore/label``: a final label goes to the PACS as a SEG drawn by a person."""
        import SimpleITK as sitk

        converted = ""
        if "".join(Path(label_filename).suffixes) == ".bin":  # OHIF's raw labelmap
            converted = label_filename = binary_to_image(self.get_image_uri(image_id), label_filename)
        try:
            if label_tag == FINAL:  # checked as on a local folder (lib/datastores/local.py) before the PACS sees it
                check_label_on_image(label_filename, self.get_image_uri(image_id), "the label", DEFAULT_MAX_VOXELS,
                                     upload=True, nonempty=True)
                label = sitk.GetArrayFromImage(sitk.ReadImage(label_filename)).transpose(2, 1, 0).astype(np.int64)
                named = parse_label_info((label_info or {}).get("label_info")) or self.label_names
                values = [int(v) for v in np.unique(label) if v != 0]
                stored = self.store_seg(image_id, label, {v: named.get(v, f"segment_{v}") for v in values}, "MANUAL")
                label_info = {**(label_info or {}), "SeriesInstanceUID": stored["SeriesInstanceUID"]}
            return LocalDatastore.save_label(self, image_id, label_filename, label_tag, label_info)
        finally:
            if converted:
                os.unlink(converted)

    def store_result(self, image_id: str, label_file: str, names: dict[int, str]) -> dict | None:
        """A result label file (on the series' grid) as an AUTOMATIC SEG; None when it is empty."""
        import SimpleITK as sitk

        label = sitk.GetArrayFromImage(sitk.ReadImage(label_file)).transpose(2, 1, 0).astype(np.int64)
        if not label.any():
            return None
        return self.store_seg(image_id, label, names, "AUTOMATIC")
