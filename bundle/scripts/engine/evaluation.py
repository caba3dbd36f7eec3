"""The evaluate workflow: the protocol's tables for a trained checkpoint or a baseline.

Which folds are scored is stated in the log, never implied: a run's own model (a checkpoint in its
``output_dir``) and the baselines score the fold the run holds out; a checkpoint from elsewhere
(``models/model.pt``, yours) scores every fold unless ``eval_folds`` says otherwise.
"""

from __future__ import annotations

import ast
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

METHODS = ("sdfsmis", "support_copy", "registration", "contour_interpolation")

logger = logging.getLogger(__name__)


def build_method(name: str, checkpoint=None, device="cpu", self_support: bool = False, **overrides):
    """The method to evaluate: the network from its checkpoint (``self_support``: read each query
    twice, the second time with its own first answer as a shot: ``self_support.py``), or a baseline."""
    if isinstance(self_support, str):  # the command line passes `false` as a (truthy) string
        if self_support.strip().lower() not in ("true", "false"):
            raise ValueError(f"self_support must be true or false, got {self_support!r}")
        self_support = self_support.strip().lower() == "true"
    if name == "sdfsmis":
        from scripts.engine.self_support import SelfSupport
        from scripts.network.presets import build_segmenter

        if checkpoint is None:
            raise ValueError("evaluating sdfsmis needs a checkpoint (train first, or set checkpoint)")
        segmenter = build_segmenter(checkpoint=checkpoint, device=device, **overrides)
        return SelfSupport(segmenter) if self_support else segmenter
    if self_support:
        raise ValueError(f"self_support is a reading of the network, not of the '{name}' baseline")
    if name == "support_copy":
        from scripts.baselines.support_copy import SupportCopy

        return SupportCopy()
    if name == "registration":
        from scripts.baselines.registration import Registration

        return Registration()
    if name == "contour_interpolation":  # the draw<k> modes only: it needs two drawn slices of one volume
        from scripts.baselines.contour_interpolation import ContourInterpolation

        return ContourInterpolation()
    raise ValueError(f"unknown method '{name}'; choose one of {METHODS}")


def default_eval_folds(method: str, fold, checkpoint=None, output_dir=None) -> list | None:
    """evaluate.yaml's ``eval_folds`` when none is given: ``[fold]`` (the patients this run held
    out) for the run's own checkpoint and for a baseline; None (every fold) for a checkpoint that is
    not in the run's ``output_dir``, whose training split this run cannot know. Logged either way."""
    own = checkpoint is None or output_dir is None or Path(checkpoint).resolve().is_relative_to(
        Path(output_dir).resolve())
    if method == "sdfsmis" and not own:
        logger.info("eval_folds not given: %s is not this run's model (%s), so every fold is scored; "
                    "--eval_folds \"[k]\" scores fold k only", checkpoint, output_dir)
        return None
    logger.info("eval_folds not given: scoring fold %s, the one this run holds out (--eval_folds null: every fold)",
                fold)
    return [fold]


def parse_eval_folds(folds) -> list | None:
    """``eval_folds`` as the command line gives it: None or "null"/"none" (every fold), a fold
    index, or a list of them ("[0, 2]" too); each entry read by ``experiment.as_fold``."""
    from scripts.engine.experiment import as_fold

    if isinstance(folds, str):  # `--eval_folds null` arrives as the string "null", not as None
        text = folds.strip()
        if text.lower() in ("null", "none"):
            return None
        try:
            folds = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"eval_folds must be null, a fold index or a list of them, got {text!r}") from None
    if folds is None:
        return None
    return [as_fold(f) for f in (folds if isinstance(folds, (list, tuple)) else [folds])]


