"""The evaluate workflow: the protocol's tables for a trained checkpoint or a baseline."""

from __future__ import annotations

import json
from pathlib import Path

METHODS = ("sdfsmis", "support_copy", "registration")


def build_method(name: str, checkpoint=None, device="cpu", **overrides):
    """The method to evaluate: the network from its checkpoint, or a baseline."""
    if name == "sdfsmis":
        from scripts.network.presets import build_segmenter

        if checkpoint is None:
            raise ValueError("evaluating sdfsmis needs a checkpoint (train first, or set checkpoint)")
        return build_segmenter(checkpoint=checkpoint, device=device, **overrides)
    if name == "support_copy":
        from scripts.baselines.support_copy import SupportCopy

        return SupportCopy()
    if name == "registration":
        from scripts.baselines.registration import Registration

        return Registration()
    raise ValueError(f"unknown method '{name}'; choose one of {METHODS}")


def evaluate_modes(method, volumes, labels: dict, modes, out_dir, shots: int = 1, n_folds: int = 5, folds=None,
                   dataset: str | None = None, progress=print) -> dict:
    """Run the protocol in each mode; tables in ``out_dir/<mode>/`` and a summary of means."""
    from scripts.protocol.evaluate import evaluate_and_report

    summary = {}
    for mode in [modes] if isinstance(modes, str) else modes:
        result = evaluate_and_report(method, volumes, labels, Path(out_dir) / mode, mode=mode, shots=shots,
                                     n_folds=n_folds, folds=folds, dataset=dataset, progress=progress)
        summary[mode] = result
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary
