"""The support of a few-shot call: which labelled slices it learns from, and what their organs are named.

``ResolveSupportd`` (the task's pre-transform) takes the first of these that holds a labelled slice:

1. the label uploaded with the request (``label``), its values named through ``label_info`` (else
   the app's ``labels`` setting, else the value itself);
2. the image's saved ``final`` label in the datastore, named as stored with it;
3. the ``final`` label of the datastore image that ``support_image`` names (the cross-patient case).

On a PACS (``lib/datastores/pacs.py``) a ``final`` label is a DICOM SEG, ``support_seg`` may name
one and ``support_image`` may name a study. Segments that are not organs are dropped
(``lib/labelmaps.py``), so are organs the request did not ask for (``labels``,
``selected_label_name``). Every labelled slice is a shot except those the task filled itself and the
user left as they were (``lib/prediction_record.py``); ``support_slices`` overrides that choice.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from monailabel.interfaces.datastore import DefaultLabelTag

from lib.datastores.pacs import PacsDatastore
from lib.labelmaps import ignored_segment, label_values, slices_first
from lib.prediction_record import PredictionRecord
from lib.request_params import first_value, is_blank, parse_json, parse_label_info
from lib.responses import DEFAULT_MAX_VOXELS, read_label, task_refusal, volume_header, write_label_like

logger = logging.getLogger(__name__)


@dataclass
class Support:
    """The support of one call, as ``segment_files`` takes it and the result JSON describes it."""

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
    """A ``final`` label of the datastore, read onto its image's grid."""

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
            raise task_refusal(404, "image not found: the request names no image of the datastore (or the upload "
                                    "failed)")
        datastore = self.datastore() if self.datastore else None
        image_id = self.image_id(datastore, image)
        volume_header(image, f"image '{image_id}'" if image_id else "the uploaded image", self.max_voxels,
                      upload=image_id is None)
        data["fewshot_query_id"] = image_id
        support_image = first_value(data.get("support_image"))
        support_image = None if is_blank(support_image) else str(support_image).strip()
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
        raise task_refusal(422, f"no labelled slice to learn from: {detail}. To fix: {hint}")

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
                raise task_refusal(404, f"support_image '{image_id}' is not an image of the datastore")
            return None
        label_id = datastore.get_label_by_image_id(image_id, DefaultLabelTag.FINAL.value)
        path = datastore.get_label_uri(label_id, DefaultLabelTag.FINAL.value) if label_id else ""
        if not path or not os.path.exists(path):
            if strict:
                raise task_refusal(404, f"support_image '{image_id}' has no saved final label: label it and save it "
                                        "first")
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
        seg_uid = first_value(data.get("support_seg"))
        if is_blank(seg_uid):
            return None
        seg_uid = str(seg_uid).strip()
        if pacs is None:
            raise task_refusal(400, "parameter 'support_seg' names a DICOM SEG in a PACS, but this server's datastore "
                                    "is a folder: send the label instead, or start the server on the PACS")
        series = pacs.seg_reference(seg_uid)
        if series not in (image_id, support_image):
            target = f"the image's series {image_id}" + (f" or support_image {support_image}" if support_image else "")
            raise task_refusal(422, f"SEG {seg_uid} labels series {series}, not {target}: a SEG is a label of the "
                                    f"series it was drawn on. Run the task on {series}, or segment this image from that "
                                    f"patient with support_image={series}")
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
            raise task_refusal(422, f"{where}: its shape {tuple(label.shape)} does not match the image's {expected}; "
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
                raise task_refusal(400, "parameter 'support_slices' must list slice indices or be 'all', "
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
                raise task_refusal(422, f"{where} has no organ {unknown}; it has {sorted(organs.values())}")
            return {v: n for v, n in organs.items() if n in map(str, asked) or str(v) in map(str, asked)}
        selected = data.get("selected_label_name")
        if isinstance(selected, str) and selected in organs.values():
            return {v: n for v, n in organs.items() if n == selected}
        return organs