def cases_for_modes(volumes, labels: dict, modes, shots: int = 1, n_folds: int = 5, folds=None,
                    volume_mode: str = "propagate") -> list[dict]:
    """The evaluate workflow's dataset: every protocol case of every requested mode (``volume_mode``:
    how the `draw<k>` modes segment the volume, ``propagate`` or ``nearest``)."""
    from scripts.protocol.evaluate import protocol_cases

    modes = [modes] if isinstance(modes, str) else list(modes)
    folds = parse_eval_folds(folds)
    if folds is not None and any(f is None for f in folds):
        raise ValueError("eval_folds holds None: a run trained with fold null saw every patient, so no fold is "
                         "held out to evaluate it on (give eval_folds a list, e.g. [0], to score training patients, "
                         "or --eval_folds null for every fold)")
    cases = [case for mode in modes
             for case in protocol_cases(volumes, labels, mode, shots, n_folds, folds, volume_mode=volume_mode)]
    logger.info("evaluating %d cases: modes %s, folds %s of %d, organs %s", len(cases), modes,
                "all" if folds is None else folds, n_folds, list(labels))
    return cases


def progress_text(done: int, total: int, elapsed_s: float) -> str:
    """``12/40 cases, 1m05s elapsed, ETA 2m31s``: the remaining cases at the mean pace so far."""
    def clock(seconds: float) -> str:
        minutes, seconds = divmod(int(round(seconds)), 60)
        return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{seconds:02d}s"

    eta = elapsed_s / done * (total - done) if done else float("nan")
    return f"{done}/{total} cases, {clock(elapsed_s)} elapsed, ETA {clock(eta) if done else '?'}"


class CaseRecordIteration:
    """``iteration_update`` of the evaluate workflow's MONAI ``Evaluator``: one protocol case in,
    its record (Dice, TP/FP/FN, HD95, ASSD) out."""

    def __init__(self, method, volumes):
        self.method = method
        self.by_pid = {str(v.pid): v for v in volumes}
        self.trained = _trained_patients(method, volumes)
        self.started = None

    def __call__(self, engine, case: dict) -> dict:
        from scripts.protocol.evaluate import evaluate_case

        if self.started is None or engine.state.iteration <= 1:
            self.started = time.perf_counter()
        if self.trained and case["query_pid"] in self.trained:
            engine.logger.warning(f"query {case['query_pid']} is one of the patients this checkpoint was trained on "
                                  f"({sorted(self.trained, key=lambda p: (len(p), p))}, its trained_on): "
                                  "their Dice measures training data, not a test")
            self.trained = set()  # said once
        record = evaluate_case(self.method, self.by_pid, case)
        dice = "undefined" if record["dice"] is None else f"{100 * record['dice']:.1f}"
        total = engine.state.epoch_length or engine.state.iteration
        engine.logger.info(f"{case['mode']} fold {case['fold']} {case['organ']} support {case['support_pid']} "
                           f"query {case['query_pid']}: Dice {dice} "
                           f"[{progress_text(engine.state.iteration, total, time.perf_counter() - self.started)}]")
        return {"record": record}


def _trained_patients(method, volumes) -> set[str]:
    """Pids of ``volumes`` that the checkpoint's ``trained_on`` lists for their dataset (empty for a
    baseline, a checkpoint that records nothing, or another dataset such as the user's own)."""
    datasets = (getattr(method, "trained_on", None) or {}).get("datasets") or []
    names = {str(v.meta.get("preset")) for v in volumes}
    trained = {str(p) for entry in datasets if isinstance(entry, Mapping) and entry.get("dataset") in names
               for p in entry.get("patients") or []}
    return trained & {str(v.pid) for v in volumes}


class ProtocolReport:
    """Handler: collects the records of a run and writes, per mode, results.json, cases.csv and
    table.md under ``out_dir/<mode>/``, and ``summary.json`` with every mode's aggregate."""

    def __init__(self, out_dir, method, labels: dict, dataset=None, shots: int = 1, n_folds: int = 5):
        from scripts.engine.experiment import dataset_name

        self.out_dir, self.method, self.labels = Path(out_dir), method, dict(labels)
        self.dataset, self.shots, self.n_folds = dataset_name(dataset), shots, n_folds  # a mapping: its name
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
