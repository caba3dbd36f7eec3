"""What a training or evaluation run is about: its data, fold split and label groups.

Small functions the bundle configs call so that the YAML reads as the experiment's specification
(dataset, fold, setting, test labels) while the rules live in one tested place.

`fold: null` trains on every patient, `test_labels: []` makes every class a training class, and
`extra_datasets` adds more datasets to one training (`load_extra_datasets`, `episode_dataset`):
the model the bundle ships is trained that way on every labelled class there is.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from scripts.data.episodes import SOURCES, EpisodeDataset
from scripts.data.mixture import EpisodeMixture
from scripts.data.presets import get_preset
from scripts.data.volumes import DataError, Volume, load_dataset
from scripts.protocol.folds import make_folds

logger = logging.getLogger(__name__)


def load_volumes(dataset_dir, dataset, with_supervoxels: bool = False, phantom_volumes: int | None = None,
                 transforms=None):
    """Load a dataset; the ``phantom`` dataset is generated on first use (the embedded default):
    `phantom_volumes` of them (10 if None), and a folder holding another count is rewritten only
    when a count is given. ``transforms``: the config's ``preprocessing`` (None: the default list)."""
    preset = get_preset(dataset)
    root = Path(dataset_dir)
    if preset.name == "phantom":
        from scripts.data.phantoms import DEFAULT_VOLUMES, write_phantom_dataset, written_by_this_version

        asked = None if phantom_volumes is None else int(phantom_volumes)
        if not written_by_this_version(root, asked):  # absent, half-written, another version or count
            n_volumes = DEFAULT_VOLUMES if asked is None else asked
            logger.info("writing %d phantom volumes to %s", n_volumes, root)
            write_phantom_dataset(root, n_volumes=n_volumes)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist (set dataset_dir)")
    return load_dataset(root, preset, with_supervoxels=with_supervoxels, transforms=transforms)


def as_fold(fold) -> int | None:
    """A fold index, or None for "no fold held out". On the command line that is `--fold null`,
    which arrives as the string "null" ("none" is read the same way): `monai.bundle run` drops
    overrides whose value is None, so `--fold None` never reaches the config."""
    if fold is None or (isinstance(fold, str) and fold.strip().lower() in ("none", "null")):
        return None
    try:
        return int(fold)
    except (TypeError, ValueError):
        raise ValueError(f"fold must be an integer or None (every patient trains), got {fold!r}") from None


def split_fold(volumes, fold: int | None, n_folds: int = 5):
    """(training volumes, test volumes) of one cross-validation fold over patients; fold None:
    (every volume, none)."""
    fold = as_fold(fold)
    if fold is None:
        return list(volumes), []
    folds = make_folds([v.pid for v in volumes], n_folds)
    if not 0 <= fold < len(folds):
        raise ValueError(f"fold {fold} does not exist: {len(folds)} folds")
    test = set(folds[fold])
    return [v for v in volumes if v.pid not in test], [v for v in volumes if v.pid in test]


def without_patients(volumes, patients, dataset_volumes=None):
    """``volumes`` less the listed patients (``exclude_patients``: e.g. the embedded sample that the
    demo scores, so its Dice is on patients the model never saw); a pid that is not in the dataset
    (``dataset_volumes``, default ``volumes``) is an error, not a silent no-op."""
    names = {str(p) for p in ([patients] if isinstance(patients, (str, int)) else list(patients or []))}
    if not names:
        return list(volumes)
    known = {str(v.pid) for v in (volumes if dataset_volumes is None else dataset_volumes)}
    if names - known:
        raise ValueError(f"exclude_patients {sorted(names - known)} are not patients of this dataset "
                         f"(patients: {sorted(known, key=lambda p: (len(p), p))})")
    return [v for v in volumes if str(v.pid) not in names]


def label_values(dataset, names) -> dict[str, int]:
    """Organ names -> label values of the dataset (a clear error for a name it does not have)."""
    labels = get_preset(dataset).labels
    names = [names] if isinstance(names, str) else list(names or [])
    unknown = [n for n in names if n not in labels]
    if unknown:
        raise ValueError(f"labels {unknown} are not in dataset '{get_preset(dataset).name}': {sorted(labels)}")
    return {n: labels[n] for n in names}


