"""Cross-validation folds over patients, as the field builds them.

SSL-ALPNet, ADNet and their successors split the patients, sorted by numeric id, into contiguous
folds; in each fold one volume is the support and the others are queries. Here the folds do not
overlap (CHAOST2: fold 0 = patients 1, 2, 3, 5) and the support is the fold's first patient unless
another index is asked for (DESIGN.md, "Decisions").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

__all__ = ["pid_sort_key", "sort_pids", "make_folds", "support_pid"]


def pid_sort_key(pid) -> tuple:
    """Sort key that orders '2' before '10' and still accepts ids that are not numbers."""
    text = str(pid)
    if text.isdigit():
        return (0, int(text), text)
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text) if p)
    return (1, parts, text)


def sort_pids(pids: Iterable) -> list[str]:
    """Patient ids as strings, sorted numerically; duplicates are an error."""
    out = [str(p) for p in pids]
    if len(set(out)) != len(out):
        dupes = sorted({p for p in out if out.count(p) > 1}, key=pid_sort_key)
        raise ValueError(f"duplicate patient ids: {dupes}")
    return sorted(out, key=pid_sort_key)


def make_folds(pids: Iterable, n_folds: int = 5) -> list[list[str]]:
    """Split the numerically sorted ids into `n_folds` contiguous folds.

    Fold sizes differ by at most one, the larger folds first (numpy's array_split rule), so
    20 ids give 4 folds of 4 ... and 35 give 7 each. Every fold needs a support and at least
    one query: a fold with fewer than 2 volumes is an error.
    """
    ordered = sort_pids(pids)
    if n_folds < 1:
        raise ValueError(f"n_folds must be >= 1, got {n_folds}")
    base, extra = divmod(len(ordered), n_folds)
    folds, start = [], 0
    for i in range(n_folds):
        size = base + (1 if i < extra else 0)
        folds.append(ordered[start:start + size])
        start += size
    small = [i for i, f in enumerate(folds) if len(f) < 2]
    if small:
        raise ValueError(
            f"{len(ordered)} volumes in {n_folds} folds leave fold(s) {small} with fewer than 2 volumes "
            "(a fold needs one support and at least one query): use fewer folds or more volumes")
    return folds


def support_pid(fold: Sequence[str], index: int = 0) -> str:
    """The support patient of a fold: its `index`-th id in sorted order (0 = first, -1 = last)."""
    if not -len(fold) <= index < len(fold):
        raise ValueError(f"support index {index} is outside a fold of {len(fold)} volumes: {list(fold)}")
    return fold[index]
