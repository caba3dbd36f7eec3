"""A request's parameters as clients send them, read into values of the right type.

3D Slicer sends its option table's values as strings, OHIF and scripts send JSON values, either may
wrap one value in a list or leave it empty; every reader here accepts all of these, takes an empty
value as "not given", and refuses a malformed one with a 400 that names the parameter. Both the
infer task (``lib/infers/fewshot.py``) and a datastore that stores a label (``label_info``) read them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np

from lib.responses import task_refusal
from scripts.engine.inferer import VOLUME_MODES
from scripts.network.postprocess import THRESHOLD_MODES

# a plain comma-separated list is accepted where a JSON list is meant (Slicer's text fields)
COMMA_LISTS = ("support_slices", "labels")
FALSE_WORDS = ("false", "0", "no", "off")


def first_value(value):
    """One value of a parameter that may come wrapped in a list."""
    return value[0] if isinstance(value, (list, tuple)) and value else value


def is_blank(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, (list, tuple)) and not value)


def parse_float(name: str, value) -> float | None:
    value = first_value(value)
    if is_blank(value):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise task_refusal(400, f"parameter '{name}' must be a number, got {value!r}") from None
    if not np.isfinite(number):
        raise task_refusal(400, f"parameter '{name}' must be finite, got {value!r}")
    return number


def parse_int(name: str, value, minimum: int) -> int | None:
    value = first_value(value)
    if is_blank(value):
        return None
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise task_refusal(400, f"parameter '{name}' must be an integer, got {value!r}") from None
    if number < minimum:
        raise task_refusal(400, f"parameter '{name}' must be at least {minimum}, got {number}")
    return number


def parse_json(name: str, value):
    """A JSON text as its value (other values as they are); an empty text is None."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            if name in COMMA_LISTS:
                return [part.strip() for part in text.split(",") if part.strip()]
            raise task_refusal(400, f"parameter '{name}' is not valid JSON: {text[:80]!r}") from None
    return value


def parse_switch(value, default: bool) -> bool:
    """An on/off parameter: off only when it says so (false, 0, no, off); ``default`` when blank."""
    value = first_value(value)
    value = default if is_blank(value) else value
    return str(value).strip().lower() not in FALSE_WORDS


def parse_label_info(value) -> dict[int, str]:
    """Slicer's ``label_info`` ([{"name": n, "id"|"idx"|"value": v}, ...]) or a mapping name -> value
    (or value -> name) -> {value: name}."""
    value = parse_json("label_info", value)
    if not value:
        return {}
    names: dict[int, str] = {}
    try:
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, str) and str(key).lstrip("-").isdigit():
                    names[int(key)] = item
                else:
                    names[int(item)] = str(key)
        else:
            for entry in value:
                number = next(entry[k] for k in ("id", "idx", "value", "label") if k in entry)
                names[int(number)] = str(entry["name"])
    except (TypeError, ValueError, KeyError, StopIteration):
        raise task_refusal(400, "parameter 'label_info' must be a list of {'name', 'id'} entries or a mapping "
                                f"name -> value; got {str(value)[:120]}") from None
    return names


@dataclass(frozen=True)
class SegmentationParams:
    """What shapes one segmentation. The task holds its defaults (``--conf``); ``read`` gives them
    overridden by a request's own values."""

    threshold: float | None       # None: the model's own
    threshold_mode: str | None    # None: the model's own
    max_shots: int
    volume_mode: str

    def read(self, data: dict) -> SegmentationParams:
        threshold = parse_float("threshold", data.get("threshold"))
        mode = first_value(data.get("threshold_mode")) or self.threshold_mode
        if mode is not None and mode not in THRESHOLD_MODES:
            raise task_refusal(400, f"parameter 'threshold_mode' must be {' or '.join(map(repr, THRESHOLD_MODES))}, "
                                    f"got {mode!r}")
        max_shots = parse_int("max_shots", data.get("max_shots"), 1)
        volume_mode = first_value(data.get("volume_mode"))
        volume_mode = self.volume_mode if is_blank(volume_mode) else str(volume_mode).strip()
        if volume_mode not in VOLUME_MODES:
            raise task_refusal(400, f"parameter 'volume_mode' must be one of {list(VOLUME_MODES)}, "
                                    f"got {volume_mode[:40]!r}")
        return replace(self, threshold=self.threshold if threshold is None else threshold, threshold_mode=mode,
                       max_shots=max_shots or self.max_shots, volume_mode=volume_mode)
