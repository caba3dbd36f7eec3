"""Resuming an interrupted training, only into the training that wrote the checkpoint.

A run folder keeps its interval checkpoints, and the training workflow resumes the newest one. A
rerun under the same ``run_name`` with another label source, step budget, autoencoder or fold
would otherwise carry on the old run's weights, optimiser and schedule as if they were its own.
Each checkpoint therefore carries a *training signature* (what the run trains on and how), and a
run resumes only a checkpoint whose signature equals its own; anything else stops with an error
that names the differences. Device, AMP, logging and checkpoint intervals are not part of it: a
run may resume on another machine.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from scripts.network.model_config import TRAINED, ModelConfig

SIGNATURE_KEY = "training_signature"


def training_signature(trained_on: dict, model_config: ModelConfig, **knobs) -> dict:
    """The signature of a training: ``trained_on`` (datasets, classes, patients, setting, label
    source: `experiment.training_record`), the network's keys that change what is trained (paths,
    thresholds and post-processing do not: ``ModelConfig``'s ``trained`` role) and the given
    optimisation knobs (steps, batch size, learning rates, ...), as plain JSON values."""
    record = {"trained_on": trained_on, "network": model_config.to_dict(TRAINED), **knobs}
    return json.loads(json.dumps(record, sort_keys=True, default=str))


class TrainingSignature:
    """The signature as an object ignite's `Checkpoint` saves (it stores ``state_dict()``; nothing
    loads it back: `check_signature` reads it before the checkpoint loader runs)."""

    def __init__(self, signature: dict):
        self.signature = signature

    def state_dict(self) -> dict:
        return dict(self.signature)


def with_signature(contents: dict, signature: dict) -> dict:
    """The checkpoint's objects plus the signature, for the checkpoint saver (the loader leaves it
    out: it is checked before loading, and older checkpoints lack it)."""
    return {**contents, SIGNATURE_KEY: TrainingSignature(signature)}


class ResumeMismatchError(ValueError):
    """The newest checkpoint of a run folder was written by a different training."""


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def signature_differences(stored: dict, current: dict, prefix: str = "") -> list[str]:
    """``key: <stored> there, <current> here`` for every leaf that differs (dicts, and lists of
    equal length, recurse: ``trained_on.datasets[0].patients``)."""
    out = []
    for key in sorted(set(stored) | set(current)):
        there, here = stored.get(key), current.get(key)
        if isinstance(there, dict) and isinstance(here, dict):
            out += signature_differences(there, here, f"{prefix}{key}.")
        elif isinstance(there, list) and isinstance(here, list) and len(there) == len(here) and there != here:
            for i, (a, b) in enumerate(zip(there, here)):
                out += signature_differences({f"{key}[{i}]": a}, {f"{key}[{i}]": b}, prefix)
        elif there != here:
            out.append(f"{prefix}{key}: {_short(there)} there, {_short(here)} here")
    return out


def check_signature(checkpoint_path, signature: dict) -> None:
    """Raise `ResumeMismatchError` unless the checkpoint was written by a training with this
    signature. A checkpoint without one (written before signatures existed) resumes with a warning."""
    stored = torch.load(checkpoint_path, map_location="cpu", weights_only=False).get(SIGNATURE_KEY)
    if stored is None:
        warnings.warn(f"{checkpoint_path} carries no training signature (written by an older version); "
                      "resuming it unchecked", stacklevel=2)
        return
    differences = signature_differences(stored, signature)
    if differences:
        raise ResumeMismatchError(
            f"{checkpoint_path} was written by a different training, so this run cannot resume it:\n  "
            + "\n  ".join(differences)
            + "\nRerun with the settings it was written with, or give this training its own --run_name "
              "(or --output_dir), or delete that run folder to start afresh.")


def latest_checkpoint(folder, signature: dict | None = None) -> str | None:
    """The newest interval checkpoint of an interrupted run, to resume from (None: start afresh);
    with ``signature``, checked to belong to the same training (`check_signature`)."""
    candidates = sorted(Path(folder).glob("checkpoint_*.pt"), key=lambda p: p.stat().st_mtime) if Path(folder).is_dir() else []
    if not candidates:
        return None
    if signature is not None:
        check_signature(candidates[-1], signature)
    return str(candidates[-1])
