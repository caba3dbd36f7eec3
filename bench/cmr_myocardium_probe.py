"""Where a CMR model's LV-myocardium prediction lies: on the myocardium, the blood pool it encloses,
the RV, or elsewhere (the README's CMR paragraph, issue #11).

The `cmr` table's network scores LV-MYO with a precision of 0.19-0.32; this says whether those false
positives fill the ring in (they land on the blood pool) or scatter. One support slice (the middle
myocardium slice of the first patient) segments every myocardium slice of the next ``--queries``
patients; prints, per query, the shares of the prediction on each structure and how much of the
blood pool it covers.

    cd bundle && ../.venv/bin/python ../bench/cmr_myocardium_probe.py \
        --model ~/.cache/sdfsmis/runs/cmr_compact-taef2_s1_supervoxel_lv_bp-lv_myo-rv_1shot_3000steps_seed0_fold0/model.pt \
        --dataset_dir ../../shared/data/CMR --autoencoder_path ../../shared/weights/taef2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a model.pt (a run's, or the bundle's)")
    parser.add_argument("--dataset_dir", required=True, help="CMR in the SSL-ALPNet layout")
    parser.add_argument("--autoencoder_path", default=None)
    parser.add_argument("--queries", type=int, default=3)
    args = parser.parse_args(argv)

    from scripts.data.presets import get_preset
    from scripts.data.volumes import load_dataset
    from scripts.engine.inferer import segment_volume
    from scripts.network.presets import build_segmenter

    preset = get_preset("cmr")
    volumes = load_dataset(args.dataset_dir, preset)
    segmenter = build_segmenter(checkpoint=args.model, autoencoder_path=args.autoencoder_path)
    myo, bp, rv = (preset.labels[name] for name in ("lv_myo", "lv_bp", "rv"))
    support = volumes[0]
    support_z = np.flatnonzero((support.label == myo).any(axis=(1, 2)))
    z = int(support_z[len(support_z) // 2])
    print(f"support: patient {support.pid}, slice {z}")
    print("| query | predicted px | on LV-MYO | on LV-BP | on RV | elsewhere | LV-BP covered |")
    print("|---|---|---|---|---|---|---|")
    for query in volumes[1:1 + args.queries]:
        query_z = np.flatnonzero((query.label == myo).any(axis=(1, 2)))
        result = segment_volume(segmenter, support.image[z:z + 1], (support.label[z:z + 1] == myo).astype(np.int32),
                                query.image[query_z], {"lv_myo": 1})
        predicted, truth = result.label > 0, query.label[query_z]
        n = max(int(predicted.sum()), 1)
        shares = [(predicted & (truth == value)).sum() / n for value in (myo, bp, rv, 0)]
        covered = (predicted & (truth == bp)).sum() / max(int((truth == bp).sum()), 1)
        print(f"| {query.pid} | {int(predicted.sum())} | " + " | ".join(f"{100 * s:.0f} %" for s in shares)
              + f" | {100 * covered:.0f} % |")


if __name__ == "__main__":
    main()
