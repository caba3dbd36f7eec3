"""scripts.data.presets and scripts.data.volumes: slice space, the inverse to the file grid, bad inputs."""

import gzip

import nibabel as nib
import numpy as np
import pytest
from shared_paths import shared_path

from scripts.data.presets import PRESETS, DatasetPreset, get_preset
from scripts.data.volumes import DataError, list_pids, load_dataset, load_volume, to_original_grid, volume_from_arrays

AFFINE = np.array([[-1.5, 0, 0, 40.0], [0, 1.2, 0, -30.0], [0, 0, 6.0, 12.0], [0, 0, 0, 1]])


def _save(path, arr, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(arr), affine), str(path))
    return path


def _pair(tmp_path, pid="1", shape=(64, 80, 10), seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 20, shape).astype(np.float32)
    label = rng.integers(0, 4, shape).astype(np.int16)
    return _save(tmp_path / f"image_{pid}.nii.gz", image), _save(tmp_path / f"label_{pid}.nii.gz", label), label


def test_presets_known_and_user_defined():
    assert PRESETS["chaost2"].subdir == "chaos_MR_T2_normalized"
    assert PRESETS["cmr"].labels == {"lv_myo": 200, "lv_bp": 500, "rv": 600}
    assert get_preset("sabs", subdir=None).subdir is None
    with pytest.raises(KeyError, match="chaost2"):
        get_preset("nosuch")
    mine = get_preset({"name": "mine", "labels": {"tumour": "7"}})
    assert isinstance(mine, DatasetPreset) and mine.labels == {"tumour": 7}
    with pytest.raises(ValueError, match="unknown keys"):
        get_preset({"labels": {"a": 1}, "colour": "red"})
    with pytest.raises(ValueError, match="background"):
        get_preset({"labels": {"a": 0}})


def test_label_round_trips_exactly_on_a_non_256_grid(tmp_path):
    image_path, label_path, label = _pair(tmp_path)
    volume = load_volume(image_path, label_path)
    assert volume.image.shape == volume.label.shape == (10, 256, 256)
    assert volume.image.dtype == np.float32 and volume.label.dtype == np.int32
    assert volume.image.min() == pytest.approx(-1.0) and volume.image.max() == pytest.approx(1.0)
    # (slice, row, col): rows are file axis 1 (80 voxels of 1.2 mm), columns file axis 0 (64 of 1.5 mm)
    assert volume.spacing == pytest.approx((6.0, 1.2 * 80 / 256, 1.5 * 64 / 256))
    back = to_original_grid(volume.label, volume)
    assert back.shape == label.shape and back.dtype == np.int32
    np.testing.assert_array_equal(back, label)
    assert to_original_grid(volume.label == 2, volume).dtype == bool


def test_round_trip_with_reorientation(tmp_path):
    image_path, label_path, label = _pair(tmp_path, shape=(40, 48, 6))
    volume = load_volume(image_path, label_path, axcodes="RAS")
    np.testing.assert_array_equal(to_original_grid(volume.label, volume), label)


def test_slice_space_follows_the_simpleitk_array_order():
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 5, (16, 16, 3))
    volume = volume_from_arrays("9", arr.astype(np.float32), arr, size=16, slice_axis=2)
    np.testing.assert_array_equal(volume.label, arr.transpose(2, 1, 0))  # slice z = file[:, :, z].T
    arr0 = rng.integers(0, 5, (3, 16, 16))
    volume = volume_from_arrays("9", arr0.astype(np.float32), arr0, size=16, slice_axis=0)
    np.testing.assert_array_equal(volume.label, arr0.transpose(0, 2, 1))


def _bad_cases(tmp_path):
    """name -> (image path, label path, the file the message must name, words it must contain)."""
    image_path, label_path, _ = _pair(tmp_path)
    missing = tmp_path / "image_404.nii.gz"
    cases = {"missing file": (missing, label_path, missing, "not found")}
    bad = _save(tmp_path / "label_shape.nii.gz", np.zeros((64, 80, 9), np.int16))
    cases["shape mismatch"] = (image_path, bad, bad, "shape")
    shifted = AFFINE.copy()
    shifted[0, 3] += 0.5
    bad = _save(tmp_path / "label_affine.nii.gz", np.zeros((64, 80, 10), np.int16), shifted)
    cases["affine mismatch"] = (image_path, bad, bad, "affine")
    bad = _save(tmp_path / "image_2d.nii.gz", np.ones((64, 80), np.float32))
    cases["non-3D"] = (bad, None, bad, "3D")
    nan = np.ones((64, 80, 10), np.float32)
    nan[3, 4, 5] = np.nan
    bad = _save(tmp_path / "image_nan.nii.gz", nan)
    cases["NaN"] = (bad, None, bad, "NaN")
    bad = tmp_path / "image_corrupt.nii.gz"
    bad.write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    cases["corrupt"] = (bad, None, bad, "cannot read")
    bad = tmp_path / "image_truncated.nii.gz"
    bad.write_bytes(image_path.read_bytes()[:3000])
    cases["truncated"] = (bad, None, bad, "cannot read")
    bad = _save(tmp_path / "label_float.nii.gz", np.full((64, 80, 10), 0.5, np.float32))
    cases["non-integer label"] = (image_path, bad, bad, "non-integer")
    return cases


def test_bad_inputs_raise_data_error_naming_the_file(tmp_path):
    for name, (image, label, culprit, words) in _bad_cases(tmp_path).items():
        with pytest.raises(DataError) as err:
            load_volume(image, label)
        message = str(err.value)
        assert str(culprit) in message and words in message, (name, message)


def test_load_dataset_checks_label_map_and_count(tmp_path):
    for pid in ("10", "2", "1"):
        _pair(tmp_path, pid=pid, shape=(16, 16, 4), seed=int(pid))
    preset = get_preset({"name": "toy", "labels": {"a": 1, "b": 2, "c": 3}})
    assert list_pids(tmp_path, preset) == ["1", "2", "10"]
    volumes = load_dataset(tmp_path, preset)
    assert [v.pid for v in volumes] == ["1", "2", "10"]
    with pytest.raises(DataError, match=r"label_\{pid\}.*\{'d': 9\}"):
        load_dataset(tmp_path, preset, labels={"a": 1, "d": 9})
    with pytest.raises(DataError, match="need at least 5"):
        load_dataset(tmp_path, preset, min_volumes=5)
    with pytest.raises(DataError, match="not found"):
        list_pids(tmp_path / "nowhere", preset)


@pytest.mark.parametrize("name, pids, values", [("chaost2", ["1", "2"], [1, 2, 3, 4]),
                                                ("cmr", ["1", "2"], [200, 500, 600])])
def test_real_data_loads_and_round_trips(name, pids, values):
    root = shared_path("data", {"chaost2": "CHAOST2", "cmr": "CMR"}[name])
    volumes = load_dataset(root, name, pids=pids, with_supervoxels=True)
    assert [v.pid for v in volumes] == pids
    for volume in volumes:
        assert volume.image.shape[1:] == (256, 256) and volume.image.dtype == np.float32
        assert -1.0 <= volume.image.min() < volume.image.max() <= 1.0
        assert volume.meta["label_values"] == values
        assert volume.supervoxels.shape == volume.label.shape and volume.supervoxels.max() > 1
        assert volume.spacing[0] > 5 and volume.spacing[1] == pytest.approx(1.25, abs=0.01)
        original = np.asarray(nib.load(volume.meta["label_path"]).dataobj)
        np.testing.assert_array_equal(to_original_grid(volume.label, volume), original)