def training_values(dataset, test_names) -> dict[str, int]:
    """Every labelled class of the dataset that is not a test class (all of them for `[]`)."""
    test = set(label_values(dataset, test_names))
    return {n: v for n, v in get_preset(dataset).labels.items() if n not in test}


def dataset_name(dataset) -> str | None:
    """The name run folders, caches and reports use for ``dataset``: as given for a preset name,
    the preset's ``name`` for a mapping (a user's own data: ``{name: mine, labels: {...}}``)."""
    if dataset is None or isinstance(dataset, str):
        return dataset
    return get_preset(dataset).name


def run_name(dataset, setting, test_labels, fold, extra_datasets=()) -> str:
    """`<dataset>_s<setting>_<test labels>_fold<k>`, as the runs so far are named; `all-classes`
    when nothing is held out, `all-patients` for fold None, `+<name>` per extra dataset."""
    names = [test_labels] if isinstance(test_labels, str) else list(test_labels or [])
    fold = as_fold(fold)
    datasets = "+".join([dataset_name(dataset)] + [get_preset(entry.get("dataset")).name for entry in extra_datasets or []
                                           if isinstance(entry, Mapping) and entry.get("dataset") is not None])
    return "{}_s{}_{}_{}".format(datasets, setting, "-".join(names) or "all-classes",
                                 "all-patients" if fold is None else f"fold{fold}")


# ---- several datasets in one training --------------------------------------------------------
# label_source None: the training's own; "gt" | "supervoxel" | "both" gives this dataset its own
EXTRA_KEYS = {"dataset": None, "dataset_dir": None, "test_labels": [], "fold": None, "n_folds": 5, "label_source": None}


@dataclass
class ExtraDataset:
    """One entry of `extra_datasets`, loaded: its volumes carry pids `<name>:<pid>`."""

    name: str                     # the preset's name: the namespace of its pids
    volumes: list[Volume]
    train_volumes: list[Volume]
    train_values: dict[str, int]  # label values of *this* dataset (1 is liver in CHAOST2, nothing in CMR)
    test_values: dict[str, int]
    label_source: str | None = None  # None: the training's label_source


def namespaced(volumes, name: str) -> list[Volume]:
    """The volumes with pids `<name>:<pid>`, so two datasets' patient "1" stay apart in the latent
    cache and the validation; the arrays are shared, the original pid is kept in `meta`."""
    return [dataclasses.replace(v, pid=f"{name}:{v.pid}", meta={**v.meta, "dataset": name, "source_pid": v.pid})
            for v in volumes]


