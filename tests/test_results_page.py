"""docs/results.md and the README's headline table are what the runner's generator writes from the
committed accuracy tables (results/accuracy/<table>.json): no number on them is copied by hand.

If the first test fails after new results landed, rewrite both and commit them:
    .venv/bin/python -m tools.runner results-page
"""

import json
from pathlib import Path

import pytest

from tools.runner import results_page as rp

REPO = Path(__file__).resolve().parents[1]


def test_the_committed_page_and_readme_headline_are_what_the_generator_writes():
    tables = rp.load_tables(REPO / "results" / "accuracy")
    assert {"chaost2_s1", "cmr"} <= set(tables)  # the headline's tables are committed
    page = rp.render_page(tables, (REPO / "docs" / "results.src.md").read_text())
    assert (REPO / "docs" / "results.md").read_text() == page, "docs/results.md is stale: run results-page"
    readme = (REPO / "README.md").read_text()
    assert readme.count(rp.HEADLINE_BEGIN) == 1 and readme.count(rp.HEADLINE_END) == 1
    assert readme.count(rp.IN_VOLUME_BEGIN) == 1 and readme.count(rp.IN_VOLUME_END) == 1
    assert rp.readme_with_headline(readme, tables) == readme, "the README's headline table is stale: run results-page"
    assert "{{" not in page and "incomplete" not in rp.headline(tables)
    assert "docs/results.md" in readme
    bundle_source, bundle_page = rp.BUNDLE_PAGES
    bundle = rp.render_page(tables, bundle_source.read_text(), append_unnamed=False)
    assert bundle_page.read_text() == bundle, "bundle/docs/README.md is stale: run results-page"
    assert "{{" not in bundle and "## **Performance**" in bundle
    metadata = rp.METADATA.read_text()
    assert rp.metadata_with_eval_metrics(metadata, tables) == metadata, "metadata's eval_metrics are stale"


def test_eval_metrics_are_the_tables_means_and_leave_out_what_is_incomplete(monkeypatch):
    draw = _table("draw", {("a", "b"): [_row("net", {"a": {0: 0.8, 1: 0.9}, "b": {0: 0.6, 1: 0.7}}),
                                        _row("late", None)]}, modes=("draw1", "draw3"))
    monkeypatch.setattr(rp, "EVAL_METRICS", (("in_volume_1", "draw", "draw1", "all", "net"),
                                             ("in_volume_3_b", "draw", "draw3", "b", "net"),
                                             ("unfinished", "draw", "draw1", "all", "late"),
                                             ("absent_table", "other", "ep1", "all", "net")))
    metrics = rp.eval_metrics({"draw": draw})
    assert metrics.pop("note").count("results/accuracy/draw.md, folds 0, 1 of 2") == 1
    assert metrics == {"in_volume_1": 0.75, "in_volume_3_b": 0.65}
    text = rp.metadata_with_eval_metrics(json.dumps({"name": "x", "eval_metrics": {"old": 1}}), {"draw": draw})
    assert json.loads(text)["eval_metrics"]["in_volume_1"] == 0.75 and "old" not in json.loads(text)["eval_metrics"]


def _cell(per_fold: dict) -> dict:
    values = list(per_fold.values())
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else None
    return {"dice_mean": mean, "dice_std": std, "per_fold": {str(k): v for k, v in per_fold.items()},
            "dice_pooled": mean, "n_cases": 2 * len(values), "hd95_mean": 12.34, "hd95_undefined": 0,
            "assd_mean": 1.0, "assd_undefined": 0}


def _row(label: str, organs: dict | None, shots: str = "1") -> dict:
    cells = None
    if organs is not None:
        folds = list(next(iter(organs.values())))
        cells = {name: _cell(dict(zip(folds, values))) for name, values in
                 ((n, list(v.values())) for n, v in organs.items())}
        cells["mean"] = _cell({f: sum(v[f] for v in organs.values()) / len(organs) for f in folds})
    return {"label": label, "shots": shots, "cells": cells, "folds_expected": [0, 1],
            "folds_done": [0, 1] if organs is not None else [0]}


def _table(name: str, rows_by_group: dict, modes=("ep1",)) -> dict:
    return {"table": name, "title": f"Table {name}", "folds": [0, 1], "n_folds": 2, "steps": [10],
            "jobs_total": 8, "jobs_finished": 7, "notes": ["the weights note", f"a note of {name}"],
            "weights_mismatches": [],
            "sections": [{"mode": mode, "group": list(group), "rows": rows}
                         for mode in modes for group, rows in rows_by_group.items()]}


