"""The few-shot infer task: label an organ on a few slices, get it on every slice (or in another scan).

One class serves both MONAI Label client flows; the app registers it twice, once per task type,
because a client decides from a model's *type* where to show it and what to send:

- ``segmentation`` type (model ``fewshot``): OHIF v3 lists it under auto-segmentation and runs it
  without uploading anything: the user first saves the drawn slices with ``PUT /datastore/label``
  (tag ``final``), then the task finds that saved label in the datastore. 3D Slicer's "Auto
  Segmentation" button behaves the same way (no upload).
- ``scribbles`` type (model ``fewshot_scribbles``): 3D Slicer's scribbles panel exports every segment
  of the current segmentation into one labelmap, uploads it as the request's ``label`` file and
  sends ``label_info`` (segment names and their values) and ``selected_label_name``. Only a
  scribbles-type model ever receives the labelmap being drawn, so Slicer users need this entry.

Both entries take the support from the first of these that holds a labelled slice:

1. the label uploaded with the request (``request["label"]``, a file MONAI Label's ``/infer``
   endpoint has written); values are named through ``label_info`` (values it does not name keep
   their number as name; without ``label_info`` the app's ``labels`` setting names them); segments
   named ``*_scribbles`` or ``background`` are ignored;
2. the image's saved ``final`` label in the datastore (names from its stored ``label_info`` or
   ``label_names``, else the app's ``labels`` setting, else the value itself);
3. the datastore image named by the ``support_image`` parameter, through its ``final`` label:
   the cross-patient case.

On a PACS (``--studies <DICOMweb root>``, ``lib/datastores/pacs.py``) a ``final`` label is the
newest DICOM SEG drawn by a person that references the series (``support_seg`` names another one,
which must label the image or the support image: 422 otherwise), ``support_image`` may be a study
UID (its labelled series), and the result goes back to the PACS as a SEG of the query series
(``store_result``, default true; ``stored_seg`` in the result JSON says which), stored last, so a
call that fails stores nothing.

In cases 1 and 2 the support is the query volume itself (the in-volume case: the user's labelled
slices are kept exactly as drawn). Every labelled slice is a shot. ``volume_mode`` ``propagate``
(the default, ``--conf volume_mode``) walks out from the drawn slices, each slice served by its
segmented neighbour and the nearest drawn slices, until the organ ends (``scripts.engine.propagation``);
``nearest`` serves each slice from its ``max_shots`` nearest drawn slices alone, as does every call
on another image (``scripts.engine.inferer.segment_files`` does the matching, the loading, the
resampling and the merge of several organs; nothing of it is repeated here).

Slices filled by an earlier inference are not shots: the task records, per image, the mask of
every organ on every slice it predicted (``PredictionRecord``). A slice of a later support whose
organs all match that record exactly (the user accepted it untouched) is left out; a slice the user
edited, or drew, is a shot. ``support_slices`` (a list of slice indices, or ``all``) overrides this:
that is how a user marks predicted slices as shots. Limits: only predictions of this server are
recorded (a label predicted elsewhere counts as drawn); the decision is per slice, so a slice with
one edited organ counts as a shot for every organ on it; a record is dropped when the image file
changes; records live in ``<studies>/.fewshot/predictions`` (``--conf prediction_record_dir``).

Slicer's scribbles panel shows the result as the one segment the user selected, so when
``selected_label_name`` names an organ of the labelmap only that organ is segmented; other requests
segment every organ present (``labels``, a list of names, restricts any request). The result file is a label volume on the image's own grid (same shape
and affine) holding the support's values; ``label_names`` in the result JSON names the values
present in it, in the order Slicer maps them to segments.

Errors a user can act on answer HTTP 4xx with the reason (FastAPI turns the ``HTTPException``
raised here into that response; MONAI Label's ``/infer`` endpoint lets it through): 404 unknown
image or support image, 422 no labelled slice / wrong label shape or affine / unreadable label /
unknown organ, 400 malformed parameters, 424 missing or unfit model weights, or a PACS that does
not answer or does not keep the SEG it was sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from fastapi import HTTPException
from monai.data import MetaTensor

from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from lib.datastores.pacs import PacsDatastore
from lib.responses import DEFAULT_MAX_VOXELS, read_label, refusal, volume_header, write_label_like
from scripts.data.volumes import DataError
from scripts.engine.inferer import VOLUME_MODES, SupportError, segment_files
from scripts.network.autoencoders import WeightsError
from scripts.network.pipeline import EmptySupportError
from scripts.network.presets import build_segmenter

logger = logging.getLogger(__name__)

IGNORED_SEGMENTS = ("background",)
SLOW_NOTE = ("With the 'sd15' preset on a CPU one call takes a minute or more (about 7 TFLOP of "
             "U-Net per 40-slice volume); the 'compact' preset takes seconds.")


def http_error(status: int, message: str) -> HTTPException:
    return refusal(status, message, "few-shot")


# ---- request parameters (Slicer sends the option table's values as strings) ---------------------
def _first(value):
    return value[0] if isinstance(value, (list, tuple)) and value else value


def _blank(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, (list, tuple)) and not value)


def parse_float(name: str, value) -> float | None:
    value = _first(value)
    if _blank(value):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise http_error(400, f"parameter '{name}' must be a number, got {value!r}") from None
    if not np.isfinite(number):
        raise http_error(400, f"parameter '{name}' must be finite, got {value!r}")
    return number


def parse_int(name: str, value, minimum: int) -> int | None:
    value = _first(value)
    if _blank(value):
        return None
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise http_error(400, f"parameter '{name}' must be an integer, got {value!r}") from None
    if number < minimum:
        raise http_error(400, f"parameter '{name}' must be at least {minimum}, got {number}")
    return number


def parse_json(name: str, value):
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            if name in ("support_slices", "labels"):
                return [part.strip() for part in text.split(",") if part.strip()]
            raise http_error(400, f"parameter '{name}' is not valid JSON: {text[:80]!r}") from None
    return value


def parse_label_info(value) -> dict[int, str]:
    """Slicer's ``label_info`` ([{"name": n, "id"|"idx"|"value": v}, ...]) or a mapping name -> value
    (or value -> name) -> {value: name}."""
    value = parse_json("label_info", value)
    if not value:
        return {}
    names: dict[int, str] = {}
    try:
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, str) and str(key).lstrip("-").isdigit():
                    names[int(key)] = item
                else:
                    names[int(item)] = str(key)
        else:
            for entry in value:
                number = next(entry[k] for k in ("id", "idx", "value", "label") if k in entry)
                names[int(number)] = str(entry["name"])
    except (TypeError, ValueError, KeyError, StopIteration):
        raise http_error(400, "parameter 'label_info' must be a list of {'name', 'id'} entries or a mapping "
                              f"name -> value; got {str(value)[:120]}") from None
    return names


def ignored_segment(name: str) -> bool:
    lowered = name.strip().lower()
    return lowered.endswith("_scribbles") or lowered in IGNORED_SEGMENTS


# ---- label files ----------------------------------------------------------------------------------
def label_values(array: np.ndarray) -> list[int]:
    """The non-zero values of a label array (a counting pass, not a sort, for the usual small values)."""
    if array.size and array.min() >= 0 and array.max() < 1 << 16:
        return [int(v) for v in np.flatnonzero(np.bincount(array.ravel())) if v != 0]
    return [int(v) for v in np.unique(array) if v != 0]


def slices_first(array: np.ndarray, axis: int) -> np.ndarray:
    """The label with the slice axis first, contiguous: one copy, then every slice is cheap."""
    return np.ascontiguousarray(np.moveaxis(array, axis, 0))


def slice_masks(plane: np.ndarray, names: dict[int, str]) -> dict[str, str]:
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
        self.folder = Path(folder) if folder else None
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
            masks = slice_masks(label[z], names)
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
                masks = slice_masks(label[z], names)
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


# ---- the model ------------------------------------------------------------------------------------
class FewShotModel:
    """The segmenter, built from the checkpoint on first use (per device) and rebuilt when the file to
    serve changes (training promoted a model: ``lib/served_model.py``). ``lock`` serialises its use:
    the threshold is set per request and the latent cache is shared."""

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
                raise http_error(424, f"the few-shot model cannot be loaded: {error}. Train one (POST /train/fewshot) "
                                      "or start the server with --conf checkpoint <file>") from None
            segmenter.eval()
            preset = segmenter.config.get("preset")
            logger.info(f"few-shot model: preset '{preset}', autoencoder '{segmenter.config.get('autoencoder')}', "
                        f"device {device}, loaded from {path} in {time.time() - start:.1f}s")
            if preset == "sd15" and str(device).startswith("cpu"):
                logger.warning(SLOW_NOTE)
            self._built[device] = (segmenter, version)
            return segmenter


# ---- the support ------------------------------------------------------------------------------------
@dataclass
class Support:
    source: str                      # upload | saved_label | support_image
    image: str                       # support image path (the query itself in the in-volume case)
    label: str                       # label file handed to segment_files (cleaned when needed)
    labels: dict[str, int]           # organs to segment: name -> value
    slices: list[int] | None         # shots; None: every labelled slice
    image_id: str | None = None
    excluded_predicted: list[int] = field(default_factory=list)
    label_id: str | None = None      # the saved label's id in the datastore (a PACS: the SEG's series UID)

    def describe(self) -> dict:
        return {"source": self.source, "image": self.image_id or os.path.basename(self.image),
                "labels": self.labels, "excluded_predicted_slices": self.excluded_predicted,
                **({"label": self.label_id} if self.label_id else {})}


@dataclass
class SavedLabel:
    path: str                        # label file on its image's grid
    names: dict[int, str]            # value -> name, as stored with it
    label_id: str
    image_id: str                    # the image it labels


class ResolveSupportd:
    """Pre-transform: finds the support of the request (upload, saved label, support image, in that
    order), names its values and picks its shots; writes ``data["support"]``."""

    def __init__(self, datastore: Callable[[], Any] | None, record: PredictionRecord,
                 default_names: dict[int, str], slice_axis: int = 2, max_voxels: int | None = DEFAULT_MAX_VOXELS):
        self.datastore = datastore
        self.record = record
        self.default_names = default_names
        self.slice_axis = slice_axis
        self.max_voxels = max_voxels

    def __call__(self, data: dict) -> dict:
        image = data.get("image")
        if not isinstance(image, str) or not image or not os.path.exists(image):
            raise http_error(404, "image not found: the request names no image of the datastore (or the upload failed)")
        datastore = self.datastore() if self.datastore else None
        image_id = self.image_id(datastore, image)
        volume_header(image, f"image '{image_id}'" if image_id else "the uploaded image", self.max_voxels,
                      upload=image_id is None)
        data["fewshot_query_id"] = image_id
        support_image = _first(data.get("support_image"))
        support_image = None if _blank(support_image) else str(support_image).strip()
        pacs = datastore if isinstance(datastore, PacsDatastore) else None
        if pacs is not None and support_image is not None:
            support_image = pacs.series_of(support_image)  # a study UID names its labelled series
        seg = self.named_seg(data, pacs, image_id, support_image)
        other = (seg if seg and seg.image_id == support_image else
                 self.final_label(datastore, support_image, strict=True) if support_image is not None else None)

        reasons = []
        uploaded = data.get("label")
        if isinstance(uploaded, str) and os.path.isfile(uploaded):
            names = parse_label_info(data.get("label_info"))
            found = self.candidate(data, "upload", image, uploaded, names, image_id, reasons)
            if found:
                return self.done(data, found)
        if image_id is not None and datastore is not None:
            saved = seg if seg and seg.image_id == image_id else self.final_label(datastore, image_id)
            if saved:
                found = self.candidate(data, "saved_label", image, saved.path, saved.names, image_id, reasons,
                                       saved.label_id)
                if found:
                    return self.done(data, found)
        if other is not None:
            path = datastore.get_image_uri(support_image)
            found = self.candidate(data, "support_image", path, other.path, other.names, support_image, reasons,
                                   other.label_id)
            if found:
                return self.done(data, found)
        hint = ("label the organ on at least one slice and send it with the request (3D Slicer: paint a segment "
                "that is not a *_scribbles layer), save it as this image's final label (OHIF: save the label first), "
                "or name a labelled datastore image in 'support_image'")
        detail = "; ".join(reasons) or ("no label was uploaded, the image has no saved final label "
                                        "and no support_image was given")
        raise http_error(422, f"no labelled slice to learn from: {detail}. To fix: {hint}")

    @staticmethod
    def done(data: dict, support: Support) -> dict:
        data["support"] = support
        shots = support.slices if support.slices is not None else "all labelled slices"
        logger.info(f"few-shot support: {support.describe()}; shots {shots}")
        return data

    @staticmethod
    def image_id(datastore, path: str) -> str | None:
        if datastore is None:
            return None
        if isinstance(datastore, PacsDatastore):  # listing a PACS's images would download them all
            return datastore.image_id_of(path)
        real = os.path.realpath(path)
        for image_id in datastore.list_images():
            uri = datastore.get_image_uri(image_id)
            if uri and os.path.realpath(uri) == real:
                return image_id
        return None

    def final_label(self, datastore, image_id: str, strict: bool = False) -> SavedLabel | None:
        """The image's final label; with ``strict`` an unknown image or one without a final label
        answers 404."""
        known = datastore is not None and (datastore.has_series(image_id) if isinstance(datastore, PacsDatastore)
                                           else image_id in datastore.list_images())
        if not known:
            if strict:
                raise http_error(404, f"support_image '{image_id}' is not an image of the datastore")
            return None
        label_id = datastore.get_label_by_image_id(image_id, DefaultLabelTag.FINAL.value)
        path = datastore.get_label_uri(label_id, DefaultLabelTag.FINAL.value) if label_id else ""
        if not path or not os.path.exists(path):
            if strict:
                raise http_error(404, f"support_image '{image_id}' has no saved final label: label it and save it first")
            return None
        info = datastore.get_label_info(label_id, DefaultLabelTag.FINAL.value) or {}
        names = parse_label_info(info.get("label_info"))
        if not names:
            stored = info.get("label_names") or (info.get("params") or {}).get("label_names") or {}
            names = parse_label_info(stored) if isinstance(stored, dict) else {}
        return SavedLabel(path, names, label_id, image_id)

    @staticmethod
    def named_seg(data: dict, pacs, image_id: str | None, support_image: str | None) -> SavedLabel | None:
        """The SEG that ``support_seg`` names, which must label the image or the support image; None
        when the request names none."""
        seg_uid = _first(data.get("support_seg"))
        if _blank(seg_uid):
            return None
        seg_uid = str(seg_uid).strip()
        if pacs is None:
            raise http_error(400, "parameter 'support_seg' names a DICOM SEG in a PACS, but this server's datastore "
                                  "is a folder: send the label instead, or start the server on the PACS")
        series = pacs.seg_reference(seg_uid)
        if series not in (image_id, support_image):
            target = f"the image's series {image_id}" + (f" or support_image {support_image}" if support_image else "")
            raise http_error(422, f"SEG {seg_uid} labels series {series}, not {target}: a SEG is a label of the series "
                                  f"it was drawn on. Run the task on {series}, or segment this image from that patient "
                                  f"with support_image={series}")
        info = pacs.get_label_info(seg_uid, DefaultLabelTag.FINAL.value)
        path = pacs.get_label_uri(seg_uid, DefaultLabelTag.FINAL.value, series)
        return SavedLabel(path, parse_label_info(info["label_info"]), seg_uid, series)

    def candidate(self, data: dict, source: str, image: str, label_path: str, names: dict[int, str],
                  image_id: str | None, reasons: list, label_id: str | None = None) -> Support | None:
        where = {"upload": "the uploaded label", "saved_label": "the image's saved label",
                 "support_image": f"the label of '{image_id}'"}[source]
        expected = volume_header(image, f"image '{image_id}'" if image_id else "the image", self.max_voxels).shape
        label, reference = read_label(label_path, where, self.max_voxels, upload=source == "upload")
        if tuple(label.shape) != expected:
            raise http_error(422, f"{where}: its shape {tuple(label.shape)} does not match the image's {expected}; "
                                  "a label must be drawn on the image's own grid")
        present = label_values(label)
        fallback = {} if names else self.default_names  # named values are a client's own numbering
        organs: dict[int, str] = {}
        for value in present:
            name = names.get(value) or fallback.get(value) or str(value)
            if ignored_segment(name):
                continue
            organs[value] = name if name not in organs.values() else f"{name}_{value}"
        organs = self.restrict(data, organs, where)
        if not organs:
            reasons.append(f"{where} has no organ drawn" + (" (only *_scribbles/background segments)" if present else ""))
            return None
        stack = slices_first(label, self.slice_axis)
        organ_mask = np.zeros(stack.shape, bool)
        for value in organs:
            organ_mask |= stack == value
        labelled = [int(z) for z in np.flatnonzero(organ_mask.reshape(len(stack), -1).any(axis=1))]
        marked = parse_json("support_slices", data.get("support_slices"))
        excluded: list[int] = []
        if marked in (None, [], ""):
            excluded = self.record.untouched(image, stack, organs, labelled)
            shots = [z for z in labelled if z not in set(excluded)]
        elif (isinstance(marked, str) and marked.strip().lower() == "all") or marked == ["all"]:
            shots = labelled
        else:
            try:
                wanted = {int(z) for z in (marked if isinstance(marked, list) else [marked])}
            except (TypeError, ValueError):
                raise http_error(400, "parameter 'support_slices' must list slice indices or be 'all', "
                                      f"got {marked!r}") from None
            shots = [z for z in labelled if z in wanted]
        if not shots:
            reasons.append(f"{where}: " + ("every labelled slice was filled by an earlier inference and left as it was "
                                           "(edit one, draw one, or mark them with support_slices)" if excluded
                                           else "none of the slices in support_slices is labelled"))
            return None
        path = label_path
        if set(present) != set(organs):  # drop scribbles, background and organs not asked for
            work = data.get("fewshot_workdir") or tempfile.gettempdir()
            path = os.path.join(work, f"support_{source}.nii.gz")
            write_label_like(np.where(np.moveaxis(organ_mask, 0, self.slice_axis), label, 0), reference, path)
        return Support(source=source, image=image, label=path, labels={n: v for v, n in sorted(organs.items())},
                       slices=None if len(shots) == len(labelled) else shots, image_id=image_id,
                       excluded_predicted=excluded, label_id=label_id)

    @staticmethod
    def restrict(data: dict, organs: dict[int, str], where: str) -> dict[int, str]:
        """Keep the organs the request asks for: ``labels`` (names or a name -> value map), or Slicer's
        ``selected_label_name`` when it names one of them."""
        wanted = parse_json("labels", data.get("labels"))
        if wanted:
            asked = list(wanted) if isinstance(wanted, (dict, list)) else [wanted]
            unknown = [str(n) for n in asked if str(n) not in organs.values() and str(n) not in map(str, organs)]
            if unknown:
                raise http_error(422, f"{where} has no organ {unknown}; it has {sorted(organs.values())}")
            return {v: n for v, n in organs.items() if n in map(str, asked) or str(v) in map(str, asked)}
        selected = data.get("selected_label_name")
        if isinstance(selected, str) and selected in organs.values():
            return {v: n for v, n in organs.items() if n == selected}
        return organs


class RecordPredictionsd:
    """Post-transform: remembers which slices of a datastore image this call predicted, so that a
    later support made from them does not count them as drawn."""

    def __init__(self, record: PredictionRecord, slice_axis: int = 2):
        self.record = record
        self.slice_axis = slice_axis

    def __call__(self, data: dict) -> dict:
        if data.get("fewshot_query_id") is None:
            return data  # a scan uploaded with the request: nothing to remember it by
        support: Support = data["support"]
        names = {v: n for n, v in support.labels.items()}
        drawn = data["result"]["support"]["drawn_slices"]
        self.record.update(data["image"], slices_first(np.asarray(data["pred"]), self.slice_axis), names, drawn)
        return data


# ---- the task -----------------------------------------------------------------------------------------
class FewShotInfer(BasicInferTask):
    """SD-FSMIS few-shot segmentation as a MONAI Label infer task (see the module docstring)."""

    def __init__(self, model: FewShotModel, type=InferType.SEGMENTATION, labels: dict[str, int] | None = None,
                 datastore: Callable[[], Any] | None = None, max_shots: int = 3, threshold: float | None = None,
                 threshold_mode: str | None = None, slice_axis: int = 2, record: PredictionRecord | None = None,
                 device: str = "cpu", description: str | None = None, store_result: bool = True,
                 max_voxels: int | None = DEFAULT_MAX_VOXELS, volume_mode: str = "propagate"):
        flow = ("3D Slicer scribbles panel: uploads the labelmap being drawn" if type == InferType.SCRIBBLES
                else "OHIF / Slicer auto-segmentation: uses the image's saved final label")
        description = description or (
            "Few-shot segmentation (SD-FSMIS): label an organ on one or a few slices and get it on every slice, "
            "or in another scan via support_image. Support: the uploaded label, else the image's saved final "
            f"label, else support_image's. {flow}. " + SLOW_NOTE
        )
        super().__init__(
            path=model.checkpoint, network=None, type=type, labels=labels or {}, dimension=3,
            description=description, config={
                "threshold": "" if threshold is None else threshold,
                "max_shots": max_shots,
                # a client's drop-down: the first is the default
                "volume_mode": [volume_mode] + [m for m in VOLUME_MODES if m != volume_mode],
                "support_image": "",
                "support_slices": "",
                "support_seg": "",  # a PACS only: the SEG to learn from (default: the newest drawn one)
                "store_result": store_result,  # a PACS only: store the result as a SEG there
            },
        )
        self._config["device"] = [device]
        self.model = model
        self.max_shots = max_shots
        self.threshold = threshold
        self.threshold_mode = threshold_mode
        self.volume_mode = volume_mode
        self.slice_axis = slice_axis
        self.datastore = datastore
        self.record = record or PredictionRecord(None)  # None: nothing remembered
        self.default_names = {int(v): str(n) for n, v in (labels or {}).items()}
        self.max_voxels = max_voxels

    def is_valid(self) -> bool:
        return True  # missing weights answer the call with a 4xx that says so

    def pre_transforms(self, data=None):
        return [ResolveSupportd(self.datastore, self.record, self.default_names, self.slice_axis, self.max_voxels)]

    def post_transforms(self, data=None):
        return [RecordPredictionsd(self.record, self.slice_axis)]

    def __call__(self, request, callbacks=None):
        with tempfile.TemporaryDirectory(prefix="fewshot_") as work:
            label_file, result = super().__call__({**request, "fewshot_workdir": work}, callbacks)
        result["label_names"] = result.pop("segmented_labels", {})
        datastore = self.datastore() if self.datastore else None
        if isinstance(datastore, PacsDatastore):
            result["stored_seg"] = self.store(datastore, request, label_file, result)
        return label_file, result

    def store(self, pacs: PacsDatastore, request: dict, label_file: str, result: dict) -> dict | None:
        """The result as a SEG of the query series in the PACS (last: a call that fails stores nothing)."""
        wanted = _first(request.get("store_result"))
        wanted = self._config.get("store_result", True) if _blank(wanted) else wanted
        if str(wanted).strip().lower() in ("false", "0", "no", "off"):
            return None
        series = pacs.image_id_of(request["image"])
        if series is None:
            return None  # a scan uploaded with the request is not in the PACS
        names = {value: name for name, value in result["labels"].items()}
        try:
            return pacs.store_result(series, label_file, names)
        except HTTPException:
            os.unlink(label_file)  # the endpoint only removes it when the call succeeds
            raise

    def run_inferer(self, data, convert_to_batch=True, device="cuda"):
        support: Support = data["support"]
        threshold = parse_float("threshold", data.get("threshold"))
        threshold = self.threshold if threshold is None else threshold
        mode = _first(data.get("threshold_mode")) or self.threshold_mode
        if mode is not None and mode not in ("absolute", "relative"):
            raise http_error(400, f"parameter 'threshold_mode' must be 'absolute' or 'relative', got {mode!r}")
        max_shots = parse_int("max_shots", data.get("max_shots"), 1) or self.max_shots
        volume_mode = _first(data.get("volume_mode"))
        volume_mode = self.volume_mode if _blank(volume_mode) else str(volume_mode).strip()
        if volume_mode not in VOLUME_MODES:
            raise http_error(400, f"parameter 'volume_mode' must be one of {list(VOLUME_MODES)}, got {volume_mode[:40]!r}")
        segmenter = self.model.get(device)
        if segmenter.config.get("preset") == "sd15" and str(device).startswith("cpu"):
            logger.info("few-shot: running the sd15 preset on the CPU; " + SLOW_NOTE)
        start = time.time()
        with self.model.lock:
            cache_before = dict(getattr(segmenter, "latent_cache_stats", {}))
            saved = segmenter.threshold, segmenter.threshold_mode
            try:
                if threshold is not None:
                    segmenter.threshold = threshold
                if mode is not None:
                    segmenter.threshold_mode = mode
                label, query, segmentation = segment_files(
                    segmenter, support.image, support.label, data["image"], labels=support.labels,
                    max_shots=max_shots, support_slices=support.slices, slice_axis=self.slice_axis,
                    mode=volume_mode,
                )
                used_threshold, used_mode = segmenter.threshold, segmenter.threshold_mode
                cache = {key: round(value - cache_before[key], 3)
                         for key, value in getattr(segmenter, "latent_cache_stats", {}).items()}
            except (SupportError, DataError, EmptySupportError) as error:
                raise http_error(422, str(error)) from None
            finally:
                segmenter.threshold, segmenter.threshold_mode = saved
        if float(np.ptp(query.image)) == 0.0:  # nothing to segment: whatever the model says, keep only what was drawn
            keep = np.zeros(label.shape[self.slice_axis], dtype=bool)
            if support.source != "support_image":
                keep[sorted({z for zs in segmentation.support_slices.values() for z in zs})] = True
            label = np.where(np.expand_dims(keep, tuple(a for a in range(label.ndim) if a != self.slice_axis)), label, 0)
        present = set(label_values(label))
        low, high = int(label.min()), int(label.max())
        dtype = np.uint8 if low >= 0 and high < 256 else np.int16 if -32768 <= low and high < 32768 else np.int32
        affine = torch.as_tensor(query.meta["original_affine"])
        data["pred"] = MetaTensor(torch.as_tensor(label.astype(dtype)), affine=affine)  # the writer reads the affine
        same_volume = support.source != "support_image"
        drawn = sorted({z for zs in segmentation.support_slices.values() for z in zs}) if same_volume else []
        data["result"] = {
            "segmented_labels": {n: v for n, v in segmentation.labels.items() if v in present},
            "labels": dict(segmentation.labels),
            "support": {**support.describe(), "shots_per_label": dict(segmentation.shots_per_label),
                        "support_slices": {n: list(z) for n, z in segmentation.support_slices.items()},
                        "drawn_slices": drawn},
            "threshold": float(used_threshold), "threshold_mode": used_mode, "max_shots": max_shots,
            "volume_mode": volume_mode if same_volume else None,
            "preset": segmenter.config.get("preset"), "device": str(device),
            "seconds": round(time.time() - start, 3),
            # volumes whose latents were kept (warmed or used before) or new, slices encoded, seconds it took
            "latent_cache": cache,
        }
        found = label.any() if not drawn else bool(np.delete(slices_first(label, self.slice_axis), drawn, axis=0).any())
        if float(np.ptp(query.image)) == 0.0:
            data["result"]["message"] = ("the image is constant (every voxel has one value): there is nothing to segment "
                                         "in it" + ("; only the drawn slices come back" if drawn else ""))
        elif not found:
            data["result"]["message"] = (f"nothing found{' outside the drawn slices' if drawn else ''} at threshold "
                                         f"{float(used_threshold):.3g} ({used_mode}): a lower 'threshold', more labelled "
                                         "slices, or a support closer to this image may find it")
        logger.info(f"few-shot: segmented {sorted(segmentation.labels)} from {support.source} in {time.time() - start:.2f}s")
        return data
