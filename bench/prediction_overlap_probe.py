"""Where a model's prediction of one organ lies: on that organ, on each other labelled structure, or
on background (the README's CMR and Setting 2 paragraphs, issue #11).

A low Dice says little on its own: the CMR network's LV-myocardium false positives fill the ring in
(they land on the blood pool), and a Setting 2 model that never saw a kidney may segment the organ
it did learn. One support slice (the organ's middle slice in the ``--support`` patient) segments
every slice of the organ in the next ``--queries`` patients; prints, per query, the shares of the
prediction on each structure and how much of each structure it covers.

    cd bundle && ../.venv/bin/python ../bench/prediction_overlap_probe.py --dataset cmr --organ lv_myo \
        --model ~/.cache/sdfsmis/runs/cmr_compact-taef2_s1_supervoxel_lv_bp-lv_myo-rv_1shot_3000steps_seed0_fold0/model.pt \
        --dataset_dir ../../shared/data/CMR --autoencoder_path ../../shared/weights/taef2
"""

from __future__ import annotations

import argparse

import numpy as np

from scripts.network.postprocess import COMPONENT_RULES


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a model.pt (a run's, or the bundle's)")
    parser.add_argument("--dataset", required=True, help="dataset preset (chaost2, cmr, ...)")
    parser.add_argument("--dataset_dir", required=True, help="the dataset in its preset's layout")
    parser.add_argument("--organ", required=True, help="the organ to segment, a label name of the preset")
    parser.add_argument("--autoencoder_path", default=None)
    parser.add_argument("--support", type=int, default=0, help="index of the support patient")
    parser.add_argument("--queries", type=int, default=3, help="the patients after the support")
    parser.add_argument("--raw", action="store_true",
                        help="no component step (3D or per slice): where the thresholded scores lie")
    parser.add_argument("--component_3d", choices=COMPONENT_RULES, default=None,
                        help="which 3D component stays (default: the checkpoint's own)")
    args = parser.parse_args(argv)

    from scripts.data.presets import get_preset
    from scripts.data.volumes import load_dataset
    from scripts.engine.inferer import segment_volume
    from scripts.network.presets import build_segmenter

    preset = get_preset(args.dataset)
    if args.organ not in preset.labels:
        parser.error(f"--organ {args.organ!r} is not a label of {args.dataset} ({sorted(preset.labels)})")
    volumes = load_dataset(args.dataset_dir, preset)
    segmenter = build_segmenter(checkpoint=args.model, autoencoder_path=args.autoencoder_path,
                                component_3d=args.component_3d)
    if args.raw:
        segmenter.keep_largest = segmenter.keep_largest_3d = False
    organ = preset.labels[args.organ]
    structures = {args.organ: organ, **{n: v for n, v in preset.labels.items() if n != args.organ}}
    support = volumes[args.support]
    support_z = np.flatnonzero((support.label == organ).any(axis=(1, 2)))
    z = int(support_z[len(support_z) // 2])
    print(f"support: patient {support.pid}, slice {z}; {args.organ}'s slices of each query"
          + ("; no component step" if args.raw else ""))
    names = list(structures) + ["background"]
    print("| query | predicted px | " + " | ".join(f"on {n}" for n in names) + " | "
          + " | ".join(f"{n} covered" for n in structures) + " |")
    print("|---" * (2 + len(names) + len(structures)) + "|")
    for query in volumes[args.support + 1:args.support + 1 + args.queries]:
        query_z = np.flatnonzero((query.label == organ).any(axis=(1, 2)))
        result = segment_volume(segmenter, support.image[z:z + 1], (support.label[z:z + 1] == organ).astype(np.int32),
                                query.image[query_z], {args.organ: 1})
        predicted, truth = result.label > 0, query.label[query_z]
        n = max(int(predicted.sum()), 1)
        shares = [(predicted & (truth == v)).sum() / n for v in [*structures.values(), 0]]
        covered = [(predicted & (truth == v)).sum() / max(int((truth == v).sum()), 1) for v in structures.values()]
        print(f"| {query.pid} | {int(predicted.sum())} | " + " | ".join(f"{100 * s:.0f} %" for s in shares)
              + " | " + " | ".join(f"{100 * c:.0f} %" for c in covered) + " |")


if __name__ == "__main__":
    main()
