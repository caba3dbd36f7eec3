"""Latency of one few-shot call of the MONAI Label app, end to end, in-process.

It loads the app's infer task (``monailabel_app/lib/infers/fewshot.py``) in this process, starts no
server, and calls it as the server would after the HTTP layer: the request names a 40-slice 256x256
phantom and carries an uploaded label (the Slicer flow: one organ drawn on a few slices). A call
covers support resolution, loading and resampling both files, the network, the inverse resampling
and writing the result NIfTI. The model is the ``compact`` preset (untrained weights: the timing is
the same) saved as a checkpoint and loaded by the task as in production.

- first call: the image's latents are not cached (the segmenter's cache is cleared before each run)
- repeated call: the same image again (its latents cached)

    .venv/bin/python bench/bench_monailabel_latency.py [--runs 3] [--organs 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "monailabel_app"))
os.environ.setdefault("MPLCONFIGDIR", str(REPO / ".cache" / "matplotlib"))


def prepare_call(work: Path, depth: int = 40, organs: int = 1, size: int = 256, **model_keys):
    """A 256x256x``depth`` phantom, a label drawn on 3 slices of each of ``organs`` organs (uploaded
    as in Slicer's flow) and a ``compact`` checkpoint (``model_keys`` e.g. autoencoder='taef2').
    Returns (the request, the checkpoint path)."""
    import nibabel as nib
    import numpy as np

    from scripts.data.phantoms import write_phantom_dataset
    from scripts.network.model_file import save_checkpoint_file
    from scripts.network.presets import build_segmenter

    work = Path(work)
    image = work / "data" / "image_1.nii.gz"
    if not image.is_file():
        write_phantom_dataset(work / "data", n_volumes=1, size=size, depth=depth, seed=0)
    label = np.asarray(nib.load(work / "data" / "label_1.nii.gz").dataobj).astype(np.int16)
    drawn = np.zeros_like(label)
    for value in range(1, organs + 1):
        slices = [z for z in range(label.shape[2]) if (label[:, :, z] == value).any()]
        for z in (slices[len(slices) // 4], slices[len(slices) // 2], slices[3 * len(slices) // 4]):
            drawn[:, :, z] = np.where(label[:, :, z] == value, value, drawn[:, :, z])
    upload = work / f"drawn_{organs}.nii.gz"
    nib.save(nib.Nifti1Image(drawn, nib.load(image).affine), upload)
    name = "_".join(f"{k}-{Path(str(v)).name}" for k, v in sorted(model_keys.items())) or "unshuffle"
    checkpoint = work / f"compact_{name}.pt"
    if not checkpoint.is_file():
        save_checkpoint_file(build_segmenter(preset="compact", **model_keys), checkpoint)
    return {"image": str(image), "label": str(upload)}, checkpoint


def make_call(task, request: dict):
    """One call of the task as the server makes it after the HTTP layer; returns its seconds."""
    import nibabel as nib

    def call() -> float:
        t = time.perf_counter()
        result_file, result = task(dict(request))
        elapsed = time.perf_counter() - t
        assert nib.load(result_file).shape == nib.load(request["image"]).shape
        os.unlink(result_file)
        return elapsed

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--organs", type=int, default=1, help="organs drawn (1-4), each on 3 slices")
    parser.add_argument("--depth", type=int, default=40)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch

    from lib.infers.fewshot import FewShotInfer
    from lib.served_model import FewShotModel

    work = Path(tempfile.mkdtemp(prefix="bench_monailabel_"))
    start = time.perf_counter()
    request, checkpoint = prepare_call(work, depth=args.depth, organs=args.organs)
    print(f"setup (phantom 256x256x{args.depth}, compact checkpoint): {time.perf_counter() - start:.1f}s")
    task = FewShotInfer(FewShotModel(checkpoint), device=args.device)
    call = make_call(task, request)

    t = time.perf_counter()
    segmenter = task.model.get(args.device)
    load = time.perf_counter() - t
    cold = call()  # first call of the process (imports of the writer etc. warm up here)
    first, repeated = [], []
    for _ in range(args.runs):
        segmenter.latent_cache.clear()
        first.append(call())
        repeated.append(call())
    print(f"torch threads {torch.get_num_threads()}, device {args.device}, load average {os.getloadavg()[0]:.2f}")
    print(f"model load: {load:.2f}s; very first call of the process: {cold:.2f}s")
    print(f"first call on the image   : median {statistics.median(first):.2f}s  runs {[round(x, 2) for x in first]}")
    print(f"repeated call, same image : median {statistics.median(repeated):.2f}s  runs {[round(x, 2) for x in repeated]}")


if __name__ == "__main__":
    main()
