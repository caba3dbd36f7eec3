"""Which query pixels Query Enhancement (QE) averages into its query prototype, on real latents
(the README's ablation paragraph, issue #11).

QE has no weights: it compares each query-latent pixel with the support's foreground and
background prototypes and averages the pixels it finds foreground-like (probability above
``--threshold``, else the top-k). Whether those pixels lie on the organ says how much the prototype
it hands the U-Net is worth. One support slice (the organ's middle slice in the ``--support``
patient) serves every slice of the organ in the next ``--queries`` patients; prints, per organ and
temperature, how often a pixel passes the threshold and where the averaged pixels lie.

    cd bundle && ../.venv/bin/python ../bench/qe_selection_probe.py --dataset chaost2 \
        --dataset_dir ../../shared/data/CHAOST2 --autoencoder taef2 --autoencoder_path ../../shared/weights/taef2
"""

from __future__ import annotations

import argparse

import numpy as np


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, help="dataset preset (chaost2, cmr, ...)")
    parser.add_argument("--dataset_dir", required=True, help="the dataset in its preset's layout")
    parser.add_argument("--autoencoder", default="taef2", help="unshuffle, taesd, taef2 or sd-vae")
    parser.add_argument("--autoencoder_path", default=None)
    parser.add_argument("--support", type=int, default=0, help="index of the support patient")
    parser.add_argument("--queries", type=int, default=3, help="the patients after the support")
    parser.add_argument("--threshold", type=float, default=0.7, help="QE's foreground threshold")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.1],
                        help="softmax temperatures to compare (the network's QE uses 1.0)")
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from scripts.data.presets import get_preset
    from scripts.data.volumes import load_dataset
    from scripts.network.presets import build_segmenter
    from scripts.network.qe import QueryEnhancement

    preset = get_preset(args.dataset)
    volumes = load_dataset(args.dataset_dir, preset)
    support, queries = volumes[args.support], volumes[args.support + 1:args.support + 1 + args.queries]
    # only its encoder is used: the training runs' encoding path (chunked, frozen on the CPU)
    segmenter = build_segmenter(preset="tiny", autoencoder=args.autoencoder, autoencoder_path=args.autoencoder_path)

    def encode(image: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return segmenter.encode_images(torch.as_tensor(image, dtype=torch.float32)[:, None])

    def at_latent_scale(mask: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(torch.as_tensor(mask, dtype=torch.float32)[:, None], like.shape[-2:])

    print(f"support: patient {support.pid}, each organ's middle slice; queries: patients "
          f"{', '.join(q.pid for q in queries)}, every slice of the organ; {args.autoencoder} latents. "
          "A latent pixel counts as on a structure where that structure covers most of it.")
    print("| organ | temperature | query slices with a pixel > threshold | median max probability "
          "| averaged pixels on the organ | on another organ | on background |")
    print("|---|---|---|---|---|---|---|")
    for organ, value in preset.labels.items():
        z_support = support.slices_with(value)
        z = int(z_support[len(z_support) // 2])
        support_latent = encode(support.image[z:z + 1])
        support_mask = at_latent_scale(support.label[z:z + 1] == value, support_latent)
        stacks = []
        for query in queries:
            zs = query.slices_with(value)
            latent = encode(query.image[zs])
            on_organ = at_latent_scale(query.label[zs] == value, latent) > 0.5
            on_other = at_latent_scale((query.label[zs] > 0) & (query.label[zs] != value), latent) > 0.5
            stacks.append((latent, on_organ, on_other))
        for temperature in args.temperatures:
            qe = QueryEnhancement(threshold=args.threshold, temperature=temperature)
            passed, peak, organ_share, other_share = [], [], [], []
            for latent, on_organ, on_other in stacks:
                episode = torch.zeros(latent.shape[0], dtype=torch.long)
                probability, weights = qe.select(support_latent, support_mask, latent, episode, shots=1)
                chosen = weights > 0
                count = chosen.flatten(1).sum(1).float()
                passed += (probability.flatten(1) > args.threshold).any(1).tolist()
                peak += probability.flatten(1).amax(1).tolist()
                organ_share += ((chosen & on_organ).flatten(1).sum(1) / count).tolist()
                other_share += ((chosen & on_other).flatten(1).sum(1) / count).tolist()
            background = 1 - np.mean(organ_share) - np.mean(other_share)
            print(f"| {organ} | {temperature:g} | {100 * np.mean(passed):.0f} % | {np.median(peak):.2f} "
                  f"| {100 * np.mean(organ_share):.0f} % | {100 * np.mean(other_share):.0f} % | {100 * background:.0f} % |")


if __name__ == "__main__":
    main()
