"""Dataset presets: where the files of a dataset are and what its label values mean.

The field's datasets come in the SSL-ALPNet layout (`image_N.nii.gz` / `label_N.nii.gz` pairs in one
folder, supervoxel pseudo-labels in another). A preset records that layout and the label map, so a
new dataset in the same layout (Synapse/BTCV, a user's own scans) needs configuration, not code:
`get_preset({"name": "mine", "labels": {"tumour": 1}})`.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DatasetPreset", "PRESETS", "get_preset"]


@dataclass(frozen=True)
class DatasetPreset:
    """Layout and label map of one dataset.

    Paths are relative to the dataset root: images and labels live in `root/subdir` (or `root` when
    `subdir` is None), supervoxels in `root/<supervoxel_pattern>`. Patterns contain `{pid}`.
    `slice_axis` is the array axis of the stored files that runs across the 2D slices.
    """

    name: str
    labels: dict[str, int]
    image_pattern: str = "image_{pid}.nii.gz"
    label_pattern: str = "label_{pid}.nii.gz"
    supervoxel_pattern: str | None = None
    slice_axis: int = 2
    subdir: str | None = None
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("dataset preset: 'name' must be a non-empty string")
        if not isinstance(self.labels, Mapping) or not self.labels:
            raise ValueError(f"dataset preset {self.name!r}: 'labels' must be a non-empty mapping name -> value")
        labels: dict[str, int] = {}
        for key, value in self.labels.items():
            try:  # ints (numpy ints too) or digit strings from a config file; not bools
                if isinstance(value, bool):
                    raise TypeError
                value = operator.index(value) if not isinstance(value, str) else int(value)
            except (TypeError, ValueError):
                raise ValueError(f"dataset preset {self.name!r}: label {key!r} has non-integer value {value!r}") from None
            if value <= 0:
                raise ValueError(f"dataset preset {self.name!r}: label {key!r} = {value}; 0 is background")
            labels[str(key)] = value
        if len(set(labels.values())) != len(labels):
            raise ValueError(f"dataset preset {self.name!r}: two labels share a value: {labels}")
        object.__setattr__(self, "labels", labels)  # frozen dataclass: normalise once here
        for attr in ("image_pattern", "label_pattern", "supervoxel_pattern"):
            pattern = getattr(self, attr)
            if pattern is not None and "{pid}" not in pattern:
                raise ValueError(f"dataset preset {self.name!r}: {attr} {pattern!r} lacks '{{pid}}'")
        if self.slice_axis not in (0, 1, 2):
            raise ValueError(f"dataset preset {self.name!r}: slice_axis must be 0, 1 or 2, got {self.slice_axis}")

    @property
    def names(self) -> dict[int, str]:
        """Label value -> name."""
        return {value: key for key, value in self.labels.items()}

    def values(self, names: list[str] | tuple[str, ...] | None = None) -> list[int]:
        """Label values of the given class names (all classes when None), with a clear error."""
        if names is None:
            return list(self.labels.values())
        unknown = [n for n in names if n not in self.labels]
        if unknown:
            raise KeyError(f"dataset preset {self.name!r} has no class {unknown}; known: {sorted(self.labels)}")
        return [self.labels[n] for n in names]


_ABDOMEN_MR = {"liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4}

PRESETS: dict[str, DatasetPreset] = {
    "chaost2": DatasetPreset(
        name="chaost2",
        labels=dict(_ABDOMEN_MR),
        supervoxel_pattern="supervoxels_5000/superpix-MIDDLE_{pid}.nii.gz",
        subdir="chaos_MR_T2_normalized",
        description="Abd-MRI: CHAOS T2-SPIR, 20 patients (SSL-ALPNet preprocessing)",
    ),
    "cmr": DatasetPreset(
        name="cmr",
        labels={"lv_myo": 200, "lv_bp": 500, "rv": 600},
        supervoxel_pattern="supervoxels_1000/superpix-MIDDLE_{pid}.nii.gz",
        subdir="cmr_MR_normalized",
        description="Card-MRI: MS-CMRSeg 2019 bSSFP, 35 patients, raw label values",
    ),
    "sabs": DatasetPreset(
        name="sabs",
        labels={"spleen": 1, "right_kidney": 2, "left_kidney": 3, "liver": 6},
        supervoxel_pattern="supervoxels_5000/superpix-MIDDLE_{pid}.nii.gz",
        subdir="sabs_CT_normalized",
        description="Abd-CT: Synapse/BTCV in the SSL-ALPNet layout (subdir configurable)",
    ),
    "phantom": DatasetPreset(
        name="phantom",
        labels=dict(_ABDOMEN_MR),
        supervoxel_pattern="supervoxels/superpix-MIDDLE_{pid}.nii.gz",
        subdir=None,
        description="synthetic abdominal-like volumes written by scripts.data.phantoms",
    ),
}


def get_preset(preset: str | Mapping[str, Any] | DatasetPreset, **overrides: Any) -> DatasetPreset:
    """Return a preset by name, build one from a config mapping, or pass one through.

    `overrides` replace fields (e.g. `get_preset("sabs", subdir=None)`). A mapping that names a known
    preset in `base` starts from it: `{"base": "chaost2", "labels": {"liver": 1}}`.
    """
    if isinstance(preset, DatasetPreset):
        base = preset
    elif isinstance(preset, str):
        key = preset.lower()
        if key not in PRESETS:
            raise KeyError(f"unknown dataset preset {preset!r}; known presets: {sorted(PRESETS)} "
                           "(or give a mapping with 'name' and 'labels')")
        base = PRESETS[key]
    elif isinstance(preset, Mapping):
        config = dict(preset)
        base_name = config.pop("base", None)
        allowed = {f.name for f in dataclasses.fields(DatasetPreset)}
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise ValueError(f"dataset preset config has unknown keys {unknown}; allowed: {sorted(allowed)} and 'base'")
        if base_name is not None:
            return get_preset(base_name, **{**config, **overrides})
        if "labels" not in config:
            raise ValueError("a user-defined dataset preset needs 'labels' (class name -> label value)")
        config.setdefault("name", "custom")
        return DatasetPreset(**{**config, **overrides})
    else:
        raise TypeError(f"dataset preset must be a name, a mapping or a DatasetPreset, got {type(preset).__name__}")
    return dataclasses.replace(base, **overrides) if overrides else base
