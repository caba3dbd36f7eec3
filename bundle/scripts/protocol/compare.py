"""Side-by-side Dice of several methods from their protocol reports (results.json files).

    python bundle/scripts/protocol/compare.py <folder>   # every results.json below it

Prints one markdown table per mode: a row per method, organ columns and the mean (mean ± std over
folds, in percent), so the network is read beside the baselines of the same run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _pct(value, std=None) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def comparison_tables(results: list[dict]) -> str:
    by_mode: dict[str, list[dict]] = {}
    for result in results:
        by_mode.setdefault(result["mode"], []).append(result)
    blocks = []
    for mode, rows in sorted(by_mode.items()):
        organs = list(rows[0]["aggregate"]["organs"])
        lines = [f"### {mode} ({rows[0].get('shots', 1)}-shot)", "",
                 "| method | " + " | ".join(organs) + " | mean |", "|---" * (len(organs) + 2) + "|"]
        for row in sorted(rows, key=lambda r: r["method"]):
            agg = row["aggregate"]
            cells = [_pct(agg["organs"][o]["dice_mean"], agg["organs"][o]["dice_std"]) for o in organs]
            lines.append(f"| {row['method']} | " + " | ".join(cells) + f" | {_pct(agg['mean']['dice_mean'], agg['mean']['dice_std'])} |")
        if rows[0].get("mode_note"):
            lines += ["", rows[0]["mode_note"]]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def main(folder: str) -> None:
    results = [json.loads(p.read_text()) for p in sorted(Path(folder).rglob("results.json"))]
    if not results:
        raise SystemExit(f"no results.json under {folder}")
    print(comparison_tables(results))
    print(f"\noutputs: {Path(folder).resolve()}")


if __name__ == "__main__":
    main(sys.argv[1])
