"""What the probes that choose a propagation setting share (``stop_rule_probe.py``, ``z_smoothing_probe.py``):
a fold's supervoxel-trained model and that fold's patients, of which only the training ones are read
(a setting is never chosen on the patients a table tests)."""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