@pytest.fixture
def tables():
    net = {("a", "b"): [_row("net", {"a": {0: 0.5, 1: 0.7}, "b": {0: 0.9, 1: 0.3}}),
                        _row("base", {"a": {0: 0.2, 1: 0.2}, "b": {0: 0.2, 1: 0.2}}),
                        _row("base", {"a": {0: 0.4, 1: 0.4}, "b": {0: 0.4, 1: 0.4}}, shots="3"),
                        _row("late", None)],
           ("c", "d"): [_row("net", {"c": {0: 0.1, 1: 0.3}, "d": {0: 0.5, 1: 0.5}}),
                        _row("base", {"c": {0: 0.2, 1: 0.2}, "d": {0: 0.2, 1: 0.2}}),
                        _row("base", {"c": {0: 0.4, 1: 0.4}, "d": {0: 0.4, 1: 0.4}}, shots="3"),
                        _row("late", None)]}
    return {"t1": _table("t1", net), "t2": _table("t2", {("x", "y"): [_row("net", {"x": {0: 1.0, 1: 0.0},
                                                                                      "y": {0: 0.5, 1: 0.5}})]})}


def test_values_per_organ_group_and_all_organs(tables):
    assert rp.value(tables, "t1", "ep1", "a", "net") == "60.0"
    assert rp.value(tables, "t1", "ep1", "a,b", "net", "folds") == "70.0 / 50.0"
    assert rp.value(tables, "t1", "ep1", "a,b", "net", "pm") == "60.0 ± 14.1"
    # `all`: every organ of every group averaged per fold (0.5 / 0.45), then over folds
    assert rp.value(tables, "t1", "ep1", "all", "net", "fold0") == "50.0"
    assert rp.value(tables, "t1", "ep1", "all", "net", "pm") == "47.5 ± 3.5"
    assert rp.value(tables, "t1", "ep1", "a,b", "net", "hd95") == "12.3"
    # a label with rows of several shot counts: `@N` picks one, the 1-shot row by default
    assert rp.value(tables, "t1", "ep1", "a", "base") == "20.0"
    assert rp.value(tables, "t1", "ep1", "a", "base@3") == "40.0"
    # an unfinished row never shows a number
    assert rp.value(tables, "t1", "ep1", "all", "late") == "incomplete (1/2 folds)"


@pytest.mark.parametrize("args,message", [
    (("nope", "ep1", "a", "net"), "no table 'nope'"),
    (("t1", "ep1", "zz", "net"), "no organ or group 'zz'"),
    (("t1", "ep1", "a", "nobody"), "no single row 'nobody'"),
    (("t1", "in_volume", "a", "net"), "no mode 'in_volume'"),
    (("t1", "ep1", "a", "net", "median"), "unknown statistic"),
    (("t1", "ep1", "all", "net", "hd95"), "not for `all`"),
])
def test_a_field_the_tables_cannot_fill_is_an_error_that_says_why(tables, args, message):
    with pytest.raises(rp.ResultsPageError, match=message):
        rp.value(tables, *args)


def test_render_fills_fields_rewraps_prose_and_adds_unnamed_tables(tables):
    source = ("<!--source: only for whoever edits this -->\n# Page\n\n{{weights}}\n\n"
              "The net scores {{dice|t1|ep1|all|net|pm}} over\nfour organs, base {{dice|t1|ep1|a,b|base}}.\n\n"
              "{{folds|t1|ep1|a,b}}\n\n{{modes|t1|c,d}}\n\n- item {{dice|t1|ep1|c|net}}\n  goes on\n")
    page = rp.render_page(tables, source)
    assert "only for whoever" not in page and "{{" not in page
    assert "The net scores 47.5 ± 3.5 over four organs, base 20.0.\n" in page  # re-wrapped paragraph
    assert "- item 20.0 goes on\n" in page
    assert "| net | 50.0 / 90.0 (70.0) | 70.0 / 30.0 (50.0) | 60.0 / 60.0 (60.0 ± 14.1) |" in page
    assert "| base, 3 shots | 40.0 ± 0.0 | 12.3 |" in page.replace("EP1 HD95", "")
    assert "| late | incomplete (1/2 folds) | incomplete (1/2 folds) | incomplete (1/2 folds) |" in page
    assert page.index("the weights note") < page.index("## Table t2 (`t2`)")  # t2, never named, gets a section
    assert "a note of t2" in page and "a note of t1" not in page
    one_fold = {"t3": _table("t3", {("a", "b"): [_row("net", {"a": {0: 0.5}, "b": {0: 0.7}})]})}
    one_fold["t3"]["folds"] = [0]
    one_fold["t3"]["sections"][0]["rows"][0]["cells"]["mean"]["dice_std"] = None  # as the report writes it
    assert rp.value(one_fold, "t3", "ep1", "a,b", "net", "pm") == "60.0"
    assert rp.render_page(one_fold, "{{folds|t3|ep1|a,b}}").endswith(
        "| fold 0 | mean |\n|---|---|---|\n| net | 50.0 / 70.0 (60.0) | 50.0 / 70.0 (60.0) |\n")


