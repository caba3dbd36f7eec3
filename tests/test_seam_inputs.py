"""The seam (``segment_files``) and the bundle's ``run inference`` under odd files (issue 39, items 7-9).

A query stored in another voxel order (axes reversed or permuted, the affine adjusted: the same
anatomy in space) is segmented as the plainly stored one, on its own grid; what one orientation
cannot match is refused with a message; the in-volume case is found by file, not by path string;
``run inference`` reports bad input in one line, before any model loads. ``support_copy`` (paste the
support mask) stands in for the network: what it pastes shows how the slices were matched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scripts.baselines.support_copy import SupportCopy
from scripts.data.volumes import DataError, read_header
from scripts.engine.inferer import segment_files

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from scripts.data.phantoms import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("phantoms"), n_volumes=2, size=64, depth=12, seed=5)


def _stored_as(source: Path, target: Path, flip=(), order=(0, 1, 2)) -> Path:
    """``source`` with its voxels reversed along ``flip`` and its axes put in ``order``, the affine
    adjusted so that every voxel keeps its place in space."""
    image = nib.load(source)
    data, affine = np.asarray(image.dataobj), image.affine.copy()
    for axis in flip:
        data = np.flip(data, axis)
        step = np.eye(4)
        step[axis, axis], step[axis, 3] = -1, data.shape[axis] - 1
        affine = affine @ step
    data = np.transpose(data, order)
    affine[:, :3] = affine[:, list(order)]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), target)
    return target


def _dice(a, b) -> float:
    return 2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


@pytest.mark.parametrize("flip,order", [((0, 1), (0, 1, 2)), ((), (2, 1, 0)), ((0,), (2, 0, 1))],
                         ids=["xy_reversed", "slices_first", "reversed_and_permuted"])
def test_a_query_stored_in_another_order_is_segmented_as_the_plain_one(phantoms, tmp_path, flip, order):
    support, label, query = phantoms / "image_1.nii.gz", phantoms / "label_1.nii.gz", phantoms / "image_2.nii.gz"
    plain, _, _ = segment_files(SupportCopy(), support, label, query, labels={"liver": 1}, max_shots=1)
    truth = np.asarray(nib.load(phantoms / "label_2.nii.gz").dataobj) == 1
    assert _dice(plain == 1, truth) > 0.5  # the phantoms' livers overlap where the slices match

    odd = _stored_as(query, tmp_path / "query_odd.nii.gz", flip, order)
    result, volume, _ = segment_files(SupportCopy(), support, label, odd, labels={"liver": 1}, max_shots=1)
    odd_image = nib.load(odd)
    assert result.shape == odd_image.shape  # on the query file's own grid ...
    np.testing.assert_allclose(volume.meta["original_affine"], odd_image.affine, atol=1e-6)  # ... and affine
    expected = _stored_as_array(plain, flip, order)
    np.testing.assert_array_equal(result, expected)


def _stored_as_array(array, flip, order):
    for axis in flip:
        array = np.flip(array, axis)
    return np.transpose(array, order)


def test_slices_cut_along_another_plane_are_refused(phantoms, tmp_path):
    support, label = phantoms / "image_1.nii.gz", phantoms / "label_1.nii.gz"
    data = np.asarray(nib.load(phantoms / "image_2.nii.gz").dataobj)

    def query(name, affine):
        nib.save(nib.Nifti1Image(data, affine), tmp_path / name)
        return tmp_path / name

    # a sagittal scan: 6 mm slices stacked left to right, where the support's stack from feet to head
    sagittal = query("sagittal.nii.gz", np.array([[0, 0, 6.0, 0], [0, 1.5, 0, 0], [1.5, 0, 0, 0], [0, 0, 0, 1]]))
    with pytest.raises(DataError, match="cut along another plane"):
        segment_files(SupportCopy(), support, label, sagittal, max_shots=1)
    # every axis 55 degrees from the support's slice direction: no orientation brings them together
    axes = np.array([[1, 1, 1], [1, -1, 0], [1, 1, -2]], float).T / np.array([np.sqrt(3), np.sqrt(2), np.sqrt(6)])
    turn = np.array([[1, 0, 0], [0, np.sqrt(0.5), -np.sqrt(0.5)], [0, np.sqrt(0.5), np.sqrt(0.5)]])
    oblique = np.eye(4)
    oblique[:3, :3] = 4 * axes @ turn
    with pytest.raises(DataError, match="degrees away from the support's"):
        segment_files(SupportCopy(), support, label, query("oblique.nii.gz", oblique), max_shots=1)
    flat = nib.Nifti1Image(data, None)
    flat.header.set_sform(np.diag([4.0, 4.0, 0.0, 1.0]), code=1)  # no direction for the slice axis
    nib.save(flat, tmp_path / "flat.nii.gz")
    with pytest.raises(DataError, match="degenerate"):
        segment_files(SupportCopy(), support, label, tmp_path / "flat.nii.gz", max_shots=1)


def test_the_in_volume_case_is_found_by_file_not_by_path_string(phantoms, tmp_path):
    # one drawn slice; a method that finds nothing: only the in-volume case keeps the drawn slice
    gt = np.asarray(nib.load(phantoms / "label_1.nii.gz").dataobj)
    z = int(np.flatnonzero((gt == 1).any(axis=(0, 1)))[0])
    drawn = np.zeros_like(gt)
    drawn[:, :, z] = np.where(gt[:, :, z] == 1, 1, 0)
    label = tmp_path / "drawn.nii.gz"
    nib.save(nib.Nifti1Image(drawn, nib.load(phantoms / "image_1.nii.gz").affine), label)
    blind = SupportCopy(threshold=2.0)  # never above: predicts nothing

    spelled = f"{phantoms}/./image_1.nii.gz"  # a str: pathlib would drop the "./"
    assert spelled != str(phantoms / "image_1.nii.gz")
    result, _, _ = segment_files(blind, spelled, label, phantoms / "image_1.nii.gz", max_shots=1, mode="nearest")
    np.testing.assert_array_equal(result[:, :, z], drawn[:, :, z])  # the drawn slice, kept as drawn
    link = tmp_path / "linked.nii.gz"
    os.symlink(phantoms / "image_1.nii.gz", link)
    result, _, _ = segment_files(blind, link, label, phantoms / "image_1.nii.gz", max_shots=1, mode="nearest")
    np.testing.assert_array_equal(result[:, :, z], drawn[:, :, z])


def test_headers_are_read_without_the_voxels(tmp_path):
    import gzip

    # a 4 KB gzip whose header promises 1024 x 1024 x 512 int16 voxels (1 GB once expanded)
    header = nib.Nifti1Header()
    header.set_data_shape((1024, 1024, 512))
    header.set_data_dtype(np.int16)
    bomb = tmp_path / "bomb.nii.gz"
    with gzip.open(bomb, "wb") as out:
        out.write(header.binaryblock + b"\0" * 4)
        for _ in range(64):
            out.write(b"\0" * (1 << 20))
    assert bomb.stat().st_size < 200_000
    assert read_header(bomb).shape == (1024, 1024, 512)
    with pytest.raises(DataError, match="more than the 1000000 allowed"):
        read_header(bomb, max_voxels=1_000_000)
    rgb = tmp_path / "rgb.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.uint8), np.eye(4)), rgb)
    with pytest.raises(DataError, match="3D single-channel"):
        read_header(rgb)
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"not a nifti" * 100))
    with pytest.raises(DataError, match="cannot read the header"):
        read_header(garbage)
    with pytest.raises(DataError, match="file not found"):
        read_header(tmp_path / "absent.nii.gz")


def _run_inference(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.yaml", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=BUNDLE, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", ["missing_query", "label_of_another_grid", "unreadable_support"])
def test_run_inference_reports_bad_input_in_one_line_before_loading_the_model(phantoms, tmp_path, case):
    support, label, query = phantoms / "image_1.nii.gz", phantoms / "label_1.nii.gz", phantoms / "image_2.nii.gz"
    if case == "missing_query":
        query, words = tmp_path / "absent.nii.gz", "absent.nii.gz: file not found"
    elif case == "label_of_another_grid":
        label = tmp_path / "small_label.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4)), label)
        words = "does not match the support image's"
    else:
        support = tmp_path / "broken.nii.gz"
        support.write_bytes(b"\x1f\x8b not really gzip")
        words = "cannot read the header"
    # a checkpoint that would take a while to load is never touched: the inputs fail first
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"not a checkpoint")
    proc = _run_inference("--checkpoint", str(checkpoint), "--support_image", str(support), "--support_label",
                          str(label), "--query_images", f"['{query}']", "--output_dir", str(tmp_path / "out"))
    assert proc.returncode != 0
    assert words in proc.stderr
    assert "Traceback" not in proc.stderr and "ConfigExpression" not in proc.stderr, proc.stderr[-2000:]
    problems = [line for line in proc.stderr.splitlines() if "inference:" in line]
    assert len(problems) == 1, proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()
