"""How much to smooth a propagated organ along z: the model config's ``z_sigma`` (issue #38), chosen on a fold's
training patients and never on its test patients (as ``stop_rule_probe.py`` chose the stop rule).

On each training patient of the fold, every organ is drawn on k = 1 and k = 3 slices (the protocol's
``drawn_slices``) and walked once without smoothing, with the shipped stop rule; each ``z_sigma`` of
the grid is then applied to the recorded walk by ``propagation.smooth_along_z`` (the step the walk
ends with) and scored: whole-volume Dice (%), mean over organs and patients, per organ and k.

    cd bundle && ../.venv/bin/python ../bench/z_smoothing_probe.py --dataset_dir ../../shared/data/CHAOST2 \\
        --checkpoint ~/.cache/sdfsmis/runs/<fold 0 supervoxel run>/model_6000steps.pt --fold 0

Prints one markdown report and writes it to ``bench/results/z_smoothing_<date>.md``.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from fold_probe import ORGANS, dice, drawn_organs, fold_probe_inputs  # bench/, the script's own folder
from result_file import publish

SIGMAS = (0.0, 0.5, 0.7, 1.0, 1.5)


def score_walks(method, volumes, ks, sigmas) -> dict:
    """{(organ, k, sigma): [Dice per patient]} from one unsmoothed walk per (patient, organ, k)."""
    from scripts.engine.propagation import clear_memo, propagate_organ, smooth_along_z

    method.z_sigma = 0.0  # walked unsmoothed, then each sigma applied to the recorded walk
    out: dict = {}
    for volume in volumes:
        latents = method.encode_images_cached(volume.image)
        for value, truth, k, zs in drawn_organs(volume, ks):
            organ = ORGANS[value]
            scores, masks = propagate_organ(method, volume.image, {z: truth[z] for z in zs}, 3, latents)
            for sigma in sigmas:
                _, smoothed = smooth_along_z(method, scores, masks, np.array(zs, dtype=int), sigma)
                out.setdefault((organ, k, sigma), []).append(dice(smoothed, truth))
            print(f"patient {volume.pid} {organ} k={k}: " + ", ".join(
                f"sigma {s}: {out[(organ, k, s)][-1]:.1f}" for s in sigmas), flush=True)
        clear_memo()
        method.latent_cache.clear()
    return out


def report(dices: dict, ks, sigmas, header: str) -> str:
    lines = [header, "", "| z_sigma (slices) | " + " | ".join(f"{o}, k = {k}" for k in ks for o in ORGANS.values())
             + " | " + " | ".join(f"mean, k = {k}" for k in ks) + " | mean |",
             "|---|" + "---|" * (len(ks) * (len(ORGANS) + 1) + 1)]
    for sigma in sigmas:
        cells = [np.mean(dices[(o, k, sigma)]) for k in ks for o in ORGANS.values()]
        per_k = [np.mean([np.mean(dices[(o, k, sigma)]) for o in ORGANS.values()]) for k in ks]
        name = "0 (no smoothing)" if sigma == 0 else f"{sigma}"
        lines.append(f"| {name} | " + " | ".join(f"{c:.1f}" for c in cells) + " | "
                     + " | ".join(f"{c:.1f}" for c in per_k) + f" | {np.mean(per_k):.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    args, method, training, test = fold_probe_inputs(__doc__.split("\n")[0], argv)
    ks = (1, 3)
    dices = score_walks(method, training, ks, SIGMAS)
    header = "\n".join([
        f"# How much to smooth a propagated organ along z ({datetime.date.today().isoformat()})", "",
        f"`bench/z_smoothing_probe.py --fold {args.fold}`, model `{Path(args.checkpoint).name}` of "
        f"`{Path(args.checkpoint).parent.name}`; CHAOST2 fold {args.fold}'s training patients "
        f"{[v.pid for v in training]} (its test patients {[v.pid for v in test]} are not read); every organ "
        "drawn on k slices, walked with the shipped stop rule, then smoothed along z by each `z_sigma`. "
        "Whole-volume Dice (%), mean over patients (per organ) and organs (means).",
    ])
    text = report(dices, ks, SIGMAS, header)
    publish(text, args.out, "z_smoothing")
    return text


if __name__ == "__main__":
    main()
