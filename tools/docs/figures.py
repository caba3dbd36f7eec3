"""The pictures of bundle/docs: a training curve and a page of overlays, drawn from a run.

    .venv/bin/python -m tools.docs.figures --run bundle/runs/<run> \
        --dataset chaost2 --dataset_dir <CHAOST2> --support 1 --query 2 --organ liver --out bundle/docs

Curves come from the run's TensorBoard events (train loss, validation Dice); overlays show the
support slice with its mask and query slices with the prediction (red) against the ground truth
(green). Only CHAOS (CC BY-SA 4.0, credited in the picture) or phantoms: never CMR images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

BUNDLE_DOCS = Path(__file__).resolve().parents[2] / "bundle" / "docs"  # tools/docs/figures.py


def read_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return scalars


def training_curve(run_dir, out_path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scalars = read_scalars(run_dir)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    if "train_loss" in scalars:
        steps, values = zip(*sorted(scalars["train_loss"]))
        window = max(1, len(values) // 50)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        axes[0].plot(steps, values, alpha=0.3, color="C0")
        axes[0].plot(steps[window - 1:], smooth, color="C0")
    axes[0].set(title="training loss (MSE + 0.5 soft Dice)", xlabel="step")
    if "val_mean_dice" in scalars:
        epochs, dice = zip(*sorted(scalars["val_mean_dice"]))
        axes[1].plot(epochs, dice, marker="o", color="C1")
    axes[1].set(title="validation Dice (training classes, EMA)", xlabel="epoch")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return Path(out_path)


def overlay_page(method, support, query, value: int, out_path, n_queries: int = 4, credit: str = "") -> Path:
    """Support slice (organ's middle) and ``n_queries`` query slices spread over the organ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scripts.engine.inferer import segment_volume

    result = segment_volume(method, support.image, (support.label == value).astype(np.int32), query.image,
                            {"organ": 1})
    organ_z = np.flatnonzero((query.label == value).any(axis=(1, 2)))
    picks = organ_z[np.linspace(0, len(organ_z) - 1, n_queries + 2).astype(int)[1:-1]]
    support_z = np.flatnonzero((support.label == value).any(axis=(1, 2)))
    s_z = int(support_z[len(support_z) // 2])
    fig, axes = plt.subplots(1, n_queries + 1, figsize=(3 * (n_queries + 1), 3.3))
    axes[0].imshow(support.image[s_z], cmap="gray")
    axes[0].contour(support.label[s_z] == value, levels=[0.5], colors="yellow")
    axes[0].set_title(f"support {support.pid}, slice {s_z}")
    for ax, z in zip(axes[1:], picks):
        ax.imshow(query.image[z], cmap="gray")
        ax.contour(query.label[z] == value, levels=[0.5], colors="lime")
        if result.label[z].any():
            ax.contour(result.label[z] > 0, levels=[0.5], colors="red")
        ax.set_title(f"query {query.pid}, slice {z}")
    for ax in axes:
        ax.axis("off")
    if credit:
        fig.text(0.01, 0.01, credit, fontsize=7)
    fig.tight_layout()
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
    return Path(out_path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="run folder: TensorBoard events and model.pt")
    parser.add_argument("--dataset", default="chaost2", choices=["chaost2", "phantom", "sabs"])
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--support", default="1")
    parser.add_argument("--query", default="2")
    parser.add_argument("--organ", default="liver")
    parser.add_argument("--autoencoder_path", default=None)
    parser.add_argument("--out", default=str(BUNDLE_DOCS))
    args = parser.parse_args(argv)

    from scripts.data.presets import get_preset
    from scripts.data.volumes import load_dataset
    from scripts.network.presets import build_segmenter

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(training_curve(args.run, out / "training_curve.png"))
    preset = get_preset(args.dataset)
    support, query = load_dataset(args.dataset_dir, preset, pids=[args.support, args.query])
    method = build_segmenter(checkpoint=Path(args.run) / "model.pt", autoencoder_path=args.autoencoder_path)
    credit = "CHAOS challenge data, CC BY-SA 4.0 (Kavur et al.)" if args.dataset == "chaost2" else "synthetic phantom"
    print(overlay_page(method, support, query, preset.labels[args.organ], out / f"overlay_{args.organ}.png",
                       credit=f"{credit}; yellow: support mask, green: ground truth, red: prediction"))


if __name__ == "__main__":
    main()
