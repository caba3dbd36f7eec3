"""MONAI Label app of SD-FSMIS: few-shot segmentation from a few labelled slices.

    python -m monailabel.main start_server --app monailabel_app --studies <folder of NIfTI> \
        [--conf checkpoint <model.pt>] [--conf labels phantom] ...
    python -m monailabel.main start_server --app monailabel_app --studies http://<pacs>:8042/dicom-web ...

With a DICOMweb URL as ``--studies`` the datastore is a PACS (``lib/datastores/pacs.py``): labels are
DICOM SEGs there, results go back as SEGs.

The tasks live in ``lib/`` (MONAI Label's app layout); this file only wires them. The ``--conf``
keys are listed in ``lib/configs/fewshot.py``; the client flows in ``lib/infers/fewshot.py``.
"""

import logging
import os
from typing import Dict

import lib  # noqa: F401  (puts <repo>/bundle on sys.path before anything imports `scripts`)
from lib.configs.fewshot import FewShot
from lib.datastores.pacs import PacsDatastore

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
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="SD-FSMIS few-shot segmentation",
            description="Label an organ on a few slices; get it on every slice, or in another patient's scan",
            version="0.1.0",
        )

    def init_remote_datastore(self) -> Datastore:
        store = super().init_remote_datastore()
        if isinstance(store, DICOMWebDatastore):  # a PACS: SEGs as labels and results (lib/datastores/pacs.py)
            names = {value: name for name, value in self.fewshot.labels.items()}
            return PacsDatastore(store, label_names=names, timeout_s=float(self.conf.get("pacs_timeout", 30)))
        return store

    def _download_dcmqi_tools(self):
        # MONAI Label fetches dcmqi from GitHub here (fatal offline); this app writes SEGs with pydicom-seg
        logger.info("dcmqi tools not needed: the app writes DICOM SEGs itself")

    def init_infers(self) -> Dict[str, InferTask]:
        return dict(self.fewshot.infer())

    def init_trainers(self) -> Dict[str, TrainTask]:
        return {self.fewshot.name: self.fewshot.trainer()}
