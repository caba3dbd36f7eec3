"""Training the shipped model: every patient (fold None), every class (test_labels []) and several
datasets in one run (extra_datasets), on phantoms."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from scripts.data.latent_cache import LatentCache
from scripts.data.mixture import EpisodeMixture
from scripts.data.phantoms import phantom_volumes, write_phantom_dataset
from scripts.engine.experiment import (ExtraDataset, episode_dataset, load_extra_datasets, namespaced, run_name,
                                       split_fold, training_record, training_values)

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
# a second dataset whose label values differ from the phantom's 1..4 (as CMR's 200/500/600 do)
X100 = {"base": "phantom", "name": "phantom_x100",
        "labels": {"liver": 100, "right_kidney": 200, "left_kidney": 300, "spleen": 400}}


@pytest.fixture(scope="module")
def main_volumes():
    return phantom_volumes(4, size=64, depth=16, seed=0)


@pytest.fixture(scope="module")
def x100_volumes():
    """Other phantoms, labels times 100, pids namespaced: what load_extra_datasets makes of X100."""
    return namespaced([dataclasses.replace(v, label=v.label * 100) for v in phantom_volumes(4, size=64, depth=16, seed=5)],
                      "phantom_x100")


def _extra(volumes, test_labels=()):
    test = {n: X100["labels"][n] for n in test_labels}
    return ExtraDataset("phantom_x100", volumes, volumes, training_values(X100, list(test_labels)), test)


def test_fold_none_and_no_test_labels_cover_every_class_and_volume(main_volumes):
    train, test = split_fold(main_volumes, None)
    assert train == main_volumes and test == []
    assert split_fold(main_volumes, "null")[0] == main_volumes  # `--fold null` arrives as a string
    values = training_values("phantom", [])
    assert values == {"liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4}
    episodes = episode_dataset(train, list(values.values()), [], label_source="gt", n_episodes=200, seed=1)
    items = [episodes[i] for i in range(len(episodes))]
    assert {item["class_value"] for item in items} == {1, 2, 3, 4}
    used = {pid for item in items for pid in [item["query_pid"], *item["support_pid"]]}
    assert used == {v.pid for v in main_volumes}
    assert run_name("chaost2", 1, [], None, [{"dataset": "cmr", "dataset_dir": "x"}]) == \
        "chaost2+cmr_s1_all-classes_all-patients"
    assert run_name("chaost2", 1, ["liver", "spleen"], 0) == "chaost2_s1_liver-spleen_fold0"  # as before


def test_two_datasets_in_one_sampler(main_volumes, x100_volumes):
    # one training class (liver, 100) against the main dataset's four, so the 4 : 1 draw shows
    extra = _extra(x100_volumes, test_labels=["right_kidney", "left_kidney", "spleen"])
    make = lambda: episode_dataset(main_volumes, [1, 2, 3, 4], [], extras=[extra], label_source="both",  # noqa: E731
                                   n_episodes=300, seed=3, min_supervoxel_pixels=50)
    mixture = make()
    assert isinstance(mixture, EpisodeMixture) and mixture.names == ["phantom", "phantom_x100"]
    by_pid = {v.pid: v for v in main_volumes + x100_volumes}
    datasets = {"phantom": {v.pid for v in main_volumes}, "phantom_x100": {v.pid for v in x100_volumes}}
    allowed = {"phantom": {1, 2, 3, 4}, "phantom_x100": {100}}
    items = [mixture[i] for i in range(len(mixture))]
    for item in items:
        pids = {item["query_pid"], *item["support_pid"]}
        assert pids <= datasets[item["dataset"]], item  # support and query from the one dataset
        query = by_pid[item["query_pid"]]
        source = query.label if item["source"] == "gt" else query.supervoxels
        expected = source[int(item["query_z"])] == item["class_value"]
        assert torch.equal(item["query_mask"][0], torch.from_numpy(expected.astype(np.float32)))
        if item["source"] == "gt":
            assert item["class_value"] in allowed[item["dataset"]], item
    assert all(pid.startswith("phantom_x100:") for pid in datasets["phantom_x100"])
    gt = {(item["dataset"], item["class_value"]) for item in items if item["source"] == "gt"}
    assert gt == {(d, c) for d, values in allowed.items() for c in values}
    share = np.mean([item["dataset"] == "phantom" for item in items])
    assert abs(share - 4 / 5) < 0.08, share  # proportional to the training classes, 4 : 1 (equal shares: 0.5)
    # deterministic per (seed, epoch), new draws per epoch
    again = make()
    assert all(_same(items[i], again[i]) for i in range(0, 300, 7))
    mixture.set_epoch(1)
    assert not all(_same(items[i], mixture[i]) for i in range(20))
    assert all(part.epoch == 1 for part in mixture.parts)
    mixture.set_epoch(0)
    assert all(_same(items[i], mixture[i]) for i in range(20))
    # the shared latent cache keeps both datasets' patient "1" apart, and refuses a collision
    encode = lambda images: images[:, :, ::16, ::16]  # noqa: E731
    cache = LatentCache(encode, "test").add_volumes(main_volumes + x100_volumes)
    assert len(cache.latents) == 8 and {"1", "phantom_x100:1"} <= set(cache.latents)
    with pytest.raises(ValueError, match="namespaced"):
        cache.add_volumes([dataclasses.replace(x100_volumes[0], pid="1")])


def test_an_extra_dataset_keeps_its_own_label_source_and_shares(main_volumes, x100_volumes):
    # the cmr_abdominal_gt recipe: a main dataset whose every class is a test class (supervoxel
    # episodes only) beside another dataset's ground truth, half each
    extra = dataclasses.replace(_extra(x100_volumes), label_source="gt")
    mixture = episode_dataset(main_volumes, [], [1, 2, 3, 4], extras=[extra], label_source="supervoxel",
                              n_episodes=200, seed=2, min_supervoxel_pixels=50, weights=[1, 1])
    assert [part.label_source for part in mixture.parts] == ["supervoxel", "gt"]
    items = [mixture[i] for i in range(len(mixture))]
    sources = {(item["dataset"], item["source"]) for item in items}
    assert sources == {("phantom", "supervoxel"), ("phantom_x100", "gt")}
    share = np.mean([item["dataset"] == "phantom" for item in items])
    assert abs(share - 0.5) < 0.1, share  # by classes it would be 1 : 4
    record = training_record("phantom", main_volumes, {}, {"liver": 1}, [extra], 1, "supervoxel")
    assert record["datasets"][1]["label_source"] == "gt" and "label_source" not in record["datasets"][0]
    # without an own label source the record is what it was (checkpoints of older runs still resume)
    assert "label_source" not in training_record("phantom", main_volumes, {}, {}, [_extra(x100_volumes)])["datasets"][1]
    with pytest.raises(ValueError, match="no extra_datasets to mix with"):
        episode_dataset(main_volumes, [1, 2, 3, 4], [], weights=[1])
    with pytest.raises(ValueError, match="one non-negative number per dataset"):
        episode_dataset(main_volumes, [], [1, 2, 3, 4], extras=[extra], label_source="supervoxel",
                        n_episodes=20, min_supervoxel_pixels=50, weights=[1])


def _same(a, b):
    return all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)


def test_contradictions_and_bad_entries_fail_clearly(main_volumes, tmp_path):
    with pytest.raises(ValueError, match="Setting 2 drops .* no test class is given"):
        episode_dataset(main_volumes, [1, 2, 3, 4], [], setting=2)
    with pytest.raises(ValueError, match=r"extra_datasets\[0\] \(cmr\) needs dataset_dir"):
        load_extra_datasets([{"dataset": "cmr", "test_labels": []}], "chaost2")
    with pytest.raises(ValueError, match=r"extra_datasets\[0\] \(cmr\): labels \['liver'\] are not in dataset 'cmr'"):
        load_extra_datasets([{"dataset": "cmr", "dataset_dir": str(tmp_path), "test_labels": ["liver"]}], "chaost2")
    with pytest.raises(ValueError, match="unknown keys \\['testlabels'\\]"):
        load_extra_datasets([{"dataset": "cmr", "dataset_dir": str(tmp_path), "testlabels": []}], "chaost2")
    with pytest.raises(ValueError, match="dataset 'chaost2' is already the main dataset"):
        load_extra_datasets([{"dataset": "chaost2", "dataset_dir": str(tmp_path)}], "chaost2")
    with pytest.raises(ValueError, match="does not exist"):
        load_extra_datasets([{"dataset": "cmr", "dataset_dir": str(tmp_path / "absent")}], "chaost2")
    with pytest.raises(ValueError, match=r"extra_datasets\[0\]: label_source must be one of"):
        load_extra_datasets([{"dataset": "cmr", "dataset_dir": str(tmp_path), "label_source": "labels"}], "chaost2")
    from scripts.engine.evaluation import cases_for_modes

    with pytest.raises(ValueError, match="no fold is held out"):  # evaluate.yaml's eval_folds [@fold]
        cases_for_modes(main_volumes, {"liver": 1}, ["ep1"], folds=["null"])


def _relabelled_phantoms(folder: Path) -> Path:
    """A phantom dataset on disk whose label files hold 100..400: the X100 preset reads it."""
    write_phantom_dataset(folder, n_volumes=3, size=64, depth=12, seed=8)
    for path in folder.glob("label_*.nii.gz"):
        image = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj).astype(np.int16) * 100, image.affine, image.header), path)
    return folder


def _train(tmp_path, extra_keys=None, **overrides):
    """`python -m monai.bundle run training` on 3 phantoms (fold null, every class) plus the X100
    phantoms as an extra dataset (with ``extra_keys``), 3 steps of the tiny preset; ``overrides``
    replace its keys."""
    main = write_phantom_dataset(tmp_path / "main", n_volumes=3, size=64, depth=12, seed=3)
    extra = _relabelled_phantoms(tmp_path / "x100")
    out = tmp_path / "run"
    args = {"dataset": "phantom", "dataset_dir": str(main), "preset": "tiny", "steps": 3, "steps_per_epoch": 3,
            "batch_size": 2, "val_interval": 1, "val_queries": 1, "fold": "null", "test_labels": "[]",
            "extra_datasets": [{"dataset": X100, "dataset_dir": str(extra), **(extra_keys or {})}],
            "output_dir": str(out), "cache_dir": str(tmp_path / "cache"), "bundle_root": ".", **overrides}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.yaml"]
    for key, value in args.items():
        cmd += [f"--{key}", json.dumps(value) if isinstance(value, list) else str(value)]
    proc = subprocess.run(cmd, cwd=BUNDLE, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def test_bundle_trains_on_every_patient_class_and_dataset(tmp_path):
    """One real `python -m monai.bundle run training` with fold null, test_labels [] and an extra
    dataset: it finishes, writes model.pt saying what it was trained on, and caches both datasets."""
    out, proc = _train(tmp_path)
    from scripts.network.model_file import load_checkpoint_file
    from scripts.network.presets import build_segmenter

    stored = load_checkpoint_file(out / "model.pt")
    assert stored["trained_on"] == {
        "datasets": [
            {"dataset": "phantom", "classes": {"liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4},
             "held_out_classes": {}, "patients": ["1", "2", "3"]},
            {"dataset": "phantom_x100", "classes": X100["labels"], "held_out_classes": {}, "patients": ["1", "2", "3"]},
        ],
        "setting": 1, "label_source": "both"}
    cached = sorted(p.name.rsplit("_", 1)[0] for p in (tmp_path / "cache" / "unshuffle").glob("*.pt"))
    assert cached == ["1", "2", "3", "phantom_x100-1", "phantom_x100-2", "phantom_x100-3"]  # one shared cache
    assert "val_mean_dice" in proc.stdout + proc.stderr
    # the record survives a re-save (export, threshold) through build_segmenter
    resaved = tmp_path / "resaved.pt"
    from scripts.network.model_file import save_checkpoint_file

    save_checkpoint_file(build_segmenter(checkpoint=out / "model.pt"), resaved, half=True)
    assert load_checkpoint_file(resaved)["trained_on"] == stored["trained_on"]


def test_bundle_trains_supervoxels_beside_another_datasets_ground_truth(tmp_path):
    """The cmr_abdominal_gt recipe through the real workflow: every main class a test class
    (supervoxel episodes), the extra dataset's ground truth (its own label_source), half each."""
    from scripts.network.model_file import load_checkpoint_file

    out, _ = _train(tmp_path, extra_keys={"label_source": "gt"}, label_source="supervoxel", mixture_weights=[1, 1],
                    test_labels=["liver", "right_kidney", "left_kidney", "spleen"])
    datasets = load_checkpoint_file(out / "model.pt")["trained_on"]["datasets"]
    assert datasets[0]["classes"] == {} and "label_source" not in datasets[0]
    assert datasets[1]["classes"] == X100["labels"] and datasets[1]["label_source"] == "gt"


def test_training_record_names_the_source_pids(main_volumes, x100_volumes):
    record = training_record("phantom", main_volumes[:2], {"liver": 1}, {"spleen": 4}, [_extra(x100_volumes)])
    assert record["datasets"][0] == {"dataset": "phantom", "classes": {"liver": 1}, "held_out_classes": {"spleen": 4},
                                     "patients": ["1", "2"]}
    assert record["datasets"][1]["patients"] == ["1", "2", "3", "4"]
    assert record["datasets"][1]["classes"] == X100["labels"]
