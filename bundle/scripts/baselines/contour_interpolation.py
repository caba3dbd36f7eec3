"""What a labeller already has once two slices are drawn: 3D Slicer's "fill between slices", which
runs ITK's morphological contour interpolation (Albu et al. 2008; Zukic et al., Insight Journal
2016) between the drawn slices of each label. It never reaches past the outermost drawn slices, and
from one drawn slice it can only give that slice back.

ITK's filter runs in a child process of its own (this file as a script, numpy and itk only): now
and then it corrupts the C heap ("malloc_consolidate(): unaligned fastbin chunk detected", an abort
then or when the process exits; seen with itk 5.4.7 and itk-morphologicalcontourinterpolation 2.1.2,
about one run in ten on a 37x256x256 mask, and always at exit once torch is loaded too). The child
writes its result and leaves without running ITK's destructors; a child that died is run again, up
to ``attempts`` times. Its results are deterministic, so a retry changes nothing but the luck.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import numpy as np

__all__ = ["ContourInterpolation"]


class ContourInterpolation:
    """``segment_drawn(image, drawn, value)``: the organ's mask from its drawn slices alone; the
    image is not read (the interpolation is purely morphological)."""

    name = "contour_interpolation"

    def __init__(self, threads: int = 1, timeout_s: float = 600, attempts: int = 3):
        self.threads = threads
        self.timeout_s = timeout_s
        self.attempts = attempts

    def segment_drawn(self, image, drawn: np.ndarray, value: int) -> np.ndarray:
        mask = (np.asarray(drawn) == value).astype(np.uint8)
        if not mask.any():
            raise ValueError(f"label {value} is drawn on no slice: nothing to interpolate")
        with tempfile.TemporaryDirectory(prefix="contour_interpolation_") as work:
            source, target = os.path.join(work, "drawn.npy"), os.path.join(work, "filled.npy")
            np.save(source, mask)
            for _ in range(self.attempts):
                done = subprocess.run([sys.executable, os.path.abspath(__file__), source, target, str(self.threads)],
                                      capture_output=True, text=True, timeout=self.timeout_s)
                if done.returncode == 0 and os.path.exists(target):
                    return np.load(target) > 0
            raise RuntimeError(f"ITK's contour interpolation failed {self.attempts} times (last status "
                               f"{done.returncode}): {done.stderr.strip()[-500:]}")


def interpolate(mask: np.ndarray, threads: int = 1) -> np.ndarray:
    """ITK's MorphologicalContourInterpolator on a (D, H, W) uint8 mask, between slices along D."""
    import itk  # the itk-morphologicalcontourinterpolation module registers the filter

    picture = itk.image_from_array(np.ascontiguousarray(mask, dtype=np.uint8))
    fill = itk.MorphologicalContourInterpolator.New(picture)
    fill.SetAxis(2)  # ITK's z is the array's first axis: slices are (D, H, W)
    fill.SetLabel(1)
    fill.SetNumberOfWorkUnits(threads)
    fill.Update()
    return itk.array_from_image(fill.GetOutput())


if __name__ == "__main__":  # the child process: drawn.npy -> filled.npy
    source, target, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    np.save(target + ".part.npy", interpolate(np.load(source), threads))
    os.replace(target + ".part.npy", target)
    sys.stdout.flush()
    os._exit(0)  # skip ITK's destructors, where the corrupted heap aborts
