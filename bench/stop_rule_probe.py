"""Where a propagated organ ends: the drift thresholds of ``StopRule`` (issue #38), chosen on a fold's
training patients and never on its test patients.

A fold's supervoxel-trained model has seen no organ label, so the organ labels of the fold's
training patients are as new to it as the test patients'. On each of them, every organ is drawn on
k = 1 and k = 3 slices (the protocol's ``drawn_slices``) and the walk is recorded once with only
the emptiness and jump tests (a walk that would stop later has the same slices up to that point).
Each (``min_iou``, ``min_score_ratio``) pair, with the area test, is then scored offline by cutting every walk outside
the drawn range at the first slice the pair would stop at: mean whole-volume Dice over organs and
patients, beside "never stop" and the oracle (stop where the ground truth ends).

    cd bundle && ../.venv/bin/python ../bench/stop_rule_probe.py --dataset_dir ../../shared/data/CHAOST2 \
        --checkpoint ~/.cache/sdfsmis/runs/<fold 0 supervoxel run>/model_6000steps.pt --fold 0

Prints one markdown report and writes it to ``bench/results/stop_rule_<date>.md``.
"""

from __future__ import annotations

import datetime
import itertools
from pathlib import Path

import numpy as np

from fold_probe import ORGANS, drawn_organs, fold_probe_inputs  # bench/, the script's own folder
from result_file import publish


IOUS = (0.0, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7)
SCORE_RATIOS = (0.0, 0.8, 0.85, 0.88, 0.9, 0.92, 0.95)


def record_walks(method, volumes, ks, values):
    """Per (patient, organ, k): the ground truth and, per side outside the drawn range, the walk's
    slices in order with the features a stop rule reads."""
    from scripts.engine.propagation import StopRule, propagate_organ

    keep_going = StopRule(min_area=1, min_area_ratio=0.0, min_iou=0.0, min_score_ratio=0.0)
    walks = []
    for volume in volumes:
        latents = method.encode_images_cached(volume.image)
        for value, truth, k, zs in drawn_organs(volume, ks, values):
            scores, masks = propagate_organ(method, volume.image, {z: truth[z] for z in zs}, 3, latents,
                                            keep_going)
            min_area = max(StopRule.min_area, StopRule.min_area_ratio * truth[zs].sum(axis=(1, 2)).mean())
            walks.append(dict(k=k, truth=truth, masks=masks, sides=_sides(scores, masks, zs, min_area)))
            print(f"patient {volume.pid} label {value} k={k}: walked", flush=True)
    return walks


def _sides(scores, masks, drawn_z, min_area):
    sides = []
    for step, start in ((-1, min(drawn_z)), (1, max(drawn_z))):
        rows, z, first = [], start + step, None
        while 0 <= z < masks.shape[0] and masks[z].any():
            previous = masks[z - step]
            confidence = float(scores[z][masks[z]].mean())
            first = confidence if first is None else first
            rows.append(dict(z=z, small=masks[z].sum() < min_area,
                             iou=(masks[z] & previous).sum() / (masks[z] | previous).sum(),
                             score_ratio=confidence / first if first > 0 else 1.0))
            z += step
        sides.append(rows)
    return sides


def dice_after(walk, stops) -> float:
    masks = walk["masks"].copy()
    for rows in walk["sides"]:
        for i, row in enumerate(rows):
            if row["small"] or stops(row):  # the area test always applies
                for later in rows[i:]:
                    masks[later["z"]] = False
                break
    truth = walk["truth"]
    return 200 * (masks & truth).sum() / (masks.sum() + truth.sum())


def report(walks, ks, chosen, header: str) -> str:
    def mean(stops, k):
        return float(np.mean([dice_after(w, stops) for w in walks if w["k"] == k]))

    lines = [header, "", "| rule | " + " | ".join(f"k = {k}" for k in ks) + " | mean |",
             "|---|" + "---|" * (len(ks) + 1)]

    def row(name, stops):
        values = [mean(stops, k) for k in ks]
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + f" | {np.mean(values):.1f} |")
        return float(np.mean(values))

    row("never stop (emptiness and jump tests only)", lambda r: False)
    scored = []
    for iou, ratio in itertools.product(IOUS, SCORE_RATIOS):
        stops = (lambda r, iou=iou, ratio=ratio: r["iou"] < iou or r["score_ratio"] < ratio)
        scored.append((np.mean([mean(stops, k) for k in ks]), iou, ratio, stops))
    scored.sort(key=lambda s: -s[0])
    for _, iou, ratio, stops in scored[:8]:
        row(f"min_iou {iou}, min_score_ratio {ratio}", stops)
    iou, ratio = chosen
    row(f"**the shipped StopRule: min_iou {iou}, min_score_ratio {ratio}**",
        lambda r: r["iou"] < iou or r["score_ratio"] < ratio)
    row("min_iou only", next(s for _, i, r, s in scored if r == 0.0))
    row("min_score_ratio only", next(s for _, i, r, s in scored if i == 0.0))
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> str:
    from scripts.engine.propagation import StopRule, clear_memo

    args, method, training, test = fold_probe_inputs(__doc__.split("\n")[0], argv)
    ks, values = (1, 3), tuple(ORGANS)
    walks = record_walks(method, training, ks, values)
    clear_memo()
    chosen = (StopRule().min_iou, StopRule().min_score_ratio)
    header = "\n".join([
        f"# Where a propagated organ ends: stop-rule thresholds ({datetime.date.today().isoformat()})", "",
        f"`bench/stop_rule_probe.py --fold {args.fold}`, model `{Path(args.checkpoint).name}` of "
        f"`{Path(args.checkpoint).parent.name}`; CHAOST2 fold {args.fold}'s training patients "
        f"{[v.pid for v in training]} (its test patients {[v.pid for v in test]} are not read); liver, both "
        "kidneys and spleen, drawn on k slices. Whole-volume Dice (%), mean over organs and patients; "
        "the top eight threshold pairs of the grid, then the shipped pair and each test alone.",
    ])
    text = report(walks, ks, chosen, header)
    oracle = [float(np.mean([dice_after(w, lambda r, w=w: not w["truth"][r["z"]].any()) for w in walks
                             if w["k"] == k])) for k in ks]
    text += "\nOracle (stop at the first slice without ground truth): " + ", ".join(
        f"k = {k}: {v:.1f}" for k, v in zip(ks, oracle)) + "\n"
    publish(text, args.out, "stop_rule")
    return text


if __name__ == "__main__":
    main()
