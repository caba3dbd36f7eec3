"""Fine-tuning from the datastore's labelled images through the bundle's own training workflow.

MONAI Label runs a train task in a separate process; this task, holding the training folder's lock
(``train.lock``: a second server on the same app folder is refused rather than rebuilding the
dataset under a running training), then

1. checks every image with a ``final`` label and its label (header first: size within
   ``max_voxels``; the label readable, on the image's grid, not empty); a bad one stops the task
   with its image id in the error;
2. writes a dataset folder in the layout the bundle reads (``image_N.nii.gz`` / ``label_N.nii.gz``,
   N = 1, 2, ...; links where the files already are ``.nii.gz``, a cleaned copy where a label holds
   scribbles) with a dataset preset naming the label values by the names saved with the labels
   (``label_info``), else the app's ``labels`` setting, else ``label_<value>``; ``dataset.json``
   records which datastore image became which N;
3. runs ``python -m monai.bundle run training --config_file <repo>/bundle/configs/train.yaml`` in a
   subprocess with that folder, every volume as a training volume (no fold held out: the user's
   labels are all training data), ground-truth episodes only, no test classes, and the segmenter
   started from the model served now; a request's ``overrides`` may set only the numeric keys of
   ``TUNABLE`` (a config value is code to MONAI's parser: nothing else from a client reaches it);
4. compares the model served now and the new one on the training workflow's own validation (its
   ``validate#evaluator``: mean 3D Dice of EP1 cases, the first labelled image as support and the
   next ``val_queries`` as queries, every organ; the user's own images, so it catches a run that
   broke the model, not overfitting) and serves the new one only if its Dice is not lower
   (``lib/served_model.py``: written into the training folder by one rename, the one it replaces
   kept; the configured checkpoint is never written).

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
from filelock import FileLock, Timeout

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask

from scripts.network.model_config import TRAINED, ModelConfig
from scripts.network.model_file import as_single_file, load_checkpoint_file

from lib import BUNDLE
from lib.labelmaps import ignored_segment, label_values
from lib.request_params import parse_label_info
from lib.responses import DEFAULT_MAX_VOXELS, check_label_on_image, without_paths, write_label_like
from lib.served_model import ServedModel

# train.yaml keys a request's "overrides" may set, to numbers only
TUNABLE = ("batch_size", "lr", "lr_vtct", "weight_decay", "grad_clip", "ema_decay", "val_interval", "val_queries",
           "steps_per_epoch", "ckpt_interval", "seed", "shots", "dice_weight")
MAX_STEPS = 100_000

logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    pass


class FewShotTrain(TrainTask):
    def __init__(self, checkpoint: ServedModel | str, work_dir: str, config_file: str | Path,
                 model_keys: dict | None = None, steps: int = 200, description: str = "Fine-tune the few-shot model",
                 label_names: dict[int, str] | None = None, max_voxels: int | None = DEFAULT_MAX_VOXELS):
        super().__init__(description)
        self.served = checkpoint if isinstance(checkpoint, ServedModel) else ServedModel(checkpoint, work_dir)
        self.work_dir = Path(work_dir)
        self.label_names = dict(label_names or {})  # the app's ``labels`` setting: value -> name
        self.max_voxels = max_voxels
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
        names: dict[int, str] = {}      # value -> organ name, from the labels' own label_info first
        fallback: dict[int, str] = {}   # from the app's labels setting, else label_<value>
        mapping = {}
        for pid, image_id in enumerate(image_ids, start=1):
            label_id = datastore.get_label_by_image_id(image_id, final)
            files = {"image": datastore.get_image_uri(image_id), "label": datastore.get_label_uri(label_id, final)}
            try:
                label = check_label_on_image(files["label"], files["image"], "its final label", self.max_voxels,
                                             nonempty=True)
            except HTTPException as error:
                raise TrainingError(f"image '{image_id}': {error.detail}; fix or remove its final label, then train "
                                    "again") from None
            saved = self.saved_names(datastore.get_label_info(label_id, final) or {})
            ignored = [v for v, name in saved.items() if ignored_segment(name)]
            for value in label_values(label):
                if value in ignored:
                    continue
                if value in saved and value not in names:
                    names[value] = saved[value]
                fallback.setdefault(value, self.label_names.get(value, f"label_{value}"))
            for key, source in files.items():
                target = folder / f"{key}_{pid}.nii.gz"
                if target.exists() or target.is_symlink():
                    target.unlink()
                if key == "label" and np.isin(label, ignored).any():  # scribbles are not an organ to learn
                    write_label_like(np.where(np.isin(label, ignored), 0, label), sitk.ReadImage(str(source)), target)
                elif str(source).endswith(".nii.gz"):
                    target.symlink_to(Path(source).resolve())
                else:
                    sitk.WriteImage(sitk.ReadImage(str(source)), str(target))
            mapping[pid] = {"image_id": image_id, **files}
        labels: dict[str, int] = {}
        for value in sorted(fallback):
            name = names.get(value, fallback[value])
            labels[name if name not in labels else f"{name}_{value}"] = value
        preset = {"name": "datastore", "labels": labels}
        (folder / "dataset.json").write_text(json.dumps({"preset": preset, "volumes": mapping}, indent=2))
        return preset

    @staticmethod
    def saved_names(info: dict) -> dict[int, str]:
        """Value names saved with a label (as the infer task reads them), scribbles included."""
        try:
            names = parse_label_info(info.get("label_info"))
            if not names:
                stored = info.get("label_names") or (info.get("params") or {}).get("label_names") or {}
                names = parse_label_info(stored) if isinstance(stored, dict) else {}
        except HTTPException:
            names = {}
        return names

    @classmethod
    def stored_names(cls, info: dict) -> dict[int, str]:
        """Value names saved with a label, organs only."""
        return {value: name for value, name in cls.saved_names(info).items() if not ignored_segment(name)}

    # ---- 2. the bundle's workflow ----------------------------------------------------------------
    @staticmethod
    def checked_overrides(overrides) -> dict:
        """A request's ``overrides``: numbers for the keys of ``TUNABLE``, nothing else."""
        if not overrides:
            return {}
        if not isinstance(overrides, dict):
            raise TrainingError(f"'overrides' must be a mapping of train.yaml keys to numbers, got {overrides!r}"[:200])
        refused = {k: v for k, v in overrides.items()
                   if k not in TUNABLE or isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v)}
        if refused:
            raise TrainingError(f"'overrides' may set only {list(TUNABLE)}, to numbers; refused: {refused!r}"[:400])
        return dict(overrides)

    def workflow_args(self, dataset_dir: Path, preset: dict, run_dir: Path, steps: int, overrides: dict,
                      start_from: str) -> dict:
        """train.yaml overrides of this fine-tuning, as values (``command`` writes them for the command line)."""
        checkpoint = {}
        if os.path.exists(start_from):
            checkpoint = {"segmenter#checkpoint": start_from}
            stored = load_checkpoint_file(start_from)["config"] or {}
            # every key that shapes the weights: a model fine-tunes as the architecture it is
            network = {k: stored[k] for k in ModelConfig.keys(TRAINED) if k in stored}
        else:
            network = {"preset": "compact"}
            logger.warning(f"no checkpoint at {start_from}: training a fresh '{network['preset']}' model")
        return {
            "bundle_root": str(BUNDLE),
            "dataset_dir": str(dataset_dir),
            "dataset": preset,
            "label_source": "gt",
            "test_labels": [],
            "train_volumes": "$@volumes",
            "steps": steps,
            "steps_per_epoch": max(1, min(100, steps)),
            "output_dir": str(run_dir),
            "cache_dir": str(self.work_dir / "latents"),
            **{k: v for k, v in {**network, **self.model_keys}.items() if v is not None},
            **checkpoint,
            **overrides,
        }

    def command(self, args: dict) -> list[str]:
        cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(self.config_file)]
        for key, value in args.items():
            cmd += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
        return cmd

    def validation_dice(self, checkpoint: str, args: dict) -> float | None:
        """Mean Dice of ``checkpoint`` on the training workflow's own validation cases (train.yaml's
        ``validate#evaluator``, its handlers off); None when there is no such file."""
        from monai.bundle import ConfigParser

        if not os.path.exists(checkpoint):
            return None
        parser = ConfigParser()
        parser.read_config(str(self.config_file))
        parser.update({**args, "segmenter#checkpoint": checkpoint, "validate#handlers": []})
        evaluator = parser.get_parsed_content("validate#evaluator")
        evaluator.run()
        return float(evaluator.state.metrics["val_mean_dice"])

    def __call__(self, request, datastore: Datastore):
        start = time.time()
        if not self.config_file.is_file():
            raise TrainingError(f"the training workflow {self.config_file} is missing")
        try:
            steps = int(request.get("steps", self.steps))
        except (TypeError, ValueError):
            raise TrainingError(f"'steps' must be an integer, got {request.get('steps')!r}"[:200]) from None
        if not 1 <= steps <= MAX_STEPS:
            raise TrainingError(f"'steps' must be between 1 and {MAX_STEPS}, got {steps}")
        overrides = self.checked_overrides(request.get("overrides"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.work_dir / "train.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise TrainingError("another training is running on this app's training folder (another server on the "
                                "same app folder?): wait until it ends") from None
        try:
            return self.train(steps, overrides, datastore, start)
        finally:
            lock.release()

    def train(self, steps: int, overrides: dict, datastore: Datastore, start: float) -> dict:
        stamp = time.strftime("%Y%m%d_%H%M%S")
        dataset_dir = self.work_dir / "dataset"
        if dataset_dir.exists():
            shutil.rmtree(dataset_dir)
        preset = self.build_dataset(datastore, dataset_dir)
        served = self.served.path()  # the model served now: the start, and the one to beat
        run_dir = self.work_dir / f"run_{stamp}"
        args = self.workflow_args(dataset_dir, preset, run_dir, steps, overrides, served)
        cmd = self.command(args)
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
            raise TrainingError(f"the training workflow failed (exit {code}): " + without_paths(" | ".join(tail[-5:])))
        exported = run_dir / "model.pt"
        if not exported.is_file():
            raise TrainingError("training finished but exported no model")
        before, after = self.validation_dice(served, args), self.validation_dice(str(exported), args)
        promoted = before is None or after >= before
        record = {"steps": steps, "volumes": len(json.loads((dataset_dir / "dataset.json").read_text())["volumes"]),
                  "labels": preset["labels"], "run_dir": str(run_dir), "started_from": served,
                  "validation_dice": {"served": before, "new": after}, "promoted": promoted}
        if promoted:
            # served as one file that one rename replaces (the run's model.pt has its card beside it)
            single = run_dir / "model.served.pt"
            as_single_file(exported, single)
            self.served.promote(single, record)
        else:
            logger.warning(f"few-shot training: the new model's validation Dice {after:.4f} is below the served "
                           f"model's {before:.4f}: it is kept in {run_dir}, not served")
        self._stats = {**record, "checkpoint": self.served.path(), "seconds": round(time.time() - start, 1),
                       "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        logger.info(f"few-shot training done: {self._stats}")
        return self._stats
