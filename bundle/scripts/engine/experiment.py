"""What a training or evaluation run is about: its data, fold split and label groups.

Small functions the bundle configs call so that the YAML reads as the experiment's specification
(dataset, fold, setting, test labels) while the rules live in one tested place.
"""

from __future__ import annotations

import logging
from pathlib import Path

from scripts.data.presets import get_preset
from scripts.data.volumes import DataError, load_dataset
from scripts.protocol.folds import make_folds

logger = logging.getLogger(__name__)


def load_volumes(dataset_dir, dataset, with_supervoxels: bool = False, phantom_volumes: int = 10):
    """Load a dataset; the ``phantom`` dataset is generated on first use (the embedded default)."""
    preset = get_preset(dataset)
    root = Path(dataset_dir)
    if preset.name == "phantom":
        from scripts.data.phantoms import write_phantom_dataset, written_by_this_version

        if not written_by_this_version(root):  # absent, half-written, or from an older generator
            logger.info("writing %d phantom volumes to %s", phantom_volumes, root)
            write_phantom_dataset(root, n_volumes=phantom_volumes)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist (set dataset_dir)")
    return load_dataset(root, preset, with_supervoxels=with_supervoxels)


def split_fold(volumes, fold: int, n_folds: int = 5):
    """(training volumes, test volumes) of one cross-validation fold over patients."""
    folds = make_folds([v.pid for v in volumes], n_folds)
    if not 0 <= fold < len(folds):
        raise ValueError(f"fold {fold} does not exist: {len(folds)} folds")
    test = set(folds[fold])
    return [v for v in volumes if v.pid not in test], [v for v in volumes if v.pid in test]


def label_values(dataset, names) -> dict[str, int]:
    """Organ names -> label values of the dataset (a clear error for a name it does not have)."""
    labels = get_preset(dataset).labels
    names = [names] if isinstance(names, str) else list(names or [])
    unknown = [n for n in names if n not in labels]
    if unknown:
        raise ValueError(f"labels {unknown} are not in dataset '{get_preset(dataset).name}': {sorted(labels)}")
    return {n: labels[n] for n in names}


def training_values(dataset, test_names) -> dict[str, int]:
    """Every labelled class of the dataset that is not a test class."""
    test = set(label_values(dataset, test_names))
    return {n: v for n, v in get_preset(dataset).labels.items() if n not in test}


def latest_checkpoint(folder) -> str | None:
    """The newest interval checkpoint of an interrupted run, to resume from (None: start afresh)."""
    candidates = sorted(Path(folder).glob("checkpoint_*.pt"), key=lambda p: p.stat().st_mtime) if Path(folder).is_dir() else []
    return str(candidates[-1]) if candidates else None
