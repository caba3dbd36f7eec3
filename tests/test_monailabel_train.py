"""The app's train task fine-tunes from a datastore's final labels through the bundle's workflow.

In-process task, real ``python -m monai.bundle run training`` subprocess (about half a minute):
two phantoms with saved final labels, two steps, and the checkpoint the infer task reads is replaced
by one that loads.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("monailabel")

REPO = Path(__file__).resolve().parents[1]
TRAIN_YAML = REPO / "bundle" / "configs" / "train.yaml"


@pytest.mark.skipif(not TRAIN_YAML.is_file(), reason="bundle/configs/train.yaml is absent")
def test_fine_tuning_from_the_datastore(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    monkeypatch.syspath_prepend(str(REPO / "monailabel_app"))
    from lib.trainers.fewshot import FewShotTrain
    from monailabel.datastore.local import LocalDatastore
    from scripts.data.phantoms import write_phantom_dataset
    from scripts.network.presets import build_segmenter, load_checkpoint_file, save_checkpoint_file

    phantoms = write_phantom_dataset(tmp_path / "phantoms", n_volumes=3, size=64, depth=12, seed=1)
    studies = tmp_path / "studies"
    studies.mkdir()
    for pid in (1, 2, 3):
        shutil.copy(phantoms / f"image_{pid}.nii.gz", studies / f"image_{pid}.nii.gz")
    datastore = LocalDatastore(str(studies), auto_reload=False)
    label_info = [{"name": "liver", "idx": 1}, {"name": "right_kidney", "idx": 2}, {"name": "left_kidney", "idx": 3},
                  {"name": "spleen", "idx": 4}, {"name": "foreground_scribbles", "idx": 5}]
    for pid in (1, 2):
        datastore.save_label(f"image_{pid}", str(phantoms / f"label_{pid}.nii.gz"), "final", {"label_info": label_info})
    checkpoint = tmp_path / "model.pt"
    save_checkpoint_file(build_segmenter(preset="tiny"), checkpoint)
    before = os.stat(checkpoint).st_mtime_ns

    task = FewShotTrain(str(checkpoint), str(tmp_path / "train"), TRAIN_YAML, steps=2)
    stats = task({"model": "fewshot", "steps": 2, "overrides": {"batch_size": 2, "val_interval": 100}}, datastore)

    assert stats["volumes"] == 2
    assert stats["labels"] == {"liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4}
    assert os.stat(checkpoint).st_mtime_ns != before
    assert load_checkpoint_file(checkpoint)["config"]["preset"] == "tiny"
    build_segmenter(checkpoint=checkpoint)  # the infer task's loader accepts it
    assert sorted(p.name for p in (tmp_path / "train" / "dataset").glob("*_1.nii.gz")) == ["image_1.nii.gz", "label_1.nii.gz"]
