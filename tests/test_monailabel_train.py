"""The app's train task fine-tunes from a datastore's final labels through the bundle's workflow.

In-process task, real ``python -m monai.bundle run training`` subprocess (about half a minute):
two phantoms with saved final labels, two steps; the configured checkpoint is never written, the
new model serves from the training folder when its validation is not worse, and loads. The other
tests replace the training run by a copy (``CopyingTrain``) to check what surrounds it: the names,
the lock, a bad volume, a client's overrides, which model serves.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("monailabel")

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
TRAIN_YAML = REPO / "bundle" / "configs" / "train.yaml"


@pytest.mark.skipif(not TRAIN_YAML.is_file(), reason="bundle/configs/train.yaml is absent")
def test_fine_tuning_from_the_datastore(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    monkeypatch.syspath_prepend(str(REPO / "monailabel_app"))
    from lib.trainers.fewshot import FewShotTrain
    from monailabel.datastore.local import LocalDatastore
    from scripts.data.phantoms import write_phantom_dataset
    from scripts.network.model_file import load_checkpoint_file, save_checkpoint_file
    from scripts.network.presets import build_segmenter

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
    before = checkpoint.read_bytes()

    task = FewShotTrain(str(checkpoint), str(tmp_path / "train"), TRAIN_YAML, steps=2)
    stats = task({"model": "fewshot", "steps": 2, "overrides": {"batch_size": 2, "val_interval": 100}}, datastore)

    assert stats["volumes"] == 2
    assert stats["labels"] == {"liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4}
    assert checkpoint.read_bytes() == before  # the configured checkpoint is never written
    dice = stats["validation_dice"]
    assert 0 <= dice["served"] <= 1 and 0 <= dice["new"] <= 1
    assert stats["promoted"] == (dice["new"] >= dice["served"])
    served = tmp_path / "train" / "model.pt"
    assert stats["checkpoint"] == str(served if stats["promoted"] else checkpoint)
    assert task.served.path() == stats["checkpoint"]
    new_model = Path(stats["run_dir"]) / "model.pt"
    assert load_checkpoint_file(new_model)["config"]["preset"] == "tiny"
    build_segmenter(checkpoint=task.served.path())  # the infer task's loader accepts it
    assert sorted(p.name for p in (tmp_path / "train" / "dataset").glob("*_1.nii.gz")) == ["image_1.nii.gz", "label_1.nii.gz"]


# ---- around the training run: a copy of the model stands in for it -------------------------------
def _datastore(tmp_path, label_infos, edit=None):
    """Phantoms with final labels saved as a client saves them (``label_infos``: the params of each
    save; ``edit``: pid -> function writing a changed label)."""
    from monailabel.datastore.local import LocalDatastore
    from scripts.data.phantoms import write_phantom_dataset

    phantoms = write_phantom_dataset(tmp_path / "phantoms", n_volumes=len(label_infos), size=32, depth=8, seed=2)
    studies = tmp_path / "studies"
    studies.mkdir()
    datastore = LocalDatastore(str(studies), auto_reload=False)
    for pid, info in enumerate(label_infos, start=1):
        shutil.copy(phantoms / f"image_{pid}.nii.gz", studies / f"image_{pid}.nii.gz")
    datastore.refresh()
    for pid, info in enumerate(label_infos, start=1):
        label = phantoms / f"label_{pid}.nii.gz"
        if edit and pid in edit:
            label = edit[pid](label, tmp_path / f"edited_{pid}.nii.gz")
        datastore.save_label(f"image_{pid}", str(label), "final", info)
    return datastore


def _copying_train(tmp_path, scores: dict[str, float]):
    """A FewShotTrain whose training run copies the checkpoint it starts from and whose validation
    answers ``scores`` ("served", "new") by which model it is asked about."""
    from lib.trainers.fewshot import FewShotTrain

    class CopyingTrain(FewShotTrain):
        def command(self, args):  # the "trained" model: the start, with the run's name appended
            source, out = args.get("segmenter#checkpoint"), args["output_dir"]
            code = (f"import os, shutil; os.makedirs({out!r}); target = os.path.join({out!r}, 'model.pt'); "
                    f"shutil.copy({source!r}, target); open(target, 'ab').write({out!r}.encode())")
            return [sys.executable, "-c", code]

        def validation_dice(self, checkpoint, args):
            return scores["new" if "run_" in str(checkpoint) else "served"]

    return CopyingTrain


def _tiny_checkpoint(path: Path) -> Path:
    from scripts.network.model_file import save_checkpoint_file
    from scripts.network.presets import build_segmenter

    save_checkpoint_file(build_segmenter(preset="tiny"), path)
    return path


def test_organs_keep_the_names_saved_with_their_labels_and_scribbles_are_not_organs(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "monailabel_app"))
    import nibabel as nib
    import numpy as np
    from lib.trainers.fewshot import FewShotTrain

    def with_scribbles(source, target):
        image = nib.load(source)
        data = np.asarray(image.dataobj).copy()
        data[:4, :4, :] = 9  # a scribbles layer of Slicer's labelmap
        nib.save(nib.Nifti1Image(data, image.affine), target)
        return target

    named = {"label_info": [{"name": "liver", "idx": 1}, {"name": "right_kidney", "idx": 2},
                            {"name": "left_kidney", "idx": 3}, {"name": "spleen", "idx": 4},
                            {"name": "background_scribbles", "idx": 9}]}
    # the first image carries no names: the second one's still name the organs
    datastore = _datastore(tmp_path, [{}, named], edit={2: with_scribbles})
    task = FewShotTrain(str(tmp_path / "model.pt"), str(tmp_path / "train"), TRAIN_YAML,
                        label_names={4: "spleen_from_conf"})
    preset = task.build_dataset(datastore, tmp_path / "train" / "dataset")
    assert preset["labels"] == {"liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4}
    label_2 = np.asarray(nib.load(tmp_path / "train" / "dataset" / "label_2.nii.gz").dataobj)
    assert 9 not in np.unique(label_2) and {1, 4} <= set(np.unique(label_2))
    unnamed = FewShotTrain(str(tmp_path / "model.pt"), str(tmp_path / "train2"), TRAIN_YAML,
                           label_names={4: "spleen_from_conf"})
    preset = unnamed.build_dataset(_datastore(tmp_path / "b", [{}, {}]), tmp_path / "train2" / "dataset")
    assert preset["labels"] == {"label_1": 1, "label_2": 2, "label_3": 3, "spleen_from_conf": 4}


def test_a_bad_volume_is_named_by_its_image_id(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "monailabel_app"))
    import nibabel as nib
    import numpy as np
    from lib.trainers.fewshot import FewShotTrain, TrainingError

    def other_grid(source, target):
        nib.save(nib.Nifti1Image(np.ones((16, 16, 8), np.int16), np.eye(4)), target)
        return target

    datastore = _datastore(tmp_path, [{}, {}, {}], edit={3: other_grid})
    task = FewShotTrain(str(tmp_path / "model.pt"), str(tmp_path / "train"), TRAIN_YAML)
    with pytest.raises(TrainingError, match=r"image 'image_3': its final label: its shape \(16, 16, 8\)"):
        task({"steps": 2}, datastore)
    assert not (tmp_path / "train" / "model.pt").exists()


def test_a_client_cannot_set_other_training_keys(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "monailabel_app"))
    from lib.trainers.fewshot import FewShotTrain, TrainingError

    task = FewShotTrain(str(tmp_path / "model.pt"), str(tmp_path / "train"), TRAIN_YAML)
    for request in ({"overrides": {"lr": "$__import__('os').system('touch pwned')"}},
                    {"overrides": {"output_dir": "/tmp/elsewhere"}}, {"steps": -3}, {"steps": "many"}):
        with pytest.raises(TrainingError, match="overrides|steps"):
            task(request, datastore=None)
    assert not (BUNDLE / "pwned").exists() and not (tmp_path / "train" / "dataset").exists()


def test_two_servers_on_one_app_folder_do_not_train_at_once(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "monailabel_app"))
    from filelock import FileLock
    from lib.trainers.fewshot import TrainingError

    datastore = _datastore(tmp_path, [{}, {}])
    task = _copying_train(tmp_path, {"served": 0.5, "new": 0.6})(
        str(_tiny_checkpoint(tmp_path / "model.pt")), str(tmp_path / "train"), TRAIN_YAML)
    (tmp_path / "train" / "dataset").mkdir(parents=True)
    (tmp_path / "train" / "dataset" / "image_1.nii.gz").write_text("the running training's")
    other = FileLock(str(tmp_path / "train" / "train.lock"))  # the other server's training holds it
    other.acquire()
    try:
        with pytest.raises(TrainingError, match="another training is running"):
            task({"steps": 2}, datastore)
        assert (tmp_path / "train" / "dataset" / "image_1.nii.gz").read_text() == "the running training's"
    finally:
        other.release()
    task({"steps": 2}, datastore)  # once it ends, this one runs
    assert task.served.path() == str(tmp_path / "train" / "model.pt")


def test_a_new_model_serves_only_if_its_validation_is_not_worse_and_the_previous_is_kept(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "monailabel_app"))
    from lib.served_model import ServedModel
    from scripts.network.model_file import load_checkpoint_file

    datastore = _datastore(tmp_path, [{}, {}])
    checkpoint = _tiny_checkpoint(tmp_path / "model.pt")
    base = checkpoint.read_bytes()
    train_dir = tmp_path / "train"

    def train(served: float, new: float) -> dict:
        time.sleep(1.1)  # run folders are named by the second
        task = _copying_train(tmp_path, {"served": served, "new": new})(str(checkpoint), str(train_dir), TRAIN_YAML)
        return task({"steps": 2}, datastore)

    stats = train(0.5, 0.6)
    assert stats["promoted"] and stats["checkpoint"] == str(train_dir / "model.pt")
    first = (train_dir / "model.pt").read_bytes()
    # the run's model, served as one file that one rename replaces (model_file.as_single_file)
    assert first == (Path(stats["run_dir"]) / "model.served.pt").read_bytes() and first != base
    assert load_checkpoint_file(train_dir / "model.pt")["config"]["preset"] == "tiny"

    stats = train(0.5, 0.4)  # worse: kept in its run folder, not served
    assert not stats["promoted"] and (Path(stats["run_dir"]) / "model.pt").is_file()
    assert (train_dir / "model.pt").read_bytes() == first and not (train_dir / "model.previous.pt").exists()

    stats = train(0.5, 0.5)  # equal is not worse: it serves, and the one it replaces is kept
    assert stats["promoted"] and stats["started_from"] == str(train_dir / "model.pt")
    assert (train_dir / "model.previous.pt").read_bytes() == first
    assert (train_dir / "model.pt").read_bytes() == (Path(stats["run_dir"]) / "model.served.pt").read_bytes()
    assert checkpoint.read_bytes() == base
    # a server started on another checkpoint serves that one, not a fine-tuning of this one
    assert ServedModel(_tiny_checkpoint(tmp_path / "other.pt"), train_dir).path() == str(tmp_path / "other.pt")