def load_extra_datasets(entries, main_dataset, label_source: str = "gt", transforms=None) -> list[ExtraDataset]:
    """The `extra_datasets` of train.yaml: mappings {dataset, dataset_dir, test_labels=[], fold=None,
    n_folds=5, label_source=None}. Every patient trains unless the entry names a fold; every class
    unless it names test labels; its episodes take the training's ``label_source`` unless it names
    its own (e.g. ground truth of another dataset beside a main dataset trained on supervoxels only).
    The main dataset's pids stay as they are (its caches and checkpoints stay valid); their files go
    through ``transforms`` (the config's ``preprocessing``), as the main dataset's."""
    if entries is None:
        return []
    if isinstance(entries, Mapping) or isinstance(entries, str) or not isinstance(entries, Sequence):
        raise ValueError(f"extra_datasets must be a list of mappings, got {type(entries).__name__}")
    seen = {get_preset(main_dataset).name: "the main dataset"}
    out = []
    for i, entry in enumerate(entries):
        where = f"extra_datasets[{i}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} must be a mapping like {{dataset: cmr, dataset_dir: ..., test_labels: []}}, "
                             f"got {entry!r}")
        unknown = sorted(set(entry) - set(EXTRA_KEYS))
        if unknown:
            raise ValueError(f"{where} has unknown keys {unknown}; allowed: {sorted(EXTRA_KEYS)}")
        missing = [key for key in ("dataset", "dataset_dir") if entry.get(key) is None]
        if missing:
            raise ValueError(f"{where} ({entry.get('dataset', 'no dataset')}) needs {' and '.join(missing)}")
        config = {**EXTRA_KEYS, **entry}
        if config["label_source"] is not None and config["label_source"] not in SOURCES:
            raise ValueError(f"{where}: label_source must be one of {SOURCES} (or null: the training's), "
                             f"got {config['label_source']!r}")
        with_supervoxels = (config["label_source"] or label_source) != "gt"
        try:
            name = get_preset(config["dataset"]).name
        except (KeyError, ValueError, TypeError) as error:
            raise ValueError(f"{where}: {error.args[0] if error.args else error}") from error
        if name in seen:
            raise ValueError(f"{where}: dataset '{name}' is already {seen[name]}; a second copy needs a preset "
                             f"mapping with another name, e.g. {{base: {name}, name: {name}_b}}")
        seen[name] = where
        try:
            test = label_values(config["dataset"], config["test_labels"])
            train = training_values(config["dataset"], config["test_labels"])
            volumes = namespaced(load_volumes(config["dataset_dir"], config["dataset"], with_supervoxels,
                                              transforms=transforms), name)
            train_volumes, _ = split_fold(volumes, config["fold"], config["n_folds"])
        except ValueError as error:  # DataError is one: keep its type, add which entry it is
            raise type(error)(f"{where} ({name}): {error}") from error
        out.append(ExtraDataset(name, volumes, train_volumes, train, test, config["label_source"]))
    return out


def extra_volumes(extras: Sequence[ExtraDataset]) -> list[Volume]:
    """The training volumes of the extra datasets, in one list (the latent cache and validation)."""
    return [v for extra in extras for v in extra.train_volumes]


def episode_dataset(data, train_values, test_values=(), extras: Sequence[ExtraDataset] = (), n_episodes: int = 1000,
                    seed: int = 0, weights: Sequence[float] | None = None, **options):
    """The training episodes drawn from ``data`` (the training patients' volumes, in slice space): an
    `EpisodeDataset` of the main dataset, exactly as before, or with
    extra datasets an `EpisodeMixture` of one `EpisodeDataset` per dataset (same options, but an
    extra dataset's own label source). ``weights``: each dataset's share, main first (None: by
    numbers of training classes, `EpisodeMixture`)."""
    main = EpisodeDataset(data, train_values, test_values, n_episodes=n_episodes, seed=seed, **options)
    if not extras:
        if weights is not None:
            raise ValueError("mixture weights are given but there are no extra_datasets to mix with")
        return main
    parts = [main] + [EpisodeDataset(x.train_volumes, list(x.train_values.values()), list(x.test_values.values()),
                                     n_episodes=n_episodes, seed=seed,
                                     **{**options, **({"label_source": x.label_source} if x.label_source else {})})
                      for x in extras]
    names = [str(data[0].meta.get("preset", "main"))] + [x.name for x in extras]
    return EpisodeMixture(parts, names, n_episodes=n_episodes, seed=seed, weights=weights)


def training_record(dataset, train_volumes, train_values, test_values, extras=(), setting: int = 1,
                    label_source: str = "gt") -> dict:
    """What a model was trained on, stored in its model file (`trained_on`): per dataset its
    training classes, held-out classes and patients."""
    def entry(name, volumes, train, test):
        return {"dataset": name, "classes": {n: int(v) for n, v in train.items()},
                "held_out_classes": {n: int(v) for n, v in test.items()},
                "patients": [str(v.meta.get("source_pid", v.pid)) for v in volumes]}

    datasets = [entry(get_preset(dataset).name, train_volumes, train_values, test_values)]
    for x in extras:  # an extra dataset's own label source is recorded only where it has one
        datasets.append({**entry(x.name, x.train_volumes, x.train_values, x.test_values),
                         **({"label_source": x.label_source} if x.label_source else {})})
    return {"datasets": datasets, "setting": int(setting), "label_source": str(label_source)}
