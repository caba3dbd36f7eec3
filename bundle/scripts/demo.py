"""The demo (`make demo`): the shipped model on the embedded sample, the way a user works.

On sample patient A (CHAOS T2-SPIR patient 15, ``sample/chaost2``) the liver, both kidneys and the
spleen are "drawn" on one slice each: each organ's middle slice, copied from the ground truth. From
those four slices the model segments

1. the rest of A (in-volume: the support is the query's own file), and
2. all of sample patient B (CHAOS patient 39) from A's drawn slices (cross-patient),

each through the project's one seam, ``scripts.engine.inferer.segment_files``. It prints Dice per
organ against the ground truth on whole volumes and the wall time of each call, and writes the
NIfTI results (on each query's grid, with its affine), the drawn label and a PNG overlay.

    cd bundle && ../.venv/bin/python -m scripts.demo [--out DIR] [--sample DIR] [--checkpoint FILE]

The shipped model is meant to be trained without these two patients (``make shipped-model``
excludes them); the demo reads the checkpoint's ``trained_on`` and says plainly whether it did.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SAMPLE = BUNDLE_ROOT / "sample" / "chaost2"
DEFAULT_OUT = BUNDLE_ROOT.parent / "outputs" / "demo"
DEFAULT_CHECKPOINT = "models/model.pt"
PATIENTS = {"A": "15", "B": "39"}  # sample patient -> CHAOS patient id (sample/chaost2/README.md)
DATASET = "chaost2"
COLOURS = {"liver": "tab:orange", "right_kidney": "tab:cyan", "left_kidney": "tab:purple", "spleen": "tab:green"}
CREDIT = "CHAOS challenge T2-SPIR (Kavur et al., Med. Image Anal. 2021), CC BY-SA 4.0"


@dataclass
class Call:
    """One call of the seam: which query, how, its result on the query's file grid, how long."""

    name: str                 # "A in-volume" | "B cross-patient"
    pid: str
    label: np.ndarray         # (X, Y, Z) on the query file's grid
    truth: np.ndarray
    seconds: float
    dice: dict[str, float]
    path: Path


@dataclass
class DemoResult:
    organs: dict[str, int]
    drawn_z: dict[str, int]            # organ -> the one drawn slice of A (file axis 2)
    drawn: np.ndarray                  # the drawn label of A, (X, Y, Z)
    drawn_path: Path
    calls: list[Call]
    load_seconds: float
    training_note: str
    sample_seen: list[str] = field(default_factory=list)  # sample pids the checkpoint trained on
    png: Path | None = None


def sample_files(sample_dir, pid: str) -> tuple[Path, Path]:
    """(image, label) of one sample patient, with a clear error where they are not."""
    image, label = Path(sample_dir) / f"image_{pid}.nii.gz", Path(sample_dir) / f"label_{pid}.nii.gz"
    missing = [str(p) for p in (image, label) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"the demo's sample is incomplete: {', '.join(missing)} not found "
                                f"(--sample names the folder; the repository ships {DEFAULT_SAMPLE})")
    return image, label


def middle_slices(label: np.ndarray, organs: dict[str, int]) -> dict[str, int]:
    """Each organ's middle slice along z (file axis 2), as the protocol's in-volume support picks it."""
    from scripts.protocol.matching import in_volume_episodes

    slices = np.ascontiguousarray(np.asarray(label).transpose(2, 1, 0))  # slice space: z first
    return {name: int(in_volume_episodes(slices, value).support_z[0, 0]) for name, value in organs.items()}


def draw(label_path, out_path, organs: dict[str, int]) -> tuple[np.ndarray, dict[str, int]]:
    """A user's drawing, simulated: each organ on its middle slice only (ground truth there), saved
    on the label file's grid. Returns (drawn array, organ -> slice)."""
    import nibabel as nib

    source = nib.load(str(label_path))
    truth = np.asarray(source.dataobj).astype(np.int16)
    drawn_z = middle_slices(truth, organs)
    drawn = np.zeros_like(truth)
    for name, z in drawn_z.items():
        value = organs[name]
        drawn[..., z][truth[..., z] == value] = value
    header = source.header.copy()
    header.set_data_dtype(np.int16)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(drawn, source.affine, header), str(out_path))
    return drawn, drawn_z


