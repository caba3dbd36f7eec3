"""How each propagated slice is read (issues #38 and #43): variants of the walk's reading, chosen on a
fold's training patients and never on its test patients (as ``stop_rule_probe.py`` chose the stop rule).

Where the walks stop is already as good as stopping where the ground truth ends (the stop-rule
report's oracle), so what is left lies inside the organ's slices: how well each slice is read. On
each training patient of the fold, every organ is drawn on k = 1 and k = 3 slices (the protocol's
``drawn_slices``) and walked with the shipped stop rule and smoothing, once per variant:

- ``shipped``: the slice just segmented and the nearest drawn slices, up to ``max_shots`` = 3;
- ``self-support``: each slice read twice, the second time with its own first mask as one more
  shot (``scripts/engine/self_support.py``);
- ``memory 2``: the two slices last segmented on the walk's side as shots, then the drawn slices.

Whole-volume Dice (%), mean over organs and patients, per organ and k, and each variant's seconds.

    cd bundle && ../.venv/bin/python ../bench/propagation_reading_probe.py --dataset_dir ../../shared/data/CHAOST2 \\
        --checkpoint ~/.cache/sdfsmis/runs/<fold 0 supervoxel run>/model_6000steps.pt --fold 0

Prints one markdown report and writes it to ``bench/results/propagation_reading_<date>.md``.
"""

from __future__ import annotations

import contextlib
import datetime
import time
from pathlib import Path

import numpy as np

from fold_probe import ORGANS, dice, drawn_organs, fold_probe_inputs  # bench/, the script's own folder
from result_file import publish

KS = (1, 3)


@contextlib.contextmanager
def two_slice_memory():
    """Each walk's last two slices serve the next one (then the drawn slices): the plan of
    ``_OrganWalk`` with the slice before the walk's end added after it."""
    from scripts.engine import propagation

    plan = propagation._OrganWalk.plan

    def remembering_plan(self):
        supports = plan(self)
        out = {}
        for z, walks in self.targets.items():
            earlier = [w.z - w.step for w in walks
                       if 0 <= w.z - w.step < len(self.masks) and self.masks[w.z - w.step].any()]
            ordered = []
            for s in [w.z for w in walks] + earlier + list(supports[z]):
                if s not in ordered:
                    ordered.append(s)
            out[z] = tuple(ordered[:self.max_shots])
        return out

    propagation._OrganWalk.plan = remembering_plan
    try:
        yield
    finally:
        propagation._OrganWalk.plan = plan


def variants(method):
    """{name: (the method to walk with, keywords of propagate_organ, context)}"""
    from scripts.engine.self_support import SelfSupport

    none = contextlib.nullcontext
    return {
        "shipped": (method, {}, none),
        "self-support": (SelfSupport(method), {}, none),
        "memory 2": (method, {}, two_slice_memory),
    }


def score(method, volumes) -> tuple[dict, dict]:
    """{(variant, organ, k): [Dice per patient]}, {variant: seconds}."""
    from scripts.engine.propagation import clear_memo, propagate_organ

    out: dict = {}
    seconds: dict = {}
    for volume in volumes:
        latents = method.encode_images_cached(volume.image)
        for name, (reader, keywords, context) in variants(method).items():
            start = time.perf_counter()
            with context():
                for value, truth, k, zs in drawn_organs(volume, KS):
                    _, masks = propagate_organ(reader, volume.image, {z: truth[z] for z in zs}, 3, latents, **keywords)
                    out.setdefault((name, ORGANS[value], k), []).append(dice(masks, truth))
            clear_memo()
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
            print(f"patient {volume.pid} {name}: " + ", ".join(
                f"{o} k={k} {out[(name, o, k)][-1]:.1f}" for o in ORGANS.values() for k in KS
                if (name, o, k) in out), flush=True)
        method.latent_cache.clear()
    return out, seconds


def report(dices: dict, seconds: dict, header: str) -> str:
    names = list(seconds)
    lines = [header, "", "| reading | " + " | ".join(f"{o}, k = {k}" for k in KS for o in ORGANS.values())
             + " | " + " | ".join(f"mean, k = {k}" for k in KS) + " | seconds |",
             "|---|" + "---|" * (len(KS) * (len(ORGANS) + 1) + 1)]
    for name in names:
        cells = [f"{np.mean(dices[(name, o, k)]):.1f}" for k in KS for o in ORGANS.values()]
        means = [np.mean([np.mean(dices[(name, o, k)]) for o in ORGANS.values()]) for k in KS]
        lines.append(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(f"{m:.1f}" for m in means)
                     + f" | {seconds[name]:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    args, method, training, test = fold_probe_inputs(__doc__.split("\n")[0], argv)
    dices, seconds = score(method, training)
    header = "\n".join([
        f"# How each propagated slice is read ({datetime.date.today().isoformat()})", "",
        f"`bench/propagation_reading_probe.py --fold {args.fold}`, model `{Path(args.checkpoint).name}` of "
        f"`{Path(args.checkpoint).parent.name}`; CHAOST2 fold {args.fold}'s training patients "
        f"{[v.pid for v in training]} (its test patients {[v.pid for v in test]} are not read); each organ "
        "drawn on k slices and walked with the shipped stop rule. Whole-volume Dice (%), mean over patients; "
        "seconds: the variant's walks over all patients (latents encoded once before them; 2 CPU cores "
        "shared with whatever else ran).",
    ])
    text = report(dices, seconds, header)
    publish(text, args.out, "propagation_reading")
    return text


if __name__ == "__main__":
    main()
