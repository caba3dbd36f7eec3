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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--organs", type=int, default=1, help="organs drawn (1-4), each on 3 slices")
    parser.add_argument("--depth", type=int, default=40)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import nibabel as nib
    import numpy as np
    import torch

    import lib  # noqa: F401  (bundle/ on sys.path)
    from lib.infers.fewshot import FewShotInfer, FewShotModel
    from scripts.data.phantoms import write_phantom_dataset
    from scripts.network.presets import build_segmenter, save_checkpoint_file

    work = Path(tempfile.mkdtemp(prefix="bench_monailabel_"))
    start = time.perf_counter()
    write_phantom_dataset(work / "data", n_volumes=1, size=256, depth=args.depth, seed=0)
    image = work / "data" / "image_1.nii.gz"
    label = np.asarray(nib.load(work / "data" / "label_1.nii.gz").dataobj).astype(np.int16)
    drawn = np.zeros_like(label)
    for value in range(1, args.organs + 1):
        slices = [z for z in range(label.shape[2]) if (label[:, :, z] == value).any()]
        for z in (slices[len(slices) // 4], slices[len(slices) // 2], slices[3 * len(slices) // 4]):
            drawn[:, :, z] = np.where(label[:, :, z] == value, value, drawn[:, :, z])
    upload = work / "drawn.nii.gz"
    nib.save(nib.Nifti1Image(drawn, nib.load(image).affine), upload)
    checkpoint = work / "compact.pt"
    save_checkpoint_file(build_segmenter(preset="compact"), checkpoint)
    print(f"setup (phantom {nib.load(image).shape}, compact checkpoint): {time.perf_counter() - start:.1f}s")

    task = FewShotInfer(FewShotModel(checkpoint), device=args.device)
    request = {"image": str(image), "label": str(upload)}

    def call() -> float:
        t = time.perf_counter()
        result_file, result = task(dict(request))
        elapsed = time.perf_counter() - t
        assert nib.load(result_file).shape == nib.load(image).shape
        os.unlink(result_file)
        return elapsed

    t = time.perf_counter()
    segmenter = task.model.get(args.device)
    load = time.perf_counter() - t
    cold = call()  # first call of the process (imports of the writer etc. warm up here)
    first, repeated = [], []
    for _ in range(args.runs):
        segmenter._latent_cache.clear()
        first.append(call())
        repeated.append(call())
    print(f"torch threads {torch.get_num_threads()}, device {args.device}, load average {os.getloadavg()[0]:.2f}")
    print(f"model load: {load:.2f}s; very first call of the process: {cold:.2f}s")
    print(f"first call on the image   : median {statistics.median(first):.2f}s  runs {[round(x, 2) for x in first]}")
    print(f"repeated call, same image : median {statistics.median(repeated):.2f}s  runs {[round(x, 2) for x in repeated]}")


if __name__ == "__main__":
    main()
