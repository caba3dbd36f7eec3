"""Wall time of the bundle's ``run inference`` on one query, start-up included, and where it goes (#40).

Runs ``python -m monai.bundle run inference`` as a user would, in a new process each time, with
``--log_level DEBUG`` (the workflow then logs its time split: start-up, model load, loading,
encoding, network, mapping back, writing), on the shipped model and sample patient A with the liver
drawn on its middle slice:

- in-volume: A is the query (the organ propagated from the drawn slice);
- cross-patient: sample patient B is the query, from A's drawn slice.

Each case runs twice per repeat, interleaved: as configured (after), and with ``--finalize "[]"``
(before: the interpreter's exit then runs its last garbage collection over every object, which
``inference.yaml``'s ``finalize`` spares a command-line run). The split is of the after runs.

    .venv/bin/python bench/bench_bundle_inference.py [--repeats 2] [--pause-pid <pid>] [--out bench/results]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from quiet import paused, pids_from  # noqa: E402
from result_file import publish  # noqa: E402  (bench/, the script's own folder)

SAMPLE = REPO / "bundle" / "sample" / "chaost2"
PARTS = ("start-up", "model load", "loading", "encoding", "network", "mapping back", "writing")


def drawn_liver(out: Path) -> Path:
    gt = nib.load(SAMPLE / "label_15.nii.gz")
    label = np.asarray(gt.dataobj).astype(np.int16)
    zs = np.flatnonzero((label == 1).any(axis=(0, 1)))
    z = int(zs[len(zs) // 2])
    drawn = np.zeros_like(label)
    drawn[:, :, z] = np.where(label[:, :, z] == 1, 1, 0)
    nib.save(nib.Nifti1Image(drawn, gt.affine), out)
    return out


def run_once(support_label: Path, query: Path, output_dir: Path, extra: tuple[str, ...] = ()) -> dict:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.yaml",
           "--support_image", str(SAMPLE / "image_15.nii.gz"), "--support_label", str(support_label),
           "--query_images", f"['{query}']", "--output_dir", str(output_dir), "--log_level", "DEBUG", *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO / "bundle", capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"run inference failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    log = done.stdout + done.stderr
    found = {"wall": wall}
    for part in ("start-up", "model load"):
        match = re.search(rf"{part}[^:]*: ([\d.]+)s", log)
        found[part] = float(match.group(1)) if match else float("nan")
    split = re.search(r"loading ([\d.]+)s, encoding ([\d.]+)s \((\d+) slices\), network ([\d.]+)s, "
                      r"mapping back ([\d.]+)s, writing ([\d.]+)s", log)
    if split is None:
        raise RuntimeError(f"no time split in the log:\n{log[-2000:]}")
    for part, value in zip(("loading", "encoding", "slices", "network", "mapping back", "writing"), split.groups()):
        found[part] = float(value)
    return found


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--pause-pid", default=None, help="pids to pause (SIGSTOP) while measuring, e.g. a training")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    cases = ("in-volume (A from its own slice)", "cross-patient (B from A's slice)")
    runs: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_bundle_") as tmp, paused(pids_from(args.pause_pid)):
        label = drawn_liver(Path(tmp) / "drawn_15.nii.gz")
        queries = dict(zip(cases, (SAMPLE / "image_15.nii.gz", SAMPLE / "image_39.nii.gz")))
        for _ in range(args.repeats):
            for case, query in queries.items():
                for when, extra in (("before", ("--finalize", "[]")), ("after", ())):
                    runs.setdefault((case, when), []).append(run_once(label, query, Path(tmp) / "out", extra))
    rows = ["| query | wall before (s) | wall after (s) | " + " | ".join(PARTS) + " | slices encoded |",
            "|---|---|---|" + "---|" * len(PARTS) + "---|"]
    for case in cases:
        before, after = runs[(case, "before")], runs[(case, "after")]
        best = min(after, key=lambda r: r["wall"])
        walls = [f"{min(r['wall'] for r in found):.1f} (median {statistics.median(r['wall'] for r in found):.1f})"
                 for found in (before, after)]
        rows.append(f"| {case} | {walls[0]} | **{walls[1]}** | " + " | ".join(f"{best[p]:.1f}" for p in PARTS)
                    + f" | {int(best['slices'])} |")
    today = datetime.date.today().isoformat()
    text = "\n".join([
        f"# The bundle's `run inference` on one query ({today})",
        "",
        f"`bench/bench_bundle_inference.py --repeats {args.repeats}`: `python -m monai.bundle run inference` in a new "
        "process, the shipped model (models/model.pt, compact, TAEF2) on the CPU, sample patient A's liver drawn on "
        f"its middle slice (31 slices of 256x256); {platform.machine()}, {len(os.sched_getaffinity(0))} cores, load "
        f"average {load:.1f} at the start{', other work paused while measuring' if args.pause_pid else ''}. "
        "Wall time: the fastest run, the median beside it; before: `--finalize \"[]\"` (the exit's last garbage "
        "collection runs), after: as configured. The fastest after run's split (seconds, from the workflow's DEBUG "
        "log; start-up is Python, the imports (`import monai` alone is most of it) and parsing the config).",
        "",
        *rows,
        "",
    ])
    publish(text, args.out, "bundle_inference")
    return text


if __name__ == "__main__":
    main()