def dice(pred: np.ndarray, truth: np.ndarray, value: int) -> float:
    a, b = pred == value, truth == value
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 1.0


def sample_patients_seen(trained_on: dict | None, pids=tuple(PATIENTS.values())) -> list[str] | None:
    """The sample pids that ``trained_on`` lists among its CHAOST2 patients; None if it records nothing."""
    if not trained_on:
        return None
    listed = {str(p) for entry in trained_on.get("datasets") or [] if entry.get("dataset") == DATASET
              for p in entry.get("patients") or []}
    return [pid for pid in pids if pid in listed]


def training_note(trained_on: dict | None) -> str:
    seen = sample_patients_seen(trained_on)
    names = {pid: letter for letter, pid in PATIENTS.items()}
    if seen is None:
        return ("WARNING: this checkpoint does not record what it was trained on (no trained_on): the Dice "
                "below may be on patients it was trained on.")
    if seen:
        which = ", ".join(f"{pid} (sample patient {names[pid]})" for pid in seen)
        return (f"WARNING: this checkpoint was trained on CHAOS patient(s) {which}: its trained_on lists them. "
                "The Dice above is on patients the model was trained on, not on unseen patients "
                "(`make shipped-model` retrains it without them).")
    return ("The model never saw patients 15 and 39 in training: its trained_on lists neither (the "
            "shipped model is trained with --exclude_patients \"[15, 39]\"). The Dice above is on unseen patients.")


def run_demo(out_dir=DEFAULT_OUT, sample_dir=DEFAULT_SAMPLE, checkpoint=DEFAULT_CHECKPOINT,
             device: str = "cpu", png: bool = True, self_support: bool = False) -> DemoResult:
    """The whole job: draw on A, segment A in-volume and B cross-patient, score, write the files.
    ``self_support``: B read twice per slice (the model key; A, in-volume, never is)."""
    from scripts.data.presets import get_preset
    from scripts.engine.inference import save_label
    from scripts.engine.inferer import segment_files
    from scripts.network.presets import build_segmenter

    out_dir = Path(out_dir)
    organs = dict(get_preset(DATASET).labels)
    image_a, label_a = sample_files(sample_dir, PATIENTS["A"])
    image_b, label_b = sample_files(sample_dir, PATIENTS["B"])
    checkpoint = _bundle_path(checkpoint)

    start = time.perf_counter()
    method = build_segmenter(checkpoint=checkpoint, device=device, **({"self_support": True} if self_support else {}))
    method.eval()
    load_seconds = time.perf_counter() - start

    drawn_path = out_dir / f"label_{PATIENTS['A']}_drawn.nii.gz"
    drawn, drawn_z = draw(label_a, drawn_path, organs)
    calls = []
    for name, image, truth_path in (("A in-volume", image_a, label_a), ("B cross-patient", image_b, label_b)):
        start = time.perf_counter()
        # support image path == query image path: the seam's in-volume case
        label, query, _ = segment_files(method, image_a, drawn_path, image, labels=organs)
        seconds = time.perf_counter() - start
        truth = _read(truth_path)
        path = save_label(label, query, out_dir)
        calls.append(Call(name, query.pid, label, truth, seconds,
                          {organ: dice(label, truth, value) for organ, value in organs.items()}, path))
    trained_on = getattr(method, "trained_on", None)
    result = DemoResult(organs, drawn_z, drawn, drawn_path, calls, load_seconds, training_note(trained_on),
                        sample_patients_seen(trained_on) or [])
    if png:
        result.png = overlay(result, {c.pid: _read(p) for c, p in zip(calls, (image_a, image_b))},
                             out_dir / "demo_overlay.png")
    return result


def _bundle_path(path) -> Path:
    """A relative path from the working directory, else from the bundle root (``models/model.pt``)."""
    path = Path(path)
    return path if path.is_absolute() or path.exists() else BUNDLE_ROOT / path


