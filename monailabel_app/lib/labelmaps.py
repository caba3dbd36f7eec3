"""Labelmaps as the app reads them: which values they hold, which segments are organs, and their
slices one by one.

A client's labelmap holds more than organs: 3D Slicer's scribbles panel exports its ``*_scribbles``
layers and a ``background`` segment with the rest. The infer task, the support it learns from
(``lib/supports.py``) and the trainer skip those alike.
"""

from __future__ import annotations

import numpy as np

IGNORED_SEGMENTS = ("background",)


def label_values(array: np.ndarray) -> list[int]:
    """The non-zero values of a label array (a counting pass, not a sort, for the usual small values)."""
    if array.size and array.min() >= 0 and array.max() < 1 << 16:
        return [int(v) for v in np.flatnonzero(np.bincount(array.ravel())) if v != 0]
    return [int(v) for v in np.unique(array) if v != 0]


def ignored_segment(name: str) -> bool:
    """A segment that is not an organ: a scribbles layer or the background."""
    lowered = name.strip().lower()
    return lowered.endswith("_scribbles") or lowered in IGNORED_SEGMENTS


def slices_first(array: np.ndarray, axis: int) -> np.ndarray:
    """The label with the slice axis first, contiguous: one copy, then every slice is cheap."""
    return np.ascontiguousarray(np.moveaxis(array, axis, 0))
