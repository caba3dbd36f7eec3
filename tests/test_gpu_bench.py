"""The prepared GPU command runs end to end on the CPU with tiny sizes, and its data pack is lossless.

``bench/gpu_bench.py`` meets a GPU rarely and must work the first time: this runs the same code
(install check, every lever guarded, the table, the accuracy step's unpack and listing) on the CPU.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


@pytest.fixture(scope="module")
def tiny_pack(tmp_path_factory):
    """A pack as gpu_pack.sh makes it, from 2 small phantoms in the CHAOST2 layout (no wheels)."""
    import nibabel as nib

    from gpu_data import pack
    from scripts.data.phantoms import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root / "src", n_volumes=2, size=32, depth=8, seed=0)
    layout = root / "CHAOST2"
    for kind in ("image", "label"):
        for path in sorted((root / "src").glob(f"{kind}_*.nii.gz")):
            (layout / "chaos_MR_T2_normalized").mkdir(parents=True, exist_ok=True)
            nib.save(nib.load(str(path)), str(layout / "chaos_MR_T2_normalized" / path.name))
    for path in sorted((root / "src" / "supervoxels").glob("*.nii.gz")):
        (layout / "supervoxels_5000").mkdir(exist_ok=True)
        image = nib.load(str(path))
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj).astype(np.int32), image.affine),
                 str(layout / "supervoxels_5000" / path.name))
    (layout / "classmap_1.json").write_text('{"liver": {}}')
    out = root / "pack"
    pack(layout, out / "data" / "chaost2.npz", ["chaos_MR_T2_normalized/image_*.nii.gz"],
         ["chaos_MR_T2_normalized/label_*.nii.gz", "supervoxels_5000/*.nii.gz"], ["classmap_*.json"])
    return layout, out


def test_data_pack_round_trip_is_exact(tiny_pack, tmp_path):
    from gpu_data import _decode_image, _encode_image, unpack, verify

    layout, out = tiny_pack
    files = unpack(out / "data" / "chaost2.npz", tmp_path)
    assert len(files) == 2 * 3 + 1
    verify(layout, tmp_path, files)  # raises on any voxel or affine that differs
    assert (tmp_path / "classmap_1.json").read_text() == '{"liver": {}}'
    rng = np.random.default_rng(0)
    for values in (rng.integers(-32768, 32767, (3, 5, 7)), rng.integers(0, 900, (4, 8, 8)), np.zeros((1, 2, 2))):
        values = values.astype(np.int16)
        np.testing.assert_array_equal(_decode_image(_encode_image(values)), values)


def test_gpu_bench_runs_tiny_on_cpu(tiny_pack, tmp_path):
    _, pack = tiny_pack
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_bench.py"), "--tiny", "--out", str(out),
                           "--pack", str(pack), "--budget", "45", "--models", "sd15,compact"],
                          capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = (out / "gpu_bench.md").read_text()
    summary = json.loads((out / "gpu_bench.json").read_text())
    rows = summary["rows"]
    for model in ("sd15", "compact"):
        for kind in ("inference", "training"):
            block = [r for r in rows if r["model"] == model and r["kind"] == kind]
            assert block and block[0]["lever"].startswith("authors")
            assert block[0]["status"] == "ok", block[0]
    statuses = {r["status"] for r in rows}
    assert "skipped: needs CUDA" in statuses  # CUDA graphs and inductor are skipped, not fatal
    assert "| sd15" in table and "| compact" in table
    log = (out / "gpu_bench.log").read_text()
    assert "accuracy jobs queued" in log and "tiny run: listing only" in log
    assert summary["accuracy"]["queued"], summary["accuracy"]


def test_a_failing_lever_is_a_row_not_the_end(tmp_path, monkeypatch):
    import gpu_bench

    def broken(*args, **kwargs):
        raise RuntimeError("this lever is broken")

    monkeypatch.setattr(gpu_bench, "inference_fn", broken)
    args = gpu_bench.argparse.Namespace(tiny=True, slices=2, episodes=2, repeats=1, cpu_compile=None)
    clock = gpu_bench.Clock(600)
    rows, models = [], {}
    import torch

    gpu_bench.run_rows("compact", "inference", gpu_bench.INFERENCE_LEVERS[:2], args, clock, torch.device("cpu"),
                       rows, 0, models)
    assert [r["status"] for r in rows] == ["failed: RuntimeError: this lever is broken"] * 2