def _read(path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


def table(result: DemoResult) -> str:
    """Dice (%) per organ and its mean for each call, with the call's wall time."""
    organs = list(result.organs)
    lines = ["| query | " + " | ".join(organs) + " | mean | seconds |",
             "|---" * (len(organs) + 3) + "|"]
    for call in result.calls:
        values = [100 * call.dice[o] for o in organs]
        lines.append(f"| {call.name} (patient {call.pid}) | " + " | ".join(f"{v:.1f}" for v in values)
                     + f" | {np.mean(values):.1f} | {call.seconds:.1f} |")
    return "\n".join(lines)


def overlay(result: DemoResult, images: dict[str, np.ndarray], out_path) -> Path:
    """One PNG: A's liver slice as drawn, three predicted slices of A, four of B; ground truth
    dashed, prediction solid, one colour per organ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    a, b = result.calls
    drawn = set(result.drawn_z.values())
    rows = [[(a, result.drawn_z["liver"], "drawn")] + [(a, z, "predicted") for z in _spread(a.truth, 3, drawn)],
            [(b, z, "predicted") for z in _spread(b.truth, 4, set())]]
    fig, axes = plt.subplots(2, 4, figsize=(13, 7.4))
    for row, panels in zip(axes, rows):
        for ax, (call, z, kind) in zip(row, panels):
            # rows = file axis 1 as in slice space, drawn bottom-up so that the spine lies at the bottom
            ax.imshow(images[call.pid][..., z].T, cmap="gray", origin="lower")
            shown = result.drawn if kind == "drawn" else call.label
            for organ, value in result.organs.items():
                if (call.truth[..., z] == value).any():
                    ax.contour((call.truth[..., z] == value).T, levels=[0.5], colors=COLOURS[organ],
                               linestyles="dashed", linewidths=1)
                if (shown[..., z] == value).any():
                    ax.contour((shown[..., z] == value).T, levels=[0.5], colors=COLOURS[organ], linewidths=1.5)
            ax.set_title(f"{call.name.split()[0]} (patient {call.pid}), z={z}: {kind}", fontsize=9)
            ax.axis("off")
    handles = [Line2D([], [], color=c, label=o) for o, c in COLOURS.items()]
    handles += [Line2D([], [], color="k", linestyle="dashed", label="ground truth"),
                Line2D([], [], color="k", label="drawn / predicted")]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.6, 0.0), ncol=len(handles), fontsize=8,
               frameon=False)
    fig.suptitle("SD-FSMIS demo: 4 organs drawn on one slice each of A; the rest of A and all of B segmented")
    fig.text(0.01, 0.005, CREDIT, fontsize=7)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.91, bottom=0.07, wspace=0.04, hspace=0.14)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
    return out_path


def _spread(truth: np.ndarray, count: int, skip: set[int]) -> list[int]:
    """``count`` slices spread over where the organs are, none of the ``skip`` ones if avoidable."""
    z = [int(s) for s in np.flatnonzero(truth.reshape(-1, truth.shape[-1]).any(axis=0)) if s not in skip]
    return [z[i] for i in np.linspace(0, len(z) - 1, count + 2).astype(int)[1:-1]] if z else []


def main(argv=None) -> DemoResult:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default: <repo>/outputs/demo)")
    parser.add_argument("--sample", default=str(DEFAULT_SAMPLE), help="folder with image_/label_ 15 and 39")
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="model file (default models/model.pt)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--self_support", action="store_true",
                        help="read B (cross-patient) twice per slice, its first answer as one more shot")
    args = parser.parse_args(argv)
    print(f"SD-FSMIS demo: {args.checkpoint} on the embedded CHAOS sample ({args.sample})")
    result = run_demo(args.out, args.sample, args.checkpoint, args.device, self_support=args.self_support)
    print(f"model loaded in {result.load_seconds:.1f} s")
    print("drawn on sample patient A (CHAOS 15), one slice each: "
          + ", ".join(f"{organ} z={z}" for organ, z in result.drawn_z.items()))
    print("A: the rest of A segmented from those slices (in-volume), scored on the whole volume;")
    print("B: all of sample patient B (CHAOS 39) segmented from A's drawn slices (cross-patient).")
    print("Dice (%) against the ground truth, and the wall time of each call:\n")
    print(table(result))
    print("\n" + result.training_note + "\n")
    print(f"outputs in {Path(args.out).resolve()}:")
    for path in [result.drawn_path] + [c.path for c in result.calls] + [result.png]:
        print(f"  {path}")
    return result


if __name__ == "__main__":
    main()
