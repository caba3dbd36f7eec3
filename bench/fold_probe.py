"""What the probes that choose a propagation setting share (``stop_rule_probe.py``, ``z_smoothing_probe.py``,
``propagation_reading_probe.py``): a fold's supervoxel-trained model and that fold's patients, of which
only the training ones are read (a setting is never chosen on the patients a table tests), each organ
drawn on k slices as the protocol draws it, and the Dice they score with."""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ORGANS = {1: "liver", 2: "right_kidney", 3: "left_kidney", 4: "spleen"}  # CHAOST2's label values


def fold_probe_inputs(description: str, argv=None):
    """(arguments, the model, the fold's training volumes, its test volumes) from the command line
    ``--dataset_dir --checkpoint [--fold] [--out]``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--checkpoint", required=True, help="a fold's supervoxel-trained model")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args(argv)

    from scripts.engine.experiment import load_volumes, split_fold
    from scripts.network.presets import build_segmenter

    method = build_segmenter(checkpoint=args.checkpoint).eval()
    training, test = split_fold(load_volumes(args.dataset_dir, "chaost2"), args.fold)
    return args, method, training, test


def drawn_organs(volume, ks, values=tuple(ORGANS)):
    """(label value, its ground truth (D, H, W), k, the drawn slices) for every organ of ``values``
    present in ``volume`` and every k of ``ks``: the protocol's ``drawn_slices`` (k = 1: the middle)."""
    from scripts.protocol.matching import drawn_slices

    for value in values:
        truth = volume.label == value
        if not truth.any():
            continue
        for k in ks:
            yield value, truth, k, [int(z) for z in drawn_slices(volume.label, value, k)]


def dice(a, b) -> float:
    """Dice (%) of two boolean masks; 0 where both are empty."""
    return 200.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)
