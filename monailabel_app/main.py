"""MONAI Label app of SD-FSMIS: few-shot segmentation from a few labelled slices.

    python -m monailabel.main start_server --app monailabel_app --studies <folder of NIfTI> \
        [--conf checkpoint <model.pt>] [--conf labels phantom] ...
    python -m monailabel.main start_server --app monailabel_app --studies http://<pacs>:8042/dicom-web ...

With no ``--conf`` at all it serves the shipped model (``bundle/models/model.pt`` with its TAEF2
weights from ``bundle/models/taef2``), offline.

With a DICOMweb URL as ``--studies`` the datastore is a PACS (``lib/datastores/pacs.py``): labels are
DICOM SEGs there, results go back as SEGs.

The tasks live in ``lib/`` (MONAI Label's app layout); this file only wires them. The ``--conf``
keys are listed in ``lib/configs/fewshot.py``; the client flows in ``lib/infers/fewshot.py``; what
a request may read and where its uploads go in ``lib/uploads.py``; what a saved label must be in
``lib/datastores/local.py``.
"""

import logging
import os
import time
from typing import Dict

from lib.configs.fewshot import FewShot
from lib.datastores.local import CheckedDatastore
from lib.datastores.pacs import PacsDatastore
from lib.infer_route import serve_inference_through
from lib.responses import refusal
from lib.uploads import RequestFiles, Scratch
from lib.warmup import Warmup
from lib.work_queue import WorkQueue

from monailabel.config import settings
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

logger = logging.getLogger(__name__)


class FewShotApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.model_dir = os.path.join(app_dir, "model")
        self.fewshot = FewShot()
        self.fewshot.init("fewshot", self.model_dir, conf, None, studies=studies, datastore=lambda: self.datastore())
        self.scratch: Scratch | None = None  # the server's uploads folder, made when the server starts
        self.work: WorkQueue | None = None  # the server's inference queue (lib/work_queue.py), made when it starts
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="SD-FSMIS few-shot segmentation",
            description="Label an organ on a few slices; get it on every slice, or in another patient's scan",
            version="0.1.0",
        )

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return CheckedDatastore(  # MONAI Label's local folder, with uploads checked before they are stored
            self.studies, extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD, read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
            max_voxels=self.fewshot.max_voxels)

    def on_init_complete(self):
        self.scratch = Scratch()  # the server process only: tasks run in subprocesses make none
        super().on_init_complete()
        self.fewshot.set_threads()
        if self.fewshot.queue_size > 0:  # calls leave the event loop free
            self.work = WorkQueue(self.fewshot.queue_size)
            serve_inference_through(self.work)
        if self.work is not None and self.fewshot.warm_up:  # the model loads and images encode before a call
            warmup = Warmup(self.work, self.fewshot.model, self.fewshot.device, self.fewshot.slice_axis,
                            chunk=self.fewshot.warm_up_chunk)
            warmup.load_model()
            store = self.datastore()
            if isinstance(store, CheckedDatastore):
                warmup.images([store.get_image_uri(i) for i in store.list_images()], self.fewshot.warm_images)
                store.on_image = warmup.image  # from now on, an image opened, added or labelled

    def infer(self, request, datastore=None):
        """MONAI Label's ``infer``, for known models only (404 otherwise), reading only what the request
        may read (``lib/uploads.py``), and leaving none of the request's uploads behind, whatever happens."""
        began = time.time()
        try:
            if request.get("model") not in self._infers:
                raise refusal(404, f"no model {str(request.get('model'))[:80]!r} on this server; its models are "
                                   f"{sorted(self._infers)}", "few-shot")
            RequestFiles(self.scratch, self.datastore, self.sessions).check(request)
            result = super().infer(request, datastore)
            if self.scratch is not None:
                self.scratch.result(result.get("file"))
            return result
        finally:
            if self.scratch is not None:
                self.scratch.end_of_call(began)

    def init_remote_datastore(self) -> Datastore:
        store = super().init_remote_datastore()
        if isinstance(store, DICOMWebDatastore):  # a PACS: SEGs as labels and results (lib/datastores/pacs.py)
            names = {value: name for name, value in self.fewshot.labels.items()}
            return PacsDatastore(store, label_names=names, timeout_s=float(self.conf.get("pacs_timeout", 30)))
        return store

    def _download_dcmqi_tools(self):
        # MONAI Label fetches dcmqi from GitHub here (fatal offline); this app writes SEGs with pydicom-seg
        # private, but 0.8.5 has no public switch: only _init_dicomweb_datastore calls it, on every PACS start
        logger.info("dcmqi tools not needed: the app writes DICOM SEGs itself")

    def init_infers(self) -> Dict[str, InferTask]:
        return dict(self.fewshot.infer())

    def init_trainers(self) -> Dict[str, TrainTask]:
        return {self.fewshot.name: self.fewshot.trainer()}
