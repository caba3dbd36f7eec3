"""Speed of the in-volume modes (issue #38): propagation against the nearest-support mode, measured in
one run on the shipped model.

One organ drawn on one slice (its middle), the rest of the volume segmented through the seam
(``segment_volume``, what ``segment_files``, the app and the evaluator call), on 2 CPU threads:

- first call: nothing cached (the slices are encoded by TAEF2 on the call: by propagation as its
  walks reach them; the row below encodes every slice first, as before ``slice_latents.py``);
- repeated call: the same request again (latents cached by content; propagation's walks memoised);
- another organ of the same volume after the first (its latents cached, its walk new).

A second table (issue #40: four organs from one slice <= 2x one organ) times several organs of one
volume, latents ready (the server's warm-up), as the server benchmark's calls go: the liver, then
the four organs (the liver remembered, three new walks), then the liver drawn one slice off (a new
walk), and the four organs with nothing remembered; before: the organs walked one after the other
(``propagate_organ`` per organ, as the seam did), after: in step (``propagate_organs``, one batch of
the network per step for every organ).

The modes run interleaved, call by call, so a busy machine slows both alike; each cell is the
fastest repeat (median beside it); ``--pause-pid`` stops other work (a training) while measuring.
Default volume: sample patient A (``bundle/sample/chaost2``, CHAOS patient 15, 31 slices), liver
then spleen; ``--depth 40`` stacks it to 40 slices (the issue's size) by repeating its end slices.

    .venv/bin/python bench/bench_propagation.py [--repeats 3] [--depth 40] [--pause-pid PID] [--out bench/results]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import scripts.engine.inferer as seam
from quiet import paused, pids_from  # bench/, the script's own folder
from result_file import publish
from scripts.data.volumes import load_volume
from scripts.engine.inferer import segment_volume
from scripts.engine.propagation import clear_memo, propagate_organ, propagate_organs
from scripts.network.presets import build_segmenter

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "bundle" / "sample" / "chaost2"
WHOLE = "first call, every slice encoded first (before: the walk now encodes the slices it reaches)"


def padded(image: np.ndarray, label: np.ndarray, depth: int):
    """The volume stacked to ``depth`` slices by repeating its first and last slices (no organ there)."""
    extra = max(0, depth - image.shape[0])
    before, after = extra // 2, extra - extra // 2
    pad = ((before, after), (0, 0), (0, 0))
    label = np.pad(np.where(np.isin(np.arange(label.shape[0]), [0, label.shape[0] - 1])[:, None, None], 0, label),
                   pad, mode="edge")
    return np.pad(image, pad, mode="edge"), label


def drawn_middle(label: np.ndarray, value: int, shift: int = 0) -> np.ndarray:
    zs = np.flatnonzero((label == value).any(axis=(1, 2)))
    z = int(zs[len(zs) // 2]) + shift
    out = np.zeros_like(label)
    out[z] = np.where(label[z] == value, value, 0)
    return out


def one_after_another(method, image, organs, *args, **kwargs):
    """The seam's organs before they walked in step: each organ's walk on its own."""
    return [propagate_organ(method, image, drawn, *args, **kwargs) for drawn in organs]


ORGAN_CALLS = ("one organ (the liver)", "four organs, the liver remembered", "one organ, a new walk",
               "four organs, none remembered")


def organ_times(method, image: np.ndarray, label: np.ndarray, repeats: int) -> dict:
    """{(walks, call): seconds per repeat}, latents encoded first; the two ways interleaved."""
    liver, shifted = drawn_middle(label, 1), drawn_middle(label, 1, shift=-1)
    four = np.max([drawn_middle(label, value) for value in (1, 2, 3, 4)], axis=0)
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeats):
        for walks, walker in (("one after another", one_after_another), ("in step", propagate_organs)):
            seam.propagate_organs = walker
            method.latent_cache.clear()
            clear_memo()
            method.encode_images_cached(image)
            for what, drawn, forget in zip(ORGAN_CALLS, (liver, four, shifted, four), (False, False, False, True)):
                if forget:
                    clear_memo()
                start = time.perf_counter()
                segment_volume(method, image, drawn, image, same_volume=True, mode="propagate")
                times.setdefault((walks, what), []).append(time.perf_counter() - start)
    seam.propagate_organs = propagate_organs
    return times


def mode_times(method, image: np.ndarray, label: np.ndarray, repeats: int) -> dict:
    """{(mode, call): seconds per repeat} of the nearest and propagate modes, interleaved."""
    first, second = drawn_middle(label, 1), drawn_middle(label, 4)  # liver, then spleen
    both = np.maximum(first, second)

    def call(mode: str, drawn: np.ndarray, whole_first: bool = False) -> float:
        start = time.perf_counter()
        if whole_first:  # the earlier path: every slice encoded before the walk
            method.encode_images_cached(image)
        segment_volume(method, image, drawn, image, same_volume=True, mode=mode)
        return time.perf_counter() - start

    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeats):
        for mode in ("nearest", "propagate"):
            method.latent_cache.clear()
            clear_memo()
            times.setdefault((mode, "first call"), []).append(call(mode, first))
            times.setdefault((mode, "repeated call"), []).append(call(mode, first))
            times.setdefault((mode, "another organ"), []).append(call(mode, both))
            method.latent_cache.clear()
            clear_memo()
            times.setdefault((mode, WHOLE), []).append(call(mode, first, whole_first=True))
    return times


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--depth", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", default=str(REPO / "bundle" / "models" / "model.pt"))
    parser.add_argument("--pause-pid", default=None, help="pids to pause (SIGSTOP) while measuring, e.g. a training")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]  # other work on the machine slows both modes alike; the ratio is the figure

    volume = load_volume(SAMPLE / "image_15.nii.gz", SAMPLE / "label_15.nii.gz")
    image, label = padded(volume.image, volume.label, args.depth)
    method = build_segmenter(checkpoint=args.checkpoint).eval()
    with paused(pids_from(args.pause_pid)):
        times = mode_times(method, image, label, args.repeats)
        organs = organ_times(method, image, label, args.repeats)

    rows = ["| call | nearest (s) | propagate (s) | propagate / nearest |", "|---|---|---|---|"]
    for what in ("first call", WHOLE, "repeated call", "another organ"):
        near, prop = times[("nearest", what)], times[("propagate", what)]
        rows.append(f"| {what} | {min(near):.2f} (median {statistics.median(near):.2f}) | "
                    f"{min(prop):.2f} (median {statistics.median(prop):.2f}) | {min(prop) / min(near):.2f} |")
    organ_rows = ["| call (latents ready) | organs one after another (s) | organs in step (s) |", "|---|---|---|"]
    for what in ORGAN_CALLS:
        before, after = organs[("one after another", what)], organs[("in step", what)]
        organ_rows.append(f"| {what} | {min(before):.2f} (median {statistics.median(before):.2f}) | "
                          f"{min(after):.2f} (median {statistics.median(after):.2f}) |")
    for four in ORGAN_CALLS[1::2]:
        organ_rows.append(f"| {four} / one organ, a new walk | " + " | ".join(
            f"{min(organs[(walks, four)]) / min(organs[(walks, ORGAN_CALLS[2])]):.2f}"
            for walks in ("one after another", "in step")) + " |")
    text = "\n".join([
        f"# In-volume modes: propagation against nearest support ({datetime.date.today().isoformat()})",
        "",
        f"`bench/bench_propagation.py --repeats {args.repeats} --depth {args.depth} --threads {args.threads}"
        f"{' --pause-pid ...' if args.pause_pid else ''}`; "
        f"{Path(args.checkpoint).name} ({method.config.preset}, {method.config.autoencoder}), "
        f"sample patient A stacked to {image.shape[0]} slices of {image.shape[1]}x{image.shape[2]}; the liver drawn "
        "on its middle slice (\"another organ\": the spleen added, the liver's result reused); "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.threads} threads, load average {load:.1f} at the start"
        f"{', other work paused while measuring' if args.pause_pid else ''}. Fastest of the repeats, median beside it.",
        "",
        *rows,
        "",
        "Several organs of the volume, each drawn on its middle slice, latents encoded before the calls (as the "
        "server's warm-up leaves them); the calls in this order, as in `bench/bench_server.py`:",
        "",
        *organ_rows,
        "",
    ])
    publish(text, args.out, "propagation")
    return text


if __name__ == "__main__":
    main()
