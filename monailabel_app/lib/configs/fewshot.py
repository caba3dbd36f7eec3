"""Configuration of the few-shot task: every ``--conf`` key the app reads, with its default.

    --conf checkpoint <file>         model file (default <repo>/bundle/models/model.pt), written by
                                     scripts.network.presets.save_checkpoint_file or by training
    --conf preset compact|tiny|sd15  override the checkpoint's stored preset (rarely needed)
    --conf autoencoder <name>        override the stored autoencoder (unshuffle | taef2 | taesd | sd-vae)
    --conf autoencoder_path <dir>    where that autoencoder's weights are (default: as the checkpoint
                                     stores it; TAEF2, the shipped model's, ships in bundle/models/taef2)
    --conf visual_encoder_path, unet_path   the same for the other pretrained parts
    --conf device auto|cpu|cuda      auto: cuda when available
    --conf max_shots 3               labelled slices used per query slice (nearest first; default: the
                                     model's own, 3)
    --conf volume_mode propagate|nearest  on the image's own label: propagate the drawn organ slice by
                                     slice from the drawn slices (default), or serve every slice
                                     from the nearest drawn slices alone (a request's 'volume_mode' wins)
    --conf threshold <float>         default threshold (none: the checkpoint's own)
    --conf threshold_mode absolute|relative
    --conf keep_largest_3d true|false  keep only one 3D component of each organ (default: the
                                     checkpoint's own, true); false for a structure in several pieces
    --conf component_3d largest|support  which 3D component: the largest always, or the one on the
                                     labelled slices' footprint where the largest lies off it
                                     (default: the checkpoint's own)
    --conf self_support true|false   a support from another image (support_image): read each slice
                                     again with its own first answer as one more shot (default false:
                                     docs/results.md; 2x the network's time, no more encoding; never
                                     in-volume)
    --conf <any other model key>     scripts/network/model_config.py (e.g. use_qe false): overrides the
                                     checkpoint's
    --conf labels <preset|json>      names of label values: a dataset preset (phantom, chaost2, ...)
                                     or {"liver": 1, ...}; clients pre-create these segments
    --conf slice_axis 2              the file axis that runs across slices
    --conf scribbles true|false      also register the scribbles-type entry (3D Slicer)
    --conf prediction_record_dir <dir>   where predicted slices are remembered
                                     (default <studies>/.fewshot/predictions, or for a PACS
                                     <DICOMweb cache>/fewshot_predictions; "none" disables)
    --conf store_result true|false   a PACS as --studies: store each result there as a DICOM SEG
    --conf pacs_timeout 30           a PACS as --studies: seconds before a silent PACS fails the call (424)
    --conf train_steps 200           default fine-tuning length (a request may override it)
    --conf train_dir <dir>           dataset folder, runs and the fine-tuned model (default <app>/model/fewshot);
                                     the checkpoint itself is never written (lib/served_model.py)
    --conf max_voxels 134217728      the most voxels (512^3) of any volume the app reads, image or label,
                                     judged from its header before a voxel is decompressed (413 above)
    --conf queue_size 32             inference calls waiting or running at most (503 with Retry-After
                                     beyond); they run one at a time while the server keeps answering
                                     (lib/work_queue.py); 0: MONAI Label's own endpoint, which blocks
                                     the server during each call, and no warm-up
    --conf warm_up true|false        load the model at start and encode images in the background
                                     before anyone asks: images added, opened or labelled (lib/warmup.py)
    --conf warm_images 4             and that many of the datastore's images at start (the most
                                     recently changed)
    --conf warm_up_chunk 2           slices the warm-up encodes between two looks for a call: what a
                                     call that comes in may wait for (about 0.15 s a slice on 2 cores)
    --conf threads 0                 torch's CPU threads (0: one per core the process may use)
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Optional, Union

import torch

from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.utils.others.generic import strtobool

from scripts.network.model_config import ModelConfig

from lib import REPO
from lib.infers.fewshot import FewShotInfer
from lib.prediction_record import PredictionRecord
from lib.responses import DEFAULT_MAX_VOXELS
from lib.served_model import FewShotModel, ServedModel
from lib.trainers.fewshot import FewShotTrain
from lib.warmup import WARM_UP_CHUNK
from scripts.engine.inferer import VOLUME_MODES

logger = logging.getLogger(__name__)

# every model key overrides the checkpoint's, except those a request may set (their --conf is its default)
PER_REQUEST = ("threshold", "threshold_mode", "max_shots")
MODEL_OVERRIDES = tuple(key for key in ModelConfig.keys() if key not in PER_REQUEST)


def resolve_device(name: str | None) -> str:
    name = (name or "auto").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"device '{name}' asked for but CUDA is not available: using the CPU")
        return "cpu"
    return name


def label_names(value: str | None) -> dict[str, int]:
    """``--conf labels``: a dataset preset name or a JSON mapping name -> value."""
    if not value:
        return {}
    value = value.strip()
    if value.startswith("{"):
        return {str(k): int(v) for k, v in json.loads(value).items()}
    from scripts.data.presets import get_preset

    try:
        return dict(get_preset(value).labels)
    except KeyError as error:
        raise ValueError(f"--conf labels {value!r}: {error.args[0]}") from None


class FewShot(TaskConfig):
    def init(self, name: str, model_dir: str, conf: Dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        conf = self.conf or {}
        self.path = os.path.abspath(conf.get("checkpoint") or REPO / "bundle" / "models" / "model.pt")
        self.model_keys = {key: ModelConfig.parse(key, conf.get(key)) for key in MODEL_OVERRIDES}
        self.device = resolve_device(conf.get("device"))
        self.max_shots = int(conf.get("max_shots") or ModelConfig.max_shots)
        self.threshold = float(conf["threshold"]) if conf.get("threshold") not in (None, "") else None
        self.threshold_mode = conf.get("threshold_mode") or None
        self.volume_mode = conf.get("volume_mode") or "propagate"
        if self.volume_mode not in VOLUME_MODES:
            raise ValueError(f"--conf volume_mode must be one of {VOLUME_MODES}, got {self.volume_mode!r}")
        self.labels = label_names(conf.get("labels"))
        self.slice_axis = int(conf.get("slice_axis", 2))
        self.scribbles = strtobool(conf.get("scribbles", "true"))
        studies = kwargs.get("studies")
        record = conf.get("prediction_record_dir")
        if record is None and studies and not str(studies).startswith(("http://", "https://")):
            record = os.path.join(studies, ".fewshot", "predictions")
        elif record is None and studies:  # a PACS: next to MONAI Label's cache of its series
            from monailabel.config import settings

            cache = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip() or os.path.join(
                os.path.expanduser("~"), ".cache", "monailabel", "dicom")
            record = os.path.join(cache, "fewshot_predictions")
        self.record_dir = None if str(record).lower() == "none" else record
        self.datastore = kwargs.get("datastore")  # a callable giving the app's datastore
        self.train_steps = int(conf.get("train_steps", 200))
        self.max_voxels = int(conf.get("max_voxels") or DEFAULT_MAX_VOXELS)
        self.served = ServedModel(self.path, conf.get("train_dir") or os.path.join(model_dir, name))
        self.store_result = strtobool(conf.get("store_result", "true"))
        self.queue_size = int(conf.get("queue_size", 32))
        self.warm_up = strtobool(conf.get("warm_up", "true"))
        self.warm_images = int(conf.get("warm_images", 4))
        self.warm_up_chunk = int(conf.get("warm_up_chunk", WARM_UP_CHUNK))
        if self.warm_up_chunk < 1:
            raise ValueError(f"--conf warm_up_chunk must be 1 or more slices, got {self.warm_up_chunk}")
        self.threads = int(conf.get("threads", 0))
        self._model: FewShotModel | None = None
        logger.info(f"few-shot task '{name}': checkpoint {self.path} "
                    f"({'present' if os.path.exists(self.path) else 'MISSING: calls will answer 424'}), "
                    f"device {self.device}, max_shots {self.max_shots}, threshold {self.threshold}")

    def set_threads(self) -> None:
        """torch's intra-op threads: as configured, else one per core this process may run on (a
        container's CPU set, not the host's core count)."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(self.threads if self.threads > 0 else cores)
        logger.info(f"few-shot task: {torch.get_num_threads()} torch threads ({cores} cores usable)")

    @property
    def model(self) -> FewShotModel:
        if self._model is None:  # one segmenter shared by both entries
            self._model = FewShotModel(self.path, self.model_keys, locate=self.served.path)
        return self._model

    def infer(self) -> Union[InferTask, Dict[str, InferTask]]:
        common = dict(
            model=self.model, labels=self.labels, datastore=self.datastore, max_shots=self.max_shots,
            threshold=self.threshold, threshold_mode=self.threshold_mode, slice_axis=self.slice_axis,
            volume_mode=self.volume_mode, record=PredictionRecord(self.record_dir), device=self.device, store_result=self.store_result,
            max_voxels=self.max_voxels,
        )
        # both entries share one segmenter and one record of predicted slices
        tasks: Dict[str, InferTask] = {self.name: FewShotInfer(type=InferType.SEGMENTATION, **common)}
        if self.scribbles:
            tasks[f"{self.name}_scribbles"] = FewShotInfer(type=InferType.SCRIBBLES, **common)
        return tasks

    def trainer(self) -> Optional[TrainTask]:
        return FewShotTrain(
            checkpoint=self.served,
            work_dir=self.served.folder,
            config_file=REPO / "bundle" / "configs" / "train.yaml",
            model_keys=self.model_keys,
            steps=self.train_steps,
            label_names={value: name for name, value in self.labels.items()},
            max_voxels=self.max_voxels,
            description="Fine-tune the few-shot model on the datastore's labelled images (bundle training workflow)",
        )
