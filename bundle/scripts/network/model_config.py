"""``ModelConfig``: the one typed configuration of a segmenter, as diffusers' ``register_to_config``
is a model's. Every list of model keys elsewhere (the training signature's architecture keys, the
MONAI Label app's ``--conf`` overrides, the job runner's row keys, ``inference.yaml``'s ``model``
block) is derived from its fields, each of which has a role:

- ``trained``: changes what training learns (a resumed run must match them);
- ``weights``: where the frozen or pretrained parts are read from;
- ``post``: post-processing of the scores (threshold, connected components);
- ``runtime``: how inference serves a query (shots per slice).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

from .postprocess import COMPONENT_RULES

TRAINED, WEIGHTS, POST, RUNTIME = "trained", "weights", "post", "runtime"

# each preset's default parts (docs/DESIGN.md, "The network's parts"); the U-Net shapes are in presets.py
PRESET_PARTS = {
    "sd15": dict(autoencoder="sd-vae", mask_codec="autoencoder", visual_encoder="dinov2"),
    "compact": dict(autoencoder="unshuffle", mask_codec="unshuffle", visual_encoder="latent"),
    "wide": dict(autoencoder="unshuffle", mask_codec="unshuffle", visual_encoder="latent"),
    "tiny": dict(autoencoder="unshuffle", mask_codec="unshuffle", visual_encoder="latent"),
}
MASK_CODECS = ("autoencoder", "unshuffle")
THRESHOLD_MODES = ("absolute", "relative")


def _key(default, role: str):
    return field(default=default, metadata={"role": role})


@dataclass(frozen=True)
class ModelConfig:
    preset: str = _key("compact", TRAINED)
    autoencoder: str | None = _key(None, TRAINED)        # None: the preset's
    mask_codec: str | None = _key(None, TRAINED)         # None: the preset's
    visual_encoder: str | None = _key(None, TRAINED)     # None: the preset's
    use_qe: bool = _key(True, TRAINED)
    use_vtct: bool = _key(True, TRAINED)
    use_support_kv: bool = _key(True, TRAINED)
    dice_weight: float = _key(0.5, TRAINED)
    autoencoder_path: str | None = _key(None, WEIGHTS)
    visual_encoder_path: str | None = _key(None, WEIGHTS)
    unet_path: str | None = _key(None, WEIGHTS)
    local_files_only: bool = _key(True, WEIGHTS)
    threshold: float = _key(0.0, POST)
    threshold_mode: str = _key("absolute", POST)
    keep_largest: bool = _key(True, POST)                # the paper's largest component per slice
    keep_largest_3d: bool = _key(True, POST)             # one 3D component per organ first
    component_3d: str = _key("support", POST)            # which one: largest, or on the support's footprint
    z_sigma: float = _key(1.0, POST)                     # slices: propagated scores smoothed along z (0: not)
    max_shots: int = _key(3, RUNTIME)                    # labelled slices per query slice, nearest first
    self_support: bool = _key(False, RUNTIME)            # another volume's support: each query slice read
                                                         # again with its own first mask as one more shot

    def __post_init__(self):
        if self.preset not in PRESET_PARTS:
            raise ValueError(f"unknown preset '{self.preset}'; choose one of {sorted(PRESET_PARTS)}")
        for name, value in PRESET_PARTS[self.preset].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)  # frozen: filled once, here
        _check(self.mask_codec, MASK_CODECS, "mask_codec")
        _check(self.threshold_mode, THRESHOLD_MODES, "threshold_mode")
        _check(self.component_3d, COMPONENT_RULES, "component_3d")
        if float(self.z_sigma) < 0:
            raise ValueError(f"z_sigma must be 0 or more slices, got {self.z_sigma!r}")
        if int(self.max_shots) < 1:
            raise ValueError(f"max_shots must be at least 1, got {self.max_shots!r}")

    @classmethod
    def keys(cls, *roles: str) -> tuple[str, ...]:
        """The field names, in order; only those of ``roles`` if given."""
        return tuple(f.name for f in dataclasses.fields(cls) if not roles or f.metadata["role"] in roles)

    @classmethod
    def from_keys(cls, **keys) -> "ModelConfig":
        """From keyword values; ``None`` keeps the default (the preset's part, for the part keys)."""
        unknown = set(keys) - set(cls.keys())
        if unknown:
            raise ValueError(f"unknown model keys {sorted(unknown)}; known: {cls.keys()}")
        return cls(**{k: v for k, v in keys.items() if v is not None})

    @classmethod
    def parse(cls, key: str, text: str | None):
        """A value given as text (a command line, MONAI Label's ``--conf``) as the field's type:
        ``"false"`` is False, not a truthy string; ``""``/``"null"``/``"none"`` is None (the default)."""
        if key not in cls.keys():
            raise ValueError(f"unknown model key {key!r}; known: {cls.keys()}")
        if text is None or not isinstance(text, str):
            return text
        if text.strip().lower() in ("", "null", "none"):
            return None
        kind = _field_types()[key]
        if kind is bool:
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"{key} must be true or false, got {text!r}")
            return lowered in ("true", "1", "yes")
        return kind(text)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self, *roles: str) -> dict:
        """Plain values (what a checkpoint stores, what a signature compares); only ``roles`` if given."""
        return {key: getattr(self, key) for key in self.keys(*roles)}


def _check(value, allowed, name):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _field_types() -> dict[str, type]:
    """Each field's value type (``str | None`` -> str), from the annotations."""
    hints = typing.get_type_hints(ModelConfig)
    return {key: next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))
            for key, hint in hints.items()}
