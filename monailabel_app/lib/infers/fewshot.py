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
every organ on every slice it predicted (``lib/prediction_record.py``). A slice of a later support
whose organs all match that record exactly (the user accepted it untouched) is left out; a slice
the user edited, or drew, is a shot. ``support_slices`` (a list of slice indices, or ``all``) overrides this:
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

This module is the task itself; its parts live beside it: the request's parameters in
``lib/request_params.py``, the support in ``lib/supports.py``, the model in ``lib/served_model.py``,
the PACS's copy of the result in ``lib/pacs_results.py``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from typing import Any, Callable

import numpy as np
import torch
from monai.data import MetaTensor

from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from lib.labelmaps import label_values, slices_first
from lib.pacs_results import keeps_results, store_in_pacs
from lib.prediction_record import PredictionRecord, RecordPredictionsd
from lib.request_params import SegmentationParams
from lib.responses import DEFAULT_MAX_VOXELS, task_refusal
from lib.served_model import SLOW_NOTE, FewShotModel
from lib.supports import ResolveSupportd, Support
from scripts.data.volumes import DataError
from scripts.engine.inferer import VOLUME_MODES, SupportError, segment_files
from scripts.network.model_config import ModelConfig
from scripts.network.pipeline import EmptySupportError

logger = logging.getLogger(__name__)


class FewShotInfer(BasicInferTask):
    """SD-FSMIS few-shot segmentation as a MONAI Label infer task (see the module docstring)."""

    def __init__(self, model: FewShotModel, type=InferType.SEGMENTATION, labels: dict[str, int] | None = None,
                 datastore: Callable[[], Any] | None = None, max_shots: int = ModelConfig.max_shots, threshold: float | None = None,
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
                "device": [device],  # the one this server runs on, not every device MONAI Label finds
            },
        )
        self.model = model
        self.defaults = SegmentationParams(threshold, threshold_mode, max_shots, volume_mode)  # a request overrides
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
        if keeps_results(datastore):  # last: a call that fails stores nothing
            result["stored_seg"] = store_in_pacs(datastore, request, label_file, result["labels"],
                                                 self.config().get("store_result", True))
        return label_file, result

    def run_inferer(self, data, convert_to_batch=True, device="cuda"):
        support: Support = data["support"]
        params = self.defaults.read(data)
        segmenter = self.model.get(device)
        if segmenter.config.preset == "sd15" and str(device).startswith("cpu"):
            logger.info("few-shot: running the sd15 preset on the CPU; " + SLOW_NOTE)
        used_threshold = segmenter.threshold if params.threshold is None else params.threshold
        used_mode = params.threshold_mode or segmenter.threshold_mode
        start = time.time()
        with self.model.lock:  # the latent cache is shared, and its counts are read around this call
            cache_before = dict(getattr(segmenter, "latent_cache_stats", {}))
            try:
                label, query, segmentation = segment_files(
                    segmenter, support.image, support.label, data["image"], labels=support.labels,
                    max_shots=params.max_shots, support_slices=support.slices, slice_axis=self.slice_axis,
                    mode=params.volume_mode, threshold=params.threshold, threshold_mode=params.threshold_mode,
                )
            except (SupportError, DataError, EmptySupportError) as error:
                raise task_refusal(422, str(error)) from None
            cache = {key: round(value - cache_before[key], 3)
                     for key, value in getattr(segmenter, "latent_cache_stats", {}).items()}
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
            "threshold": float(used_threshold), "threshold_mode": used_mode, "max_shots": params.max_shots,
            "volume_mode": params.volume_mode if same_volume else None,
            "preset": segmenter.config.preset, "device": str(device),
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
