"""Fine-tuning from the datastore's labelled images through the bundle's own training workflow.

MONAI Label runs a train task in a separate process; this task then

1. writes a dataset folder in the layout the bundle reads (``image_N.nii.gz`` / ``label_N.nii.gz``,
   N = 1, 2, ...; links where the files already are ``.nii.gz``) from every image with a ``final``
   label, with a dataset preset naming the label values found (``dataset.json`` records which
   datastore image became which N);
2. runs ``python -m monai.bundle run training --config_file <repo>/bundle/configs/train.yaml`` in a
   subprocess with that folder, every volume as a training volume (no fold held out: the user's
   labels are all training data), ground-truth episodes only, no test classes, and the segmenter
   started from the current checkpoint;
3. replaces the checkpoint atomically with the exported EMA weights, which the infer task notices
   (file time) and loads on its next call.

Limit: a final label is trained on as it is, slices that came from an earlier inference included
(MONAI Label saves a label without saying which slices were reviewed): save predictions as final
only after checking them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from fastapi import HTTPException

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask

from lib import BUNDLE
from lib.infers.fewshot import ignored_segment, label_values, parse_label_info

logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    pass


class FewShotTrain(TrainTask):
    def __init__(self, checkpoint: str, work_dir: str, config_file: str | Path, model_keys: dict | None = None,
                 steps: int = 200, description: str = "Fine-tune the few-shot model"):
        super().__init__(description)
        self.checkpoint = str(checkpoint)
        self.work_dir = Path(work_dir)
        self.config_file = Path(config_file)
        self.model_keys = {k: v for k, v in (model_keys or {}).items() if v is not None}
        self.steps = steps
        self._stats: dict = {}

    def config(self):
        # a request may also carry "overrides": {train.yaml key: value}, e.g. {"batch_size": 4}
        return {"steps": self.steps}

    def stats(self):
        return self._stats

    # ---- 1. the dataset folder --------------------------------------------------------------
    def build_dataset(self, datastore: Datastore, folder: Path) -> dict:
        """image_N / label_N files of every image with a final label; returns the dataset preset."""
        import SimpleITK as sitk

        final = DefaultLabelTag.FINAL.value
        image_ids = sorted(datastore.get_labeled_images())
        if not image_ids:
            raise TrainingError("no image of the datastore has a final label: label and save some before training")
        folder.mkdir(parents=True, exist_ok=True)
        names: dict[int, str] = {}
        mapping = {}
        for pid, image_id in enumerate(image_ids, start=1):
            label_id = datastore.get_label_by_image_id(image_id, final)
            files = {"image": datastore.get_image_uri(image_id), "label": datastore.get_label_uri(label_id, final)}
            for key, source in files.items():
                target = folder / f"{key}_{pid}.nii.gz"
                if target.exists() or target.is_symlink():
                    target.unlink()
                if str(source).endswith(".nii.gz"):
                    target.symlink_to(Path(source).resolve())
                else:
                    sitk.WriteImage(sitk.ReadImage(str(source)), str(target))
            mapping[pid] = {"image_id": image_id, **files}
            label = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"label_{pid}.nii.gz")))
            stored = self.stored_names(datastore.get_label_info(label_id, final) or {})
            for value in label_values(label.astype(np.int64)):
                names.setdefault(value, stored.get(value, f"label_{value}"))
        preset = {"name": "datastore", "labels": {name: value for value, name in sorted(names.items())}}
        (folder / "dataset.json").write_text(json.dumps({"preset": preset, "volumes": mapping}, indent=2))
        return preset

    @staticmethod
    def stored_names(info: dict) -> dict[int, str]:
        """Value names stored with a saved label (as the infer task reads them), organs only."""
        try:
            names = parse_label_info(info.get("label_info"))
            if not names:
                stored = info.get("label_names") or (info.get("params") or {}).get("label_names") or {}
                names = parse_label_info(stored) if isinstance(stored, dict) else {}
        except HTTPException:
            names = {}
        return {value: name for value, name in names.items() if not ignored_segment(name)}

    # ---- 2. the bundle's workflow ----------------------------------------------------------------
    def command(self, dataset_dir: Path, preset: dict, run_dir: Path, steps: int, overrides: dict) -> list[str]:
        from scripts.network.presets import load_checkpoint_file

        start_from = {}
        if os.path.exists(self.checkpoint):
            start_from = {"segmenter#checkpoint": self.checkpoint}
            stored = load_checkpoint_file(self.checkpoint)["config"]
            network = {k: stored.get(k) for k in ("preset", "autoencoder", "mask_codec", "visual_encoder")}
        else:
            network = {"preset": "compact"}
            logger.warning(f"no checkpoint at {self.checkpoint}: training a fresh '{network['preset']}' model")
        args = {
            "bundle_root": str(BUNDLE),
            "dataset_dir": str(dataset_dir),
            "dataset": json.dumps(preset),
            "label_source": "gt",
            "test_labels": "[]",
            "train_volumes": "$@volumes",
            "steps": steps,
            "steps_per_epoch": max(1, min(100, steps)),
            "output_dir": str(run_dir),
            "cache_dir": str(self.work_dir / "latents"),
            **{k: v for k, v in {**network, **self.model_keys}.items() if v is not None},
            **start_from,
            **overrides,
        }
        cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(self.config_file)]
        for key, value in args.items():
            cmd += [f"--{key}", str(value)]
        return cmd

    def __call__(self, request, datastore: Datastore):
        start = time.time()
        if not self.config_file.is_file():
            raise TrainingError(f"the training workflow {self.config_file} is missing")
        steps = int(request.get("steps", self.steps))
        overrides = {k: v for k, v in (request.get("overrides") or {}).items()}
        stamp = time.strftime("%Y%m%d_%H%M%S")
        dataset_dir = self.work_dir / "dataset"
        if dataset_dir.exists():
            shutil.rmtree(dataset_dir)
        preset = self.build_dataset(datastore, dataset_dir)
        run_dir = self.work_dir / f"run_{stamp}"
        cmd = self.command(dataset_dir, preset, run_dir, steps, overrides)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(BUNDLE), os.environ.get("PYTHONPATH", "")) if p)}
        logger.info("few-shot training: " + " ".join(cmd))
        process = subprocess.Popen(cmd, cwd=str(BUNDLE), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   universal_newlines=True)
        tail = []
        for line in process.stdout:
            line = line.rstrip()
            if line:
                logger.info(line)
                tail = (tail + [line])[-20:]
        code = process.wait()
        if code != 0:
            raise TrainingError(f"the training workflow failed (exit {code}): " + " | ".join(tail[-5:]))
        exported = run_dir / "model.pt"
        if not exported.is_file():
            raise TrainingError(f"training finished but wrote no {exported}")
        target = Path(self.checkpoint)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".tmp")
        shutil.copyfile(exported, tmp)
        tmp.replace(target)  # the infer task reloads on the new file time
        self._stats = {"steps": steps, "volumes": len(json.loads((dataset_dir / "dataset.json").read_text())["volumes"]),
                       "labels": preset["labels"], "run_dir": str(run_dir), "checkpoint": str(target),
                       "seconds": round(time.time() - start, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        logger.info(f"few-shot training done: {self._stats}")
        return self._stats
