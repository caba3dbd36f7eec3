"""The in-volume pictures of bundle/docs (issue #38), drawn from result files and a fold model.

    .venv/bin/python -m tools.docs.in_volume \
        --results results/accuracy/chaost2_s1_draw --checkpoint <fold 0 model> \
        --dataset_dir <CHAOST2> --patient 1 --organ liver --out bundle/docs

1. ``in_volume_dice_vs_k.png``: whole-volume Dice against the number of drawn slices k, one line per
   method of the ``chaost2_s1_draw`` table, each point the mean over the table's organs and cases
   (read from the result files, nothing recomputed).
2. ``in_volume_propagation.png``: one CHAOS volume, the organ drawn on its middle slice and
   propagated with the given model: slices across the volume, prediction against ground truth,
   past both ends of the organ. Only CHAOS (CC BY-SA 4.0, credited in the picture): never CMR.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]  # tools/docs/in_volume.py
CREDIT = "CHAOS challenge T2-SPIR (Kavur et al., Med. Image Anal. 2021), CC BY-SA 4.0"


def table_records(results_dir) -> list[tuple[str, dict]]:
    """(the row's current label, record) of each complete result file that is a job of its table now:
    a result keeps the label it was run under, and a file of a fold the table does not list yet is left out."""
    from tools.runner.jobs import expand
    from tools.runner.tables import get_table

    labels: dict[str, dict[str, str]] = {}
    out = []
    for path in sorted(Path(results_dir).glob("*.json")):
        record = json.loads(path.read_text())
        if record.get("status") != "complete":
            continue
        table = record["table"]
        if table not in labels:
            labels[table] = {job.name: job.label for job in expand(get_table(table))}
        if record["job"] in labels[table]:
            out.append((labels[table][record["job"]], record))
    return out


def dice_by_k(records) -> dict[str, dict[int, float]]:
    """{method label: {k: Dice %}} from a draw table's ``table_records``: the mean over every organ of
    every group (each organ's value is the table's per-organ mean over cases)."""
    from scripts.protocol.matching import DRAW_MODES

    per_label: dict[str, dict[int, list[float]]] = {}
    for label, record in records:
        for mode, result in record["modes"].items():
            organs = [v["dice_mean"] for name, v in result["summary"].items() if name != "mean"]
            per_label.setdefault(label, {}).setdefault(DRAW_MODES[mode], []).extend(organs)
    return {label: {k: 100 * float(np.mean(v)) for k, v in sorted(ks.items())} for label, ks in per_label.items()}


def dice_vs_k_figure(results_dir, out_path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = table_records(results_dir)
    curves = dice_by_k(records)
    if not curves:
        raise FileNotFoundError(f"no complete result file in {results_dir}")
    folds = ", ".join(str(f) for f in sorted({record["config"]["fold"] for _, record in records}))
    title = f"CHAOST2, folds {folds}: label k slices, get the volume (liver, spleen, kidneys)"
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, points in curves.items():
        ks = sorted(points)
        ax.plot(ks, [points[k] for k in ks], marker="o", label=textwrap.fill(label, 48))
    ax.set_xlabel("slices drawn per organ (k)")
    ax.set_ylabel("whole-volume Dice (%)")
    ax.set_xticks(sorted({k for p in curves.values() for k in p}))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return Path(out_path)


def propagation_figure(method, volume, value: int, organ: str, out_path, columns: int = 6) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scripts.engine.inferer import segment_volume
    from scripts.protocol.matching import drawn_slices

    (z_drawn,) = drawn_slices(volume.label, value, 1)
    drawn = np.where((np.arange(volume.label.shape[0]) == z_drawn)[:, None, None] & (volume.label == value), value, 0)
    result = segment_volume(method, volume.image, drawn, volume.image, {organ: value}, same_volume=True,
                            mode="propagate")
    pred, truth = result.label == value, volume.label == value
    present = np.flatnonzero(truth.any(axis=(1, 2)))
    # from one slice before the organ to one after it, evenly, with the drawn slice among them
    zs = np.unique(np.r_[np.linspace(max(present[0] - 1, 0), min(present[-1] + 1, truth.shape[0] - 1),
                                     columns - 1).round().astype(int), z_drawn])
    dice = 200 * np.logical_and(pred, truth).sum() / max(pred.sum() + truth.sum(), 1)
    fig, axes = plt.subplots(1, len(zs), figsize=(2.2 * len(zs), 2.6))
    for ax, z in zip(np.atleast_1d(axes), zs):
        ax.imshow(volume.image[z], cmap="gray")
        if truth[z].any():
            ax.contour(truth[z], levels=[0.5], colors="lime", linewidths=0.8, linestyles="dashed")
        if pred[z].any():
            ax.contour(pred[z], levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(f"z={z}" + (" drawn" if z == z_drawn else ""), fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{organ} of CHAOS patient {volume.pid}, drawn on one slice, propagated: whole-volume Dice "
                 f"{dice:.1f}  (red: predicted, green dashed: ground truth)", fontsize=9)
    fig.text(0.01, 0.01, CREDIT, fontsize=6)
    fig.tight_layout(rect=(0, 0.04, 1, 0.92))
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return Path(out_path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default=str(REPO / "results" / "accuracy" / "chaost2_s1_draw"))
    parser.add_argument("--checkpoint", help="the model that propagates the example volume")
    parser.add_argument("--dataset_dir", help="CHAOST2 in the SSL-ALPNet layout")
    parser.add_argument("--patient", default="1")
    parser.add_argument("--organ", default="liver")
    parser.add_argument("--out", default=str(REPO / "bundle" / "docs"))
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(dice_vs_k_figure(args.results, out / "in_volume_dice_vs_k.png"))
    if args.checkpoint and args.dataset_dir:
        from scripts.data.presets import get_preset
        from scripts.data.volumes import load_dataset
        from scripts.network.presets import build_segmenter

        preset = get_preset("chaost2")
        (volume,) = load_dataset(args.dataset_dir, preset, pids=[args.patient])
        method = build_segmenter(checkpoint=args.checkpoint).eval()
        print(propagation_figure(method, volume, preset.labels[args.organ], args.organ,
                                 out / "in_volume_propagation.png"))


if __name__ == "__main__":
    main()
