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


def cases_for_modes(volumes, labels: dict, modes, shots: int = 1, n_folds: int = 5, folds=None) -> list[dict]:
    """The evaluate workflow's dataset: every protocol case of every requested mode."""
    from scripts.engine.experiment import as_fold
    from scripts.protocol.evaluate import protocol_cases

    modes = [modes] if isinstance(modes, str) else list(modes)
    folds = None if folds is None else [as_fold(f) for f in folds]  # `--fold null` arrives as "null"
    if folds is not None and any(f is None for f in folds):
        raise ValueError("eval_folds holds None: a run trained with fold null saw every patient, so no fold is "
                         "held out to evaluate it on (give eval_folds a list, e.g. [0], to score training patients)")
    return [case for mode in modes for case in protocol_cases(volumes, labels, mode, shots, n_folds, folds)]


class CaseRecordIteration:
    """``iteration_update`` of the evaluate workflow's MONAI ``Evaluator``: one protocol case in,
    its record (Dice, TP/FP/FN, HD95, ASSD) out."""

    def __init__(self, method, volumes):
        self.method = method
        self.by_pid = {str(v.pid): v for v in volumes}

    def __call__(self, engine, case: dict) -> dict:
        from scripts.protocol.evaluate import evaluate_case

        record = evaluate_case(self.method, self.by_pid, case)
        dice = "undefined" if record["dice"] is None else f"{100 * record['dice']:.1f}"
        engine.logger.info(f"{case['mode']} fold {case['fold']} {case['organ']} support {case['support_pid']} "
                           f"query {case['query_pid']}: Dice {dice}")
        return {"record": record}


class ProtocolReport:
    """Handler: collects the records of a run and writes, per mode, results.json, cases.csv and
    table.md under ``out_dir/<mode>/``, and ``summary.json`` with every mode's aggregate."""

    def __init__(self, out_dir, method, labels: dict, dataset: str | None = None, shots: int = 1, n_folds: int = 5):
        self.out_dir, self.method, self.labels = Path(out_dir), method, dict(labels)
        self.dataset, self.shots, self.n_folds = dataset, shots, n_folds
        self.records: list[dict] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda e: self.records.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: self.records.append(e.state.output["record"]))
        engine.add_event_handler(Events.COMPLETED, self.write)

    def write(self, engine=None) -> dict:
        from scripts.protocol.report import write_report

        stats = {}
        if hasattr(self.method, "fallback_counts"):
            stats["fallback_counts"] = dict(self.method.fallback_counts)
        summary = {}
        for mode in dict.fromkeys(r["mode"] for r in self.records):
            records = [r for r in self.records if r["mode"] == mode]
            summary[mode] = write_report(
                records, self.out_dir / mode, method=getattr(self.method, "name", type(self.method).__name__),
                mode=mode, shots=self.shots, organs=list(self.labels), dataset=self.dataset, method_stats=stats,
                settings={"n_folds": self.n_folds, "folds": sorted({r["fold"] for r in records}),
                          "labels": self.labels},
            )["aggregate"]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        return summary
