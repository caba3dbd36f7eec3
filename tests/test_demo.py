"""`make demo`'s job (bundle/scripts/demo.py) on what the repository ships, nothing of ../shared:
the shipped model (bundle/models/model.pt with bundle/models/taef2) on the embedded CHAOS sample
(bundle/sample/chaost2): four organs drawn on one slice each of sample patient A, the rest of A
segmented in-volume, all of sample patient B cross-patient."""

import contextlib
import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "bundle" / "sample" / "chaost2"

# Dice floors, a few points under a measured run (2026-12-08, models/model.pt of bundle 0.6.3, trained
# on CHAOST2 supervoxels without patients 15 and 39 by `make shipped-model`, 8,000 steps; 2 CPU cores):
# A in-volume liver 80.7, right kidney 88.4, left kidney 87.4, spleen 77.3; B cross-patient 18.1 /
# 84.0 / 53.6 / 3.3. B's liver and spleen from one slice of another patient are near failure (the
# 4,000-step file of 0.5.0 had B's liver at 44.9, its in-volume organs lower); their floors only catch
# a result that gets worse still. A retrained model.pt is measured again and these set anew.
FLOORS = {
    "A in-volume": {"liver": 0.76, "right_kidney": 0.84, "left_kidney": 0.83, "spleen": 0.72},
    "B cross-patient": {"liver": 0.14, "right_kidney": 0.80, "left_kidney": 0.49, "spleen": 0.02},
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from scripts.demo import main

    out = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = main(["--out", str(out)])  # the defaults: the embedded sample and models/model.pt
    return result, printed.getvalue(), out


def test_dice_stays_at_the_measured_run(demo):
    result, printed, _ = demo
    assert [call.name for call in result.calls] == list(FLOORS)
    for call in result.calls:
        for organ, floor in FLOORS[call.name].items():
            assert call.dice[organ] >= floor, f"{call.name} {organ}: Dice {call.dice[organ]:.3f} < {floor}"
        mean = 100 * np.mean(list(call.dice.values()))
        assert f"{mean:.1f} | {call.seconds:.1f} |" in printed  # the table shows it, with the call's time


def test_the_drawn_slices_are_one_per_organ_and_come_back_as_drawn(demo):
    result, _, _ = demo
    truth = np.asarray(nib.load(SAMPLE / "label_15.nii.gz").dataobj)
    for organ, value in result.organs.items():
        z = result.drawn_z[organ]
        drawn_here = np.flatnonzero((result.drawn == value).any(axis=(0, 1)))
        assert drawn_here.tolist() == [z]  # one slice each
        organ_z = np.flatnonzero((truth == value).any(axis=(0, 1)))
        assert organ_z[0] < z < organ_z[-1]  # the organ's middle, not an end
    in_volume = result.calls[0].label
    for z in set(result.drawn_z.values()):
        np.testing.assert_array_equal(in_volume[..., z], result.drawn[..., z])
    written = np.asarray(nib.load(result.drawn_path).dataobj)
    np.testing.assert_array_equal(written, result.drawn)


def test_outputs_are_on_the_query_grids_and_the_overlay_is_drawn(demo):
    result, printed, out = demo
    for call, pid in zip(result.calls, ("15", "39")):
        query = nib.load(SAMPLE / f"image_{pid}.nii.gz")
        seg = nib.load(call.path)
        assert call.path.parent == out and call.path.name == f"image_{pid}_seg.nii.gz"
        assert seg.shape == query.shape
        np.testing.assert_allclose(seg.affine, query.affine, atol=1e-4)
        np.testing.assert_array_equal(np.asarray(seg.dataobj), call.label)
        assert str(call.path) in printed
    png = result.png.read_bytes()
    assert result.png.parent == out and png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    assert str(result.png) in printed


def test_it_says_whether_the_model_saw_the_sample_patients(demo):
    from scripts.network.model_file import load_checkpoint_file

    result, printed, _ = demo
    trained_on = load_checkpoint_file(REPO / "bundle" / "models" / "model.pt").get("trained_on")
    listed = {p for d in trained_on["datasets"] if d["dataset"] == "chaost2" for p in d["patients"]}
    if listed & {"15", "39"}:
        assert "WARNING" in printed and "trained on" in printed and "never saw" not in printed
    else:
        assert "never saw patients 15 and 39" in printed and "WARNING" not in printed


def test_training_note_reads_trained_on():
    from scripts.demo import training_note

    def record(patients):
        return {"datasets": [{"dataset": "cmr", "patients": ["15", "39"]},  # another dataset's 15 is not ours
                             {"dataset": "chaost2", "patients": patients}]}

    assert training_note(record(["1", "2"])).startswith("The model never saw patients 15 and 39")
    warned = training_note(record(["1", "39"]))
    assert warned.startswith("WARNING") and "39 (sample patient B)" in warned and "15" not in warned.split(":")[1]
    assert training_note(None).startswith("WARNING") and "does not record" in training_note(None)


def test_a_missing_sample_is_a_clear_error(tmp_path):
    from scripts.demo import run_demo

    with pytest.raises(FileNotFoundError, match=r"image_15\.nii\.gz.*not found.*--sample"):
        run_demo(tmp_path / "out", sample_dir=tmp_path)
