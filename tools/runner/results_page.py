"""The results page (`docs/results.md`), the README's two result tables (the headline, and the
in-volume table of the app's main use) and the bundle's own page (`bundle/docs/README.md`, from
`docs/bundle_readme.src.md`) and the bundle's `eval_metrics` (`configs/metadata.json`), written from the
accuracy tables so that no number is copied by hand.

`aggregate` writes `results/accuracy/<table>.json`; this module reads only those files. The page's
prose lives in a markdown source (`docs/results.src.md`; a leading `<!--source: ... -->` comment there
stays out of the page) whose `{{...}}` fields are filled here:

    {{headline}}                              the headline table (also the README's, between markers)
    {{in_volume}}                             the in-volume table (label k slices; also the README's)
    {{weights}}                               the note every table carries on where its weights come from
    {{source|TABLE}}                          what a table holds and the commands that reproduce it
    {{notes|TABLE}}                           the table's own notes (the weights note is said once)
    {{modes|TABLE|ORGANS}}                    rows x modes: mean ± std over folds, EP1 HD95
    {{folds|TABLE|MODE|ORGANS}}               rows x folds: each organ and the mean, as "a / b (mean)"
    {{dice|TABLE|MODE|ORGANS|ROW[|STAT]}}     one number, inline

ORGANS is one organ (`liver`), a label group (`liver,spleen`: its mean) or `all` (every organ of the
table's groups, averaged per fold, then mean ± std over folds). ROW is a row label of the table; where
a label has rows of several shot counts, `label@3` picks the 3-shot one (default 1). STAT: `mean`
(default), `pm` (mean ± std), `std`, `fold<k>`, `folds` (every fold, "a / b / c"), `pooled` (pooled
Dice), `hd95` (mm, not for `all`). A row whose folds have not all finished reads `incomplete (k/n
folds)`, as in the tables. Tables in the folder that the source never names get a section of their
own at the end, so a new table is on the page as soon as it is aggregated.

    .venv/bin/python -m tools.runner results-page [--check]      # from the repository root

(`python -m tools.runner aggregate` runs it too.) `tests/test_results_page.py` checks that the
committed page and the README's blocks are what this writes from the committed tables.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path

__all__ = ["HEADLINE_BEGIN", "HEADLINE_END", "IN_VOLUME_BEGIN", "IN_VOLUME_END", "load_tables", "value", "headline",
           "in_volume_headline", "render_page", "readme_with_headline", "eval_metrics", "metadata_with_eval_metrics",
           "write_results_page", "ResultsPageError"]

REPO = Path(__file__).resolve().parents[2]  # tools/runner/results_page.py
RESULTS = REPO / "results" / "accuracy"
SOURCE = REPO / "docs" / "results.src.md"
PAGE = REPO / "docs" / "results.md"
README = REPO / "README.md"
BUNDLE_PAGES = (REPO / "docs" / "bundle_readme.src.md", REPO / "bundle" / "docs" / "README.md")  # the zoo's page
HEADLINE_BEGIN = "<!-- results:headline -->"
HEADLINE_END = "<!-- /results:headline -->"
IN_VOLUME_BEGIN = "<!-- results:in_volume -->"
IN_VOLUME_END = "<!-- /results:in_volume -->"
IN_VOLUME_TABLE = "chaost2_s1_draw"
METADATA = REPO / "bundle" / "configs" / "metadata.json"
# metadata.json's eval_metrics: the shipped model's recipe (compact + TAEF2, supervoxel episodes,
# constant lr, final EMA) cross-validated, each key (name, table, mode, organs, row)
RECIPE_ROW = "SD-FSMIS compact, TAEF2, propagation"
RECIPE_TABLE = "chaost2_s1_supervoxel"  # the recipe's budget on five folds, read the field's way
RECIPE_EP1_ROW = "supervoxels, 6k steps, support component"
RECIPE_SELF_SUPPORT_ROW = "supervoxels, 6k steps, support component, + self-support"  # an option across volumes
EVAL_METRICS = (
    ("chaost2_in_volume_1_slice_mean_dice", IN_VOLUME_TABLE, "draw1", "all", RECIPE_ROW),
    ("chaost2_in_volume_3_slices_mean_dice", IN_VOLUME_TABLE, "draw3", "all", RECIPE_ROW),
    ("chaost2_in_volume_3_slices_contour_interpolation_mean_dice", IN_VOLUME_TABLE, "draw3", "all",
     "contour interpolation (Slicer's fill between slices)"),
    ("chaost2_ep1_mean_dice", RECIPE_TABLE, "ep1", "all", RECIPE_EP1_ROW),
    ("chaost2_ep1_mean_dice_self_support", RECIPE_TABLE, "ep1", "all", RECIPE_SELF_SUPPORT_ROW),
    ("chaost2_ep1_liver_spleen_dice", RECIPE_TABLE, "ep1", "liver,spleen", RECIPE_EP1_ROW),
    ("chaost2_ep1_kidneys_dice", RECIPE_TABLE, "ep1", "left_kidney,right_kidney", RECIPE_EP1_ROW),
)
MODE_NAMES = {"ep1": "EP1", "in_volume": "in-volume", "no_oracle": "no-oracle"}

# The headline: columns are (header, table, mode, organs); rows name, per table, the row they show, or
# (another table, its row) where the row comes from a table of its own (another budget or recipe).
HEADLINE_COLUMNS = [
    ("Abd-MRI EP1", "chaost2_s1", "ep1", "all"),
    ("Abd-MRI in-volume", "chaost2_s1", "in_volume", "all"),
    ("Abd-MRI no-oracle", "chaost2_s1", "no_oracle", "all"),
    ("Card-MRI EP1", "cmr", "ep1", "all"),
    ("Card-MRI in-volume", "cmr", "in_volume", "all"),
    ("Card-MRI no-oracle", "cmr", "no_oracle", "all"),
]
HEADLINE_ROWS = [
    ("the shipped recipe: supervoxels only, 6,000 steps", {"chaost2_s1": (RECIPE_TABLE, RECIPE_EP1_ROW)}),
    ("the same, + self-support (`self_support: true`)", {"chaost2_s1": (RECIPE_TABLE, RECIPE_SELF_SUPPORT_ROW)}),
    ("the first recipe: the other organs' ground truth + supervoxels, 3,000 steps",
     {"chaost2_s1": "SD-FSMIS compact, TAEF2", "cmr": "SD-FSMIS compact, TAEF2"}),
    ("the same weights, `component_3d: support` (the default)",
     {"chaost2_s1": "SD-FSMIS compact, TAEF2, support component"}),
    ("registration (SimpleITK affine + B-spline)", {"chaost2_s1": "registration", "cmr": "registration"}),
    ("support_copy (the support mask pasted)", {"chaost2_s1": "support_copy", "cmr": "support_copy"}),
]
HEADLINE_NOTE = (
    "Abd-MRI: CHAOST2 T2-SPIR, Setting 1, liver, spleen and both kidneys, each unseen in training (one model per "
    "label group and fold; table `chaost2_s1`; the shipped recipe: one supervoxel-trained model per fold serves all "
    "four, table `chaost2_s1_supervoxel`). Card-MRI: MS-CMRSeg bSSFP, LV blood pool, LV myocardium and RV, "
    "trained on supervoxels only (table `cmr`). Final EMA weights{steps}. EP1 takes the query's slices from its "
    "ground truth (the field's oracle), in-volume takes the support from the query volume itself, no-oracle "
    "segments every slice. ")
PUBLISHED = ("Published for Abd-MRI Setting 1 EP1: SSL-ALPNet 78.84; SD-FSMIS with pretrained Stable Diffusion and "
             "DINOv2, 83.16.")
_FIELD = re.compile(r"\{\{([^{}]+)\}\}")
_MARKER = re.compile(r"\s*([-+*]|\d+[.)]|#+)\s")
_SOURCE_NOTE = re.compile(r"<!--source:.*?-->\n?", re.DOTALL)  # a note to whoever edits the source, not on the page


class ResultsPageError(ValueError):
    """A field of the source names a table, row, organ or statistic that the tables do not have."""


def load_tables(results: Path = RESULTS) -> dict[str, dict]:
    """Every `<table>.json` that `aggregate` wrote, by table name."""
    tables = {}
    for path in sorted(Path(results).glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "sections" in data and "table" in data:
            tables[data["table"]] = data
    return tables


# ---- numbers ------------------------------------------------------------------------------------
def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _shots(row) -> int:
    return int(str(row["shots"]).split()[0])


def _table(tables: dict, name: str) -> dict:
    if name not in tables:
        raise ResultsPageError(f"no table {name!r} in the results (tables: {sorted(tables)})")
    return tables[name]


def _organs(table: dict, spec: str) -> tuple[list[tuple[str, ...]], list[str] | None]:
    """(groups the value needs, organs of a single-group value or None for `all`)."""
    groups = [tuple(g) for g in dict.fromkeys(tuple(s["group"]) for s in table["sections"])]
    if spec == "all":
        return groups, None
    names = [n.strip() for n in spec.split(",")]
    for group in groups:
        if names == list(group) or (len(names) == 1 and names[0] in group):
            return [group], names
    raise ResultsPageError(f"table {table['table']!r} has no organ or group {spec!r} (groups: {groups})")


def _row(table: dict, mode: str, group: tuple[str, ...], spec: str) -> dict:
    label, _, shots = spec.partition("@")
    sections = [s for s in table["sections"] if s["mode"] == mode and tuple(s["group"]) == group]
    if not sections:
        raise ResultsPageError(f"table {table['table']!r} has no mode {mode!r} for {list(group)}")
    rows = [r for r in sections[0]["rows"] if r["label"] == label.strip()]
    if len(rows) > 1 or shots:
        rows = [r for r in rows if _shots(r) == int(shots or 1)]
    if len(rows) != 1:
        labels = sorted({r["label"] for r in sections[0]["rows"]})
        raise ResultsPageError(f"table {table['table']!r}, {mode}, {list(group)}: no single row {spec!r} "
                               f"(rows: {labels}; `label@N` picks the N-shot one)")
    return rows[0]


def _incomplete(rows: list[dict]) -> str | None:
    for row in rows:
        if row["cells"] is None:
            return f"incomplete ({len(row['folds_done'])}/{len(row['folds_expected'])} folds)"
    return None


def _fold_values(rows: list[dict], organs: list[str] | None) -> dict[str, float]:
    """Per fold, the mean over the organs (`organs` None: every organ of every row's group)."""
    per_organ = [row["cells"][o]["per_fold"] for row in rows
                 for o in (organs if organs is not None else [k for k in row["cells"] if k != "mean"])]
    folds = sorted(set.intersection(*(set(p) for p in per_organ)), key=int)
    return {f: sum(p[f] for p in per_organ) / len(per_organ) for f in folds}


def _std(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _cell(tables: dict, table_name: str, mode: str, organs: str,
          row_spec: str) -> tuple[dict | None, list[dict], str | None]:
    """(the aggregate's cell of one organ or group, or None for `all`; the rows; why it is incomplete)."""
    table = _table(tables, table_name)
    groups, names = _organs(table, organs)
    rows = [_row(table, mode, group, row_spec) for group in groups]
    gap = _incomplete(rows)
    cell = rows[0]["cells"]["mean" if len(names) > 1 else names[0]] if names is not None and not gap else None
    return cell, rows, gap


def _fold_stats(cell: dict | None, rows: list[dict]) -> tuple[dict[str, float], float, float | None]:
    """(Dice per fold, their mean, their std) of a complete cell, or of `all` (``cell`` None)."""
    if cell is not None:  # the aggregate's own numbers (the tables' std is of the per-fold means)
        return cell["per_fold"], cell["dice_mean"], cell["dice_std"]
    per_fold = _fold_values(rows, None)
    return per_fold, sum(per_fold.values()) / len(per_fold), _std(list(per_fold.values()))


def mean_dice(tables: dict, table_name: str, mode: str, organs: str, row_spec: str) -> tuple[float, list[int]] | None:
    """(mean Dice as a fraction over the folds, the folds) of one row, as the page shows it; None
    while some of its folds have not finished."""
    cell, rows, gap = _cell(tables, table_name, mode, organs, row_spec)
    if gap:
        return None
    per_fold, mean, _ = _fold_stats(cell, rows)
    return mean, sorted(int(f) for f in per_fold)


def value(tables: dict, table_name: str, mode: str, organs: str, row_spec: str, stat: str = "mean") -> str:
    """One number of a table, formatted as the page shows it (Dice in %, distances in mm)."""
    cell, rows, gap = _cell(tables, table_name, mode, organs, row_spec)
    if gap:
        return gap
    if stat == "hd95":
        if cell is None:
            raise ResultsPageError("hd95 is given per organ or label group, not for `all`")
        return "n/a" if cell["hd95_mean"] is None else f"{cell['hd95_mean']:.1f}"
    if stat == "pooled":
        if cell is None:
            raise ResultsPageError("pooled Dice is given per organ or label group, not for `all`")
        return _pct(cell["dice_pooled"])
    per_fold, mean, std = _fold_stats(cell, rows)
    if stat == "mean":
        return _pct(mean)
    if stat == "std":
        return _pct(std)
    if stat == "pm":
        return _pct(mean) + ("" if std is None else f" ± {_pct(std)}")
    if stat == "folds":
        return " / ".join(_pct(per_fold[f]) for f in sorted(per_fold, key=int))
    if stat.startswith("fold") and stat[4:].isdigit():
        if stat[4:] not in per_fold:
            raise ResultsPageError(f"table {table_name!r} has no fold {stat[4:]}")
        return _pct(per_fold[stat[4:]])
    raise ResultsPageError(f"unknown statistic {stat!r} (mean, pm, std, fold<k>, folds, pooled, hd95)")


# ---- tables -------------------------------------------------------------------------------------
def _row_name(row: dict, section: dict) -> str:
    several = len({_shots(r) for r in section["rows"]}) > 1
    return row["label"] + (f", {_shots(row)} shots" if several and _shots(row) != 1 else "")


def headline(tables: dict) -> str:
    """The headline table: the network beside the two baselines, four organs and three cardiac
    structures, every mode; a cell of a table that is missing reads `-`."""
    lines = ["| Dice %, 1-shot, mean ± std over 5 folds | " + " | ".join(c[0] for c in HEADLINE_COLUMNS) + " |",
             "|---" * (len(HEADLINE_COLUMNS) + 1) + "|"]
    for name, labels in HEADLINE_ROWS:
        cells = []
        for _, table, mode, organs in HEADLINE_COLUMNS:
            source, label = labels[table] if isinstance(labels.get(table), tuple) else (table, labels.get(table))
            cells.append(value(tables, source, mode, organs, label, "pm") if label and source in tables else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    used = [t for t in dict.fromkeys(c[1] for c in HEADLINE_COLUMNS) if t in tables]
    steps = ", ".join(map(str, sorted({s for t in used for s in tables[t]["steps"]})))
    note = HEADLINE_NOTE.format(steps=f" after {steps} training steps per fold on 2 CPU cores where a row names no "
                                      "other budget" if steps else "")
    lines += ["", _wrap(note + PUBLISHED)]
    return "\n".join(lines)


def in_volume_headline(tables: dict) -> str:
    """The README's second table: the app's main use, label k slices and get the volume, every
    method of the draw table, the mean over its organs."""
    from scripts.protocol.matching import DRAW_MODES

    if IN_VOLUME_TABLE not in tables:
        return f"(table `{IN_VOLUME_TABLE}` has no results yet: `make accuracy TABLE={IN_VOLUME_TABLE}`)"
    table = tables[IN_VOLUME_TABLE]
    labels = list(dict.fromkeys(r["label"] for section in table["sections"] for r in section["rows"]))
    lines = ["| whole-volume Dice %, four organs | " + " | ".join(
                 f"{k} slice{'s' if k > 1 else ''} drawn" for k in DRAW_MODES.values()) + " |",
             "|---" * (len(DRAW_MODES) + 1) + "|"]
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(value(tables, IN_VOLUME_TABLE, mode, "all", label)
                                                 for mode in DRAW_MODES) + " |")
    folds = ", ".join(map(str, table["folds"]))
    note = (f"CHAOST2 T2-SPIR, liver, spleen and both kidneys, cross-validation fold{'s' if len(table['folds']) > 1 else ''} "
            f"{folds} of {table['n_folds']} (table `{IN_VOLUME_TABLE}`): each organ drawn on k evenly spaced slices "
            "of a patient the model never saw, every slice of the volume segmented, Dice on the whole volume. "
            "The network is the fold's own, trained on supervoxels only, so no organ label was ever trained "
            f"({', '.join(map(str, table['steps']))} steps on 2 CPU cores). The shipped model (`bundle/models/model.pt`) "
            "is another training, on the supervoxels of 18 of the 20 patients: it has seen these images, never "
            "an organ label. Fold 0 with longer training: `docs/results.md`, \"Against training steps\".")
    return "\n".join(lines + ["", _wrap(note)])


def _modes_table(tables: dict, table_name: str, organs: str) -> str:
    table = _table(tables, table_name)
    groups, names = _organs(table, organs)
    if names is None or len(names) < 2:
        raise ResultsPageError(f"modes|{table_name}|{organs}: give one label group (e.g. liver,spleen)")
    group = groups[0]
    modes = [m for m in dict.fromkeys(s["mode"] for s in table["sections"])]
    first = next(s for s in table["sections"] if s["mode"] == modes[0] and tuple(s["group"]) == group)
    spec = ",".join(group)
    lines = [f"| {' / '.join(group)}: mean Dice % | " + " | ".join(MODE_NAMES.get(m, m) for m in modes)
             + " | EP1 HD95 (mm) |", "|---" * (len(modes) + 2) + "|"]
    for row in first["rows"]:
        ref = f"{row['label']}@{_shots(row)}"
        cells = [value(tables, table_name, m, spec, ref, "pm") for m in modes]
        hd95 = value(tables, table_name, "ep1", spec, ref, "hd95") if "ep1" in modes else "-"
        lines.append(f"| {_row_name(row, first)} | " + " | ".join(cells) + f" | {hd95} |")
    return "\n".join(lines)


def _folds_table(tables: dict, table_name: str, mode: str, organs: str) -> str:
    table = _table(tables, table_name)
    (group,), _ = _organs(table, organs)
    section = next((s for s in table["sections"] if s["mode"] == mode and tuple(s["group"]) == group), None)
    if section is None:
        raise ResultsPageError(f"table {table_name!r} has no mode {mode!r} for {list(group)}")
    folds = [str(f) for f in table["folds"]]
    lines = [f"| {MODE_NAMES.get(mode, mode)} Dice %, {' / '.join(group)} (mean) | "
             + " | ".join(f"fold {f}" for f in folds)
             + (f" | {len(folds)} folds, mean ± std |" if len(folds) > 1 else " | mean |"),
             "|---" * (len(folds) + 2) + "|"]
    for row in section["rows"]:
        name = _row_name(row, section)
        if row["cells"] is None:
            gap = _incomplete([row])
            lines.append(f"| {name} | " + " | ".join([gap] * (len(folds) + 1)) + " |")
            continue
        cells = []
        for f in folds:
            organ_text = " / ".join(_pct(row["cells"][o]["per_fold"].get(f)) for o in group)
            cells.append(f"{organ_text} ({_pct(row['cells']['mean']['per_fold'].get(f))})")
        mean = row["cells"]["mean"]
        overall = " / ".join(_pct(row["cells"][o]["dice_mean"]) for o in group)
        spread = "" if mean["dice_std"] is None else f" ± {_pct(mean['dice_std'])}"  # one fold: no std
        cells.append(f"{overall} ({_pct(mean['dice_mean'])}{spread})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _source(tables: dict, table_name: str) -> str:
    table = _table(tables, table_name)
    folds = ", ".join(map(str, table["folds"]))
    steps = ", ".join(map(str, table["steps"])) or "no training"
    text = (f"Table `{table_name}` ({table['title']}): {table['jobs_finished']} of {table['jobs_total']} jobs "
            f"finished, folds {folds} of {table['n_folds']}, {steps} training steps per fold; every mode, HD95 / "
            f"ASSD, pooled Dice and training labels in [`results/accuracy/{table_name}.md`]"
            f"(../results/accuracy/{table_name}.md), one result file per job in `results/accuracy/{table_name}/`. "
            f"Reproduce: `make accuracy TABLE={table_name}`, then `.venv/bin/python -m tools.runner "
            f"aggregate --table {table_name}`.")
    mismatches = table.get("weights_mismatches") or []
    if mismatches:
        text += (f" {len(mismatches)} of its training runs were trained again between the evaluations of rows "
                 "that share them (the cache was lost): those rows are **Not one model** (hashes in the table).")
    return textwrap.fill(text, width=100, break_long_words=False, break_on_hyphens=False)


def _notes(tables: dict, table_name: str) -> str:
    notes = _table(tables, table_name)["notes"][1:]  # the first is the weights note, said once on the page
    return "\n\n".join(textwrap.fill(n, width=100, break_long_words=False, break_on_hyphens=False) for n in notes)


def _weights(tables: dict) -> str:
    notes = [t["notes"][0] for t in tables.values() if t.get("notes")]
    return textwrap.fill(notes[0], width=100, break_long_words=False, break_on_hyphens=False) if notes else ""


def _fill(field: str, tables: dict) -> str:
    parts = [p.strip() for p in field.split("|")]
    kind, args = parts[0], parts[1:]
    builders = {"headline": (headline, 0), "in_volume": (in_volume_headline, 0), "weights": (_weights, 0),
                "source": (_source, 1), "notes": (_notes, 1), "modes": (_modes_table, 2), "folds": (_folds_table, 3)}
    if kind in builders:
        build, n = builders[kind]
        if len(args) != n:
            raise ResultsPageError(f"{{{{{field}}}}}: {kind} takes {n} argument(s)")
        return build(tables, *args)
    if kind == "dice" and len(args) in (4, 5):
        return value(tables, *args)
    raise ResultsPageError(f"unknown field {{{{{field}}}}} (headline, in_volume, weights, source, notes, modes, folds, "
                           "dice)")


def _wrap(text: str, first: str = "", rest: str = "") -> str:
    return textwrap.fill(" ".join(text.split()), width=100, initial_indent=first, subsequent_indent=rest,
                         break_long_words=False, break_on_hyphens=False)


def _render_block(block: str, tables: dict) -> str:
    """A paragraph or list of the source with its fields filled; prose whose inline numbers were
    filled in is wrapped again at 100 columns (tables, headings and code stay as they are)."""
    filled = _FIELD.sub(lambda m: _fill(m.group(1), tables), block)
    inline = any(f.split("|")[0].strip() == "dice" for f in _FIELD.findall(block))
    lines = block.strip("\n").split("\n")
    if not inline or any(line.lstrip().startswith(("|", "#", "<!--", "```")) for line in lines):
        return filled
    items, item = [], None  # a list: each "- " item wrapped on its own, continuation lines indented
    for line in filled.strip("\n").split("\n"):
        if line.startswith("- ") or item is None:
            item = [line[2:]] if line.startswith("- ") else [line]
            items.append((line.startswith("- "), item))
        else:
            item.append(line)
    wrapped = "\n".join(_wrap(" ".join(parts), "- ", "  ") if bullet else _wrap(" ".join(parts))
                        for bullet, parts in items)
    # a wrapped line must not start what markdown would read as a list item or a heading
    if any(_MARKER.match(line) for line in wrapped.split("\n")[1:] if not line.startswith("- ")):
        return filled
    return wrapped


def render_page(tables: dict, source: str, append_unnamed: bool = True) -> str:
    """The page: the source with every field filled, then (``append_unnamed``) a section for each
    table it never names."""
    source = _SOURCE_NOTE.sub("", source)
    named = set()
    for field in _FIELD.findall(source):
        parts = [p.strip() for p in field.split("|")]
        if len(parts) > 1:
            named.add(parts[1])
    page = "\n\n".join(_render_block(block, tables) for block in source.split("\n\n")).rstrip("\n") + "\n"
    for name in sorted(set(tables) - named) if append_unnamed else []:
        table = tables[name]
        groups = [",".join(g) for g in dict.fromkeys(tuple(s["group"]) for s in table["sections"])]
        page += "\n" + "\n\n".join([f"## {table['title']} (`{name}`)", _source(tables, name), _notes(tables, name),
                                    *(_modes_table(tables, name, g) for g in groups)]).rstrip("\n") + "\n"
    return page


def eval_metrics(tables: dict) -> dict:
    """metadata.json's ``eval_metrics``: ``EVAL_METRICS`` from the tables (mean Dice over the folds,
    as a fraction), with a note saying what they measure and over which folds."""
    metrics, folds_of = {}, {}
    for key, table_name, mode, organs, row in EVAL_METRICS:
        if table_name not in tables:
            continue
        found = mean_dice(tables, table_name, mode, organs, row)
        if found is not None:
            metrics[key] = round(found[0], 3)
            folds_of.setdefault(table_name, found[1])
    where = "; ".join(f"results/accuracy/{t}.md, fold{'s' if len(f) > 1 else ''} {', '.join(map(str, f))} of "
                      f"{tables[t]['n_folds']}" for t, f in folds_of.items())
    note = ("the recipe of models/model.pt (compact + TAEF2, CHAOST2 supervoxel episodes only, constant learning rate, "
            "final EMA weights) cross-validated on CHAOST2 (each fold's model: 16 training patients, 6,000 steps; the "
            "shipped file: 18 patients, 8,000 steps), tested on the fold's 4 patients, whose organs and images it never saw: 'label "
            "k slices, get the volume' (whole-volume Dice, four organs, volume_mode propagate, beside Slicer's contour "
            "interpolation) and 1-shot EP1, read once (the default) and with self-support (`self_support: true`) "
            f"({where}); written by `python -m tools.runner results-page`")
    return {"note": note, **metrics}


def metadata_with_eval_metrics(metadata: str, tables: dict) -> str:
    """The bundle's metadata.json text with ``eval_metrics`` written from the tables (4-space JSON)."""
    data = json.loads(metadata)
    data["eval_metrics"] = eval_metrics(tables)
    return json.dumps(data, indent=4, ensure_ascii=False) + "\n"


def readme_with_headline(readme: str, tables: dict) -> str:
    """The README with its generated blocks (between their markers) rewritten: the headline, and
    the in-volume table where the README has its markers."""
    for begin, end_marker, block, required in ((HEADLINE_BEGIN, HEADLINE_END, headline, True),
                                               (IN_VOLUME_BEGIN, IN_VOLUME_END, in_volume_headline, False)):
        start, end = readme.find(begin), readme.find(end_marker)
        if start < 0 and not required:
            continue
        if start < 0 or end < start:
            raise ResultsPageError(f"the README has no {begin} ... {end_marker} block")
        readme = readme[:start + len(begin)] + "\n" + block(tables) + "\n" + readme[end:]
    return readme


def write_results_page(results: Path = RESULTS, source: Path = SOURCE, page: Path = PAGE, readme: Path | None = README,
                       check: bool = False, bundle_page: tuple[Path, Path] | None = BUNDLE_PAGES,
                       metadata: Path | None = None) -> list[Path]:
    """Write the page, the README's blocks, the bundle's own page (``bundle_page``: its source
    and the page; only the tables it names) and, given ``metadata`` (``METADATA``), its
    ``eval_metrics``; with ``check``, write nothing and return the files that differ from what
    would be written."""
    tables = load_tables(results)
    outputs = {Path(page): render_page(tables, Path(source).read_text())}
    if readme is not None:
        outputs[Path(readme)] = readme_with_headline(Path(readme).read_text(), tables)
    if bundle_page is not None:
        outputs[Path(bundle_page[1])] = render_page(tables, Path(bundle_page[0]).read_text(), append_unnamed=False)
    if metadata is not None:
        outputs[Path(metadata)] = metadata_with_eval_metrics(Path(metadata).read_text(), tables)
    stale = [p for p, text in outputs.items() if not p.is_file() or p.read_text() != text]
    if not check:
        for path in stale:
            path.write_text(outputs[path])
    return stale
