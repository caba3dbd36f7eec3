"""Test-time readings (issue #43, items 2 and 3): the protocol's EP1 on one fold, the plain model
against self-support (``scripts/engine/self_support.py``), a mirrored second reading and an
ensemble of EMA snapshots of the same training (``scripts/engine/ensembles.py``), in one run.

None of them has a parameter chosen on the data, so the ablation reads the fold's test patients as
the protocol does: 1-shot EP1, the fold's support patient, every other test patient as query, liver,
both kidneys and spleen.

    cd bundle && ../.venv/bin/python ../bench/test_time_probe.py --dataset_dir ../../shared/data/CHAOST2 \
        --checkpoint <run>/model_12000steps.pt --snapshot <run>/model_6000steps.pt --fold 0

Prints a markdown table (Dice per organ, mean, seconds) and writes ``bench/results/test_time_<date>.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from pathlib import Path

import numpy as np
import torch

from result_file import publish  # bench/, the script's own folder

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--checkpoint", required=True, help="a fold's supervoxel-trained model")
    parser.add_argument("--snapshot", action="append", default=[],
                        help="another checkpoint of the same training (an EMA snapshot) for the ensemble")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args(argv)

    from scripts.data.presets import get_preset
    from scripts.engine.ensembles import Ensemble, Flipped
    from scripts.engine.experiment import load_volumes
    from scripts.engine.self_support import SelfSupport
    from scripts.network.presets import build_segmenter
    from scripts.protocol.evaluate import run_protocol

    method = build_segmenter(checkpoint=args.checkpoint).eval()
    snapshots = [build_segmenter(checkpoint=path).eval() for path in args.snapshot]
    volumes = load_volumes(args.dataset_dir, "chaost2")
    labels = dict(get_preset("chaost2").labels)
    variants = {"plain": method, "self-support": SelfSupport(method),
                "mirrored reading averaged in": Ensemble([method, Flipped(method)])}
    if snapshots:
        names = ", ".join(Path(p).stem.split("_")[-1] for p in [args.checkpoint, *args.snapshot])
        variants[f"EMA snapshots averaged ({names})"] = Ensemble([method, *snapshots])
    results, seconds = {}, {}
    for name, variant in variants.items():
        start = time.perf_counter()
        records = run_protocol(variant, volumes, labels, mode="ep1", shots=1, folds=[args.fold], distances=False,
                               progress=lambda line: print(line, flush=True))
        seconds[name] = time.perf_counter() - start
        results[name] = {organ: float(np.mean([100 * r["dice"] for r in records if r["organ"] == organ]))
                         for organ in labels}
    organs = list(labels)
    rows = ["| | " + " | ".join(organs) + " | mean | seconds (fold) |", "|---|" + "---|" * (len(organs) + 2)]
    for name in results:
        values = [results[name][o] for o in organs]
        rows.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + f" | {np.mean(values):.1f} | "
                    f"{seconds[name]:.0f} |")
    text = "\n".join([
        f"# Test-time readings, CHAOST2 fold {args.fold} ({datetime.date.today().isoformat()})", "",
        f"`bench/test_time_probe.py --fold {args.fold}`, model `{Path(args.checkpoint).name}` of "
        f"`{Path(args.checkpoint).parent.name}` (supervoxel-trained: it has seen no organ label); 1-shot EP1 on "
        f"the fold's test patients, Dice (%) mean over query patients; CPU, {len(os.sched_getaffinity(0))} cores, "
        f"{torch.get_num_threads()} torch threads. Variants share each model's latent cache: "
        "only the first run of a model pays for encoding (seconds are comparable between the later rows).", "",
        *rows, "",
    ])
    publish(text, args.out, "test_time")
    return text


if __name__ == "__main__":
    main()
