"""Model files, in two forms, both read by ``load_checkpoint_file`` (and so by ``build_segmenter``):

- the *zoo model* (what training writes as ``<run>/model.pt`` and ``export.py`` as the bundle's
  ``models/model.pt``): the bare state dict of ``network_def`` (``SliceNetwork``; fp16 where
  exported, loading casts), so that the model zoo's ``ckpt_export`` and MONAI's ``CheckpointLoader``
  load it as they load any bundle's, with a card beside it (``model.card.json``: the ``ModelConfig``
  and ``trained_on``) for the tools that take a file alone. ``inference.yaml``'s ``model`` block is
  the shipped file's card (a test keeps both equal); for another file give its card:
  ``--model %<run>/model.card.json#config``;
- a *single file* ``{"config", "state_dict", "trained_on"}``, which one rename replaces: what the
  MONAI Label app serves after fine-tuning (``as_single_file``), and what earlier versions wrote.

The frozen parts (autoencoders, a frozen visual encoder) come from their own files, never from these.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from .autoencoders import WeightsError

CARD_SUFFIX = ".card.json"


def trainable_state(segmenter) -> dict:
    """The network's weights without the frozen parts that come from their own files."""
    return {k: v for k, v in segmenter.net.state_dict().items() if not _is_frozen_key(segmenter, k)}


def _is_frozen_key(segmenter, key: str) -> bool:
    return key.startswith("visual_encoder.") and not any(p.requires_grad for p in segmenter.net.visual_encoder.parameters())


def load_trainable_state(segmenter, state: dict, source: str = "checkpoint") -> None:
    expected = trainable_state(segmenter)
    missing = sorted(set(expected) - set(state))
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or mismatched:
        detail = f"missing {missing[:5]}" if missing else f"shape mismatch in {mismatched[:5]}"
        raise WeightsError(f"{source} does not fit preset '{segmenter.config.preset}' "
                           f"(autoencoder '{segmenter.config.autoencoder}'): {detail}")
    segmenter.net.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)


def _state(segmenter, half: bool) -> dict:
    state = trainable_state(segmenter)
    return {k: v.half() if half and v.is_floating_point() else v for k, v in state.items()}


def unet_config(segmenter) -> dict:
    # diffusers' private bookkeeping (e.g. `_use_default_values`, in hash-seed order) would make
    # identical weights save to different bytes: keep only the architecture
    return {k: v for k, v in segmenter.net.unet.config.items() if not k.startswith("_")}


def checkpoint_payload(segmenter, half: bool = False, trained_on: dict | None = None) -> dict:
    """config, unet_config and state_dict (what loading needs); `trained_on` (the datasets, classes
    and patients of the training, `experiment.training_record`) when known: given here, or carried
    over from the file the segmenter was built from. Files without it load as before."""
    payload = {"config": segmenter.config.to_dict(), "unet_config": unet_config(segmenter),
               "state_dict": _state(segmenter, half)}
    trained_on = trained_on if trained_on is not None else segmenter.trained_on
    if trained_on is not None:
        payload["trained_on"] = copy.deepcopy(trained_on)
    return payload


def _write_atomically(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    write(tmp)
    tmp.replace(path)  # never a half-written file


def save_checkpoint_file(segmenter, path: str | Path, half: bool = False, trained_on: dict | None = None) -> None:
    """The single-file form."""
    payload = checkpoint_payload(segmenter, half, trained_on)
    _write_atomically(Path(path), lambda tmp: torch.save(payload, tmp))


def card_path(path: str | Path) -> Path:
    return Path(path).with_suffix(CARD_SUFFIX)


def save_zoo_model(segmenter, path: str | Path, half: bool = True, trained_on: dict | None = None) -> Path:
    """The zoo model: ``path`` holds the bare state dict, ``<stem>.card.json`` its card (written
    first, so a reader never finds weights without the card that describes them). Returns the card's path."""
    payload = checkpoint_payload(segmenter, half, trained_on)
    card = {"config": payload["config"], "trained_on": payload.get("trained_on")}  # tuples read back as lists
    _write_atomically(card_path(path), lambda tmp: tmp.write_text(json.dumps(card, indent=1) + "\n"))
    _write_atomically(Path(path), lambda tmp: torch.save(payload["state_dict"], tmp))
    return card_path(path)


def as_single_file(path: str | Path, target: str | Path) -> None:
    """Either form at ``path`` -> the single-file form at ``target`` (the weights as they are)."""
    stored = load_checkpoint_file(path)
    if not stored.get("config"):
        raise WeightsError(f"{path} has no card ({card_path(path).name}): its architecture is unknown")
    payload = {key: stored[key] for key in ("config", "unet_config", "state_dict", "trained_on") if stored.get(key)}
    _write_atomically(Path(target), lambda tmp: torch.save(payload, tmp))


def read_card(path: str | Path) -> dict:
    """The card beside a model file, ``{}`` where it has none."""
    card = card_path(path)
    if not card.is_file():
        return {}
    try:
        return json.loads(card.read_text())
    except ValueError as error:
        raise WeightsError(f"cannot read the model card {card}: {error}") from None


def _is_state_dict(stored) -> bool:
    return isinstance(stored, dict) and bool(stored) and all(isinstance(v, torch.Tensor) for v in stored.values())


def load_checkpoint_file(path: str | Path) -> dict:
    """``{"state_dict", "config", "unet_config", "trained_on"}`` of either form; for a zoo model,
    ``config`` and ``trained_on`` come from its card (None without one: the caller's keys decide)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    try:
        stored = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise WeightsError(f"cannot read checkpoint {path}: {error}") from None
    if _is_state_dict(stored):
        card = read_card(path)
        return {"state_dict": stored, "config": card.get("config"), "unet_config": None,
                "trained_on": card.get("trained_on")}
    for key in ("config", "state_dict"):
        if not isinstance(stored, dict) or key not in stored:
            raise WeightsError(f"{path} is not an SD-FSMIS checkpoint (no '{key}')")
    return {"unet_config": None, "trained_on": None, **stored}
