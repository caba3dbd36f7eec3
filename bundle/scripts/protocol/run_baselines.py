r"""Run the training-free baselines through the evaluation protocol and write their reports.

    python -m scripts.protocol.run_baselines --dataset_dir /work/shared/data/CHAOST2 --preset chaost2 \
        --methods support_copy registration --modes ep1 in_volume no_oracle --out bench/results/x

Writes `<out>/<method>/<mode>/{results.json,cases.csv,table.md}` and `<out>/tables.md` gathering every
table. The numbers are the floor a few-shot method must beat under each mode.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from ..baselines.registration import Registration
from ..baselines.support_copy import SupportCopy
from ..data.presets import get_preset
from ..data.volumes import load_dataset
from .evaluate import MODES, evaluate_and_report
from .report import markdown_table

__all__ = ["METHODS", "build_method", "main"]

METHODS = {"support_copy": SupportCopy, "registration": Registration}

log = logging.getLogger("run_baselines")


def build_method(name: str, threads: int = 1):
    """A fresh baseline by name (fresh: fallback counts start at zero)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}")
    return Registration(threads=threads) if name == "registration" else METHODS[name]()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scripts.protocol.run_baselines", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_dir", required=True, help="dataset root (e.g. .../CHAOST2)")
    p.add_argument("--preset", required=True, help="dataset preset: chaost2, cmr, sabs, phantom")
    p.add_argument("--methods", nargs="+", default=["support_copy"], choices=sorted(METHODS))
    p.add_argument("--modes", nargs="+", default=["ep1"], choices=MODES)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--labels", nargs="+", default=None, help="organ names of the preset (default: all)")
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--n_folds", type=int, default=5)
    p.add_argument("--folds", type=int, nargs="+", default=None, help="fold indices to run (default: all)")
    p.add_argument("--support_index", type=int, default=0, help="support = this index of the sorted fold")
    p.add_argument("--threads", type=int, default=1, help="ITK threads for registration")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    preset = get_preset(args.preset)
    names = args.labels or list(preset.labels)
    labels = dict(zip(names, preset.values(names)))
    t0 = time.perf_counter()
    volumes = load_dataset(args.dataset_dir, preset, labels=labels)
    log.info("loaded %d volumes of %s in %.1f s", len(volumes), preset.name, time.perf_counter() - t0)
    out = Path(args.out)
    tables = []
    for method_name in args.methods:
        for mode in args.modes:
            method = build_method(method_name, threads=args.threads)
            summary = evaluate_and_report(method, volumes, labels, out / method_name / mode, mode=mode,
                                          shots=args.shots, n_folds=args.n_folds, folds=args.folds,
                                          support_index=args.support_index, progress=log.info,
                                          dataset=preset.name)
            table = markdown_table(summary, title=f"{preset.name}: {method_name}, {mode}, {args.shots}-shot")
            tables.append(table)
            log.info("\n%s", table)
            (out / "tables.md").write_text("\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
