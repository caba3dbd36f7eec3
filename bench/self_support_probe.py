"""Self-support at test time (issue #43, item 2): the protocol's EP1 on one fold, plain against
self-support (``scripts/engine/self_support.py``), with one model and in one run.

Self-support has no parameter chosen on the data (its minimum area is the stop rule's), so the
ablation reads the fold's test patients as the protocol does: 1-shot EP1, the fold's support
patient, every other test patient as query, liver, both kidneys and spleen.

    cd bundle && ../.venv/bin/python ../bench/self_support_probe.py --dataset_dir ../../shared/data/CHAOST2 \
        --checkpoint ~/.cache/sdfsmis/runs/<fold 0 supervoxel run>/model_12000steps.pt --fold 0

Prints a markdown table (Dice per organ, mean, seconds) and writes ``bench/results/self_support_<date>.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bundle"))


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--checkpoint", required=True, help="a fold's supervoxel-trained model")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args(argv)

    from scripts.data.presets import get_preset
    from scripts.engine.experiment import load_volumes
    from scripts.engine.self_support import SelfSupport
    from scripts.network.presets import build_segmenter
    from scripts.protocol.evaluate import run_protocol

    method = build_segmenter(checkpoint=args.checkpoint).eval()
    volumes = load_volumes(args.dataset_dir, "chaost2")
    labels = dict(get_preset("chaost2").labels)
    results, seconds = {}, {}
    for name, variant in (("plain", method), ("self-support", SelfSupport(method))):
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
        f"# Self-support at test time, CHAOST2 fold {args.fold} ({datetime.date.today().isoformat()})", "",
        f"`bench/self_support_probe.py --fold {args.fold}`, model `{Path(args.checkpoint).name}` of "
        f"`{Path(args.checkpoint).parent.name}` (supervoxel-trained: it has seen no organ label); 1-shot EP1 on "
        f"the fold's test patients, Dice (%) mean over query patients; CPU, {len(os.sched_getaffinity(0))} cores, "
        f"{torch.get_num_threads()} torch threads. Both variants share the model's latent cache, so the second "
        "run encodes nothing: its seconds are the first pass, the second pass and no encoding.", "",
        *rows, "",
    ])
    print(text)
    out = Path(args.out) / f"self_support_{datetime.date.today().isoformat()}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


if __name__ == "__main__":
    main()