def test_write_and_check(tmp_path, tables):
    results = tmp_path / "results"
    results.mkdir()
    for name, data in tables.items():
        (results / f"{name}.json").write_text(json.dumps(data))
    (results / "unrelated.json").write_text("[]")
    source, page, readme = tmp_path / "src.md", tmp_path / "page.md", tmp_path / "README.md"
    source.write_text("{{headline}}\n")  # neither headline table exists here: its cells read "-"
    readme.write_text(f"# R\n\n{rp.HEADLINE_BEGIN}\nstale text\n{rp.HEADLINE_END}\n\nmore\n")
    assert rp.write_results_page(results, source, page, readme, check=True, bundle_page=None) == [page, readme]
    assert not page.exists() and "stale text" in readme.read_text()  # --check writes nothing
    assert rp.write_results_page(results, source, page, readme, bundle_page=None) == [page, readme]
    text = readme.read_text()
    assert "stale text" not in text and text.endswith(f"{rp.HEADLINE_END}\n\nmore\n") and "| - | - |" in text
    assert rp.write_results_page(results, source, page, readme, check=True, bundle_page=None) == []
    readme.write_text("# R without the block\n")
    with pytest.raises(rp.ResultsPageError, match="no <!-- results:headline -->"):
        rp.write_results_page(results, source, page, readme, bundle_page=None)


def test_a_headline_row_may_come_from_a_table_of_its_own(tables, monkeypatch):
    monkeypatch.setattr(rp, "HEADLINE_COLUMNS", [("T1 EP1", "t1", "ep1", "all"), ("T2 EP1", "t2", "ep1", "all")])
    monkeypatch.setattr(rp, "HEADLINE_ROWS", [("own recipe", {"t1": ("t2", "net")}), ("plain", {"t1": "base"})])
    text = rp.headline(tables)
    own, plain = (line for line in text.splitlines() if line.startswith(("| own", "| plain")))
    # the redirected row shows t2's "net" in t1's column, and nothing where it names no row
    assert own == f"| own recipe | {rp.value(tables, 't2', 'ep1', 'all', 'net', 'pm')} | - |" == "| own recipe | 50.0 ± 35.4 | - |"
    assert plain == f"| plain | {rp.value(tables, 't1', 'ep1', 'all', 'base', 'pm')} | - |"


def test_the_in_volume_table_reads_the_draw_table_or_says_it_is_missing():
    assert "no results yet" in rp.in_volume_headline({})
    tables = rp.load_tables(REPO / "results" / "accuracy")
    if rp.IN_VOLUME_TABLE not in tables:
        pytest.skip("the draw table is not committed")
    text = rp.in_volume_headline(tables)
    header = text.splitlines()[0]
    assert "1 slice drawn" in header and "5 slices drawn" in header
    labels = {r["label"] for s in tables[rp.IN_VOLUME_TABLE]["sections"] for r in s["rows"]}
    assert all(f"| {label} |" in text for label in labels)  # every method of the table, one row each


def test_the_runner_command_line(tmp_path, tables, monkeypatch, capsys):
    from tools.runner.__main__ import main

    assert main(["results-page", "--check"]) == 0  # the committed files, as the first test
    results = tmp_path / "results"
    results.mkdir()
    (results / "t2.json").write_text(json.dumps(tables["t2"]))
    (tmp_path / "src.md").write_text("# Page\n")
    (tmp_path / "README.md").write_text(f"{rp.HEADLINE_BEGIN}\n{rp.HEADLINE_END}\n")
    args = ["results-page", "--results", str(results), "--source", str(tmp_path / "src.md"),
            "--page", str(tmp_path / "page.md"), "--readme", str(tmp_path / "README.md")]
    assert main([*args, "--check"]) == 1 and "differs" in capsys.readouterr().out
    assert main(args) == 0 and "## Table t2 (`t2`)" in (tmp_path / "page.md").read_text()
    assert main([*args, "--check"]) == 0
    # `aggregate` rewrites the page only from the repository's own tables, never from another folder
    calls = []
    monkeypatch.setattr(rp, "write_results_page", lambda *a, **k: calls.append(a) or [])
    assert main(["aggregate", "--results", str(results), "--home", str(tmp_path / "home")]) == 0
    assert calls == []
