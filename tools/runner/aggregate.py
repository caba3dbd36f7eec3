"""The accuracy tables, built from whatever job result files exist.

For each mode and label group of a table, one row per table row (method or variant), organs and
their mean as columns, Dice as mean ± std over folds computed by the protocol's own
`scripts.protocol.report.aggregate` on the pooled per-case records of the row's folds. A row shows
numbers only when every fold of it has finished: otherwise each of its cells says
"incomplete (k/n folds)", so no number ever comes from an unfinished job or a partial set of folds.
Writes `<results>/<table>.md` and `<results>/<table>.json`.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from scripts.data.presets import get_preset
from scripts.protocol.report import MODE_NOTES, aggregate

from .execute import _write_json, load_result
from .jobs import Job, Workspace, expand_rows
from .tables import Table

__all__ = ["aggregate_table", "markdown", "write_table", "tables_with_results", "weights_mismatches", "WEIGHTS_NOTE"]

WEIGHTS_NOTE = (
    "Weights: every network number here comes from weights trained in this repository by this runner "
    "(from random initialisation, on the CPU unless the result file's `device` says otherwise). The only "
    "pretrained parts are the frozen TAEF2 or TAESD image autoencoders (pixel-unshuffle has none); no "
    "pretrained Stable Diffusion U-Net or VAE and no DINOv2 were used (they are not reachable here), so "
    "these are not the paper's model and not its numbers.")
_CELL_KEYS = ("dice_mean", "dice_std", "per_fold", "dice_pooled", "n_cases", "hd95_mean", "hd95_undefined",
              "assd_mean", "assd_undefined")


def _label_source_text(source: str, gt: str) -> str:
    return {"gt": gt, "supervoxel": "supervoxels", "both": gt + " + supervoxels"}.get(source, source)


def _training_labels(job: Job) -> str:
    if job.checkpoint is not None:
        return f"the model file's own (`{job.checkpoint}`: its card's `trained_on`)"
    if not job.trains:
        return "none (no training)"
    train = [name for name in get_preset(job.dataset).labels if name not in job.training_group]
    main = _label_source_text(job.label_source, "GT of " + ", ".join(train))
    if not job.extra_datasets:
        return "supervoxels only" if job.label_source == "supervoxel" else main
    # an extra dataset trains on every class and patient it has, with its own or the main label source
    extras = [f"{name}: {_label_source_text(source or job.label_source, 'GT of every class')}"
              for name, _, source in job.extra_datasets]
    return "; ".join([main, *extras])


def _setting(job: Job) -> str:
    if not job.trains:
        return "-"
    return "S1" if job.setting == 1 else f"S2 {job.exclusion_rule}" + (" (legacy)" if job.exclusion_rule == "all" else "")


def _shots(job: Job) -> str:
    trained = job.train_shots if job.trains else job.shots
    return str(job.shots) if trained == job.shots else f"{job.shots} (trained {trained}-shot)"


def aggregate_table(table: Table, ws: Workspace, steps: int | None = None) -> dict:
    """Everything the table shows, as data; cells of incomplete rows are None."""
    rows = expand_rows(table, steps)
    all_jobs = [j for row in rows for j in row]
    results = {j.name: load_result(j, ws) for j in all_jobs}
    sections = []
    for mode in table.modes:
        for group in table.groups:
            section = {"mode": mode, "group": list(group), "rows": []}
            for row_jobs in rows:
                jobs = [j for j in row_jobs if j.group == tuple(group)]
                if not jobs:
                    continue
                done = [j for j in jobs if results[j.name] is not None]
                first = jobs[0]
                row = {
                    "label": first.label, "method": first.method, "setting": _setting(first), "shots": _shots(first),
                    "training_labels": _training_labels(first), "steps": first.steps,
                    "folds_expected": [j.fold for j in jobs], "folds_done": [j.fold for j in done],
                    "complete": len(done) == len(jobs), "missing_jobs": [j.name for j in jobs if j not in done],
                    "commits": sorted({str(results[j.name]["git"].get("commit")) for j in done}),
                    "devices": sorted({str(results[j.name]["device"].get("name")) for j in done}),
                    "cells": None,
                }
                if row["complete"]:
                    cases = [case for j in done for case in results[j.name]["modes"][mode]["cases"]]
                    agg = aggregate(cases, organs=list(group))
                    row["cells"] = {name: {k: cell.get(k) for k in _CELL_KEYS}
                                    for name, cell in [*agg["organs"].items(), ("mean", agg["mean"])]}
                    row["training_seconds_mean"] = (
                        round(sum(results[j.name]["training"]["seconds"] or 0 for j in done) / len(done), 1)
                        if first.trains else None)
                section["rows"].append(row)
            sections.append(section)
    expected = {f"{j.name}.json" for j in all_jobs}
    folder = ws.results / table.name
    unmatched = sorted(p.name for p in folder.glob("*.json") if p.name not in expected or
                       results[p.stem] is None) if folder.is_dir() else []
    return {
        "table": table.name, "title": table.title, "dataset": table.dataset,
        "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "folds": list(table.folds), "n_folds": table.n_folds,
        "steps": sorted({j.steps for j in all_jobs if j.steps is not None}),
        "jobs_total": len(all_jobs), "jobs_finished": sum(r is not None for r in results.values()),
        "notes": [WEIGHTS_NOTE, *table.notes], "sections": sections,
        "unmatched_result_files": unmatched, "weights_mismatches": weights_mismatches(results),
    }


def weights_mismatches(results: dict) -> list[dict]:
    """Jobs that share one training run but whose result files name different weights: the run was
    trained again between their evaluations (its cache lost, say), so the rows that claim to show one
    model show two. Keyed by the tensors' hash where recorded, which ignores how the file was saved;
    a run on a constant schedule writes one file per budget, each its own model."""
    by_run: dict[str, dict[str, list[str]]] = {}
    for name, result in results.items():
        training = (result or {}).get("training") or {}
        model = (result or {}).get("weights", {}).get("model") or {}
        digest = model.get("state_dict_sha256") or model.get("sha256")
        if training.get("run") and digest:
            file = (model.get("file") or "model.pt").split(" ")[0]
            run = training["run"] if file == "model.pt" else f"{training['run']} ({file})"
            by_run.setdefault(run, {}).setdefault(digest, []).append(name)
    return [{"run": run, "jobs_by_weights": groups} for run, groups in sorted(by_run.items()) if len(groups) > 1]


def _pct(value, std=None) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def _mm(cell) -> str:
    def one(value, undefined):
        text = "n/a" if value is None else f"{value:.1f}"
        return text + (f" ({undefined} undef.)" if undefined else "")

    return f"{one(cell['hd95_mean'], cell['hd95_undefined'])} / {one(cell['assd_mean'], cell['assd_undefined'])}"


def markdown(data: dict) -> str:
    folds = data["folds"]
    steps = ", ".join(map(str, data["steps"])) or "-"
    lines = [
        f"# {data['title']}", "",
        f"Table `{data['table']}`, built {data['generated_at']} from {data['jobs_finished']} of {data['jobs_total']} "
        f"finished jobs (one result file per job in `{data['table']}/`). Folds {', '.join(map(str, folds))} of "
        f"{data['n_folds']}; training budget {steps} steps per fold, the same for every fold; the network is "
        "evaluated with its final EMA weights (`model.pt`), never a checkpoint chosen on a test fold.", "",
        "Dice in %: per query volume in 3D, mean over a fold's query volumes, then mean ± std (ddof 1) over "
        "folds; the mean column averages the organs within each fold first. Pooled Dice sums TP/FP/FN over "
        "all cases. A row reads `incomplete (k/n folds)` until every one of its folds has finished: no "
        "number comes from an unfinished job.", "",
    ]
    lines += [*(note + "\n" for note in data["notes"])]
    for mode in dict.fromkeys(s["mode"] for s in data["sections"]):
        lines += [f"## Mode `{mode}`", "", MODE_NOTES.get(mode, ""), ""]
        for section in (s for s in data["sections"] if s["mode"] == mode):
            organs = section["group"]
            head = "| method | setting | shots | training labels | steps | "
            lines += [f"### {', '.join(organs)}", "",
                      head + " | ".join(organs) + " | mean | pooled mean |",
                      "|---" * (7 + len(organs)) + "|"]
            distances = [head + " | ".join(organs) + " | mean |", "|---" * (6 + len(organs)) + "|"]
            for row in section["rows"]:
                lead = (f"| {row['label']} | {row['setting']} | {row['shots']} | {row['training_labels']} | "
                        f"{row['steps'] or '-'} | ")
                if row["cells"] is None:
                    gap = f"incomplete ({len(row['folds_done'])}/{len(row['folds_expected'])} folds)"
                    lines.append(lead + " | ".join([gap] * (len(organs) + 2)) + " |")
                    distances.append(lead + " | ".join([gap] * (len(organs) + 1)) + " |")
                    continue
                cells = [row["cells"][name] for name in [*organs, "mean"]]
                lines.append(lead + " | ".join(_pct(c["dice_mean"], c["dice_std"]) for c in cells)
                             + f" | {_pct(row['cells']['mean']['dice_pooled'])} |")
                distances.append(lead + " | ".join(_mm(c) for c in cells) + " |")
            lines += ["", "HD95 / ASSD in mm (mean over cases where both masks are non-empty; `undef.` counts "
                      "the others):", "", *distances, ""]
    for mismatch in data.get("weights_mismatches", []):
        groups = "; ".join(", ".join(f"`{n}`" for n in names) + f" (weights {digest[:12]})"
                           for digest, names in mismatch["jobs_by_weights"].items())
        lines += [f"**Not one model**: these jobs share the training run `{mismatch['run']}` but were evaluated "
                  f"on different weights (the run was trained again between them): {groups}.", ""]
    if data["unmatched_result_files"]:
        lines += ["Result files not used (another configuration, e.g. another step budget, or unreadable): "
                  + ", ".join(f"`{n}`" for n in data["unmatched_result_files"]), ""]
    return "\n".join(lines)


def write_table(table: Table, ws: Workspace, steps: int | None = None) -> list[Path]:
    """Write `<results>/<table>.json` and `.md`; returns their paths."""
    data = aggregate_table(table, ws, steps)
    ws.results.mkdir(parents=True, exist_ok=True)
    json_path, md_path = ws.results / f"{table.name}.json", ws.results / f"{table.name}.md"
    _write_json(json_path, data)
    md_path.write_text(markdown(data))
    return [json_path, md_path]


def tables_with_results(ws: Workspace, tables: dict) -> list[Table]:
    return [t for name, t in tables.items() if (ws.results / name).is_dir() and any((ws.results / name).glob("*.json"))]
