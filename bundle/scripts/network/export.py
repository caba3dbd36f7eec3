"""Export a trained run's EMA model as the bundle's shipped ``models/model.pt``.

    cd bundle && ../.venv/bin/python -m scripts.network.export runs/<run>/model.pt models/model.pt \
        --autoencoder_path models/taef2

Weights are stored in fp16 (a compact model is ~9 MB); the stored autoencoder path is rewritten to
the portable one the bundle ships (``models/taef2`` under the bundle root, which ``large_files.yml``
also fills for a zoo download).
"""

from __future__ import annotations

import argparse

from .presets import build_segmenter, save_checkpoint_file


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a run's model.pt")
    parser.add_argument("target", help="where to write the shipped model file")
    parser.add_argument("--autoencoder_path", default=None, help="path to store for the autoencoder weights")
    parser.add_argument("--read_autoencoder_path", default=None, help="where the weights are now, if moved")
    args = parser.parse_args(argv)
    segmenter = build_segmenter(checkpoint=args.source, autoencoder_path=args.read_autoencoder_path)
    if args.autoencoder_path:
        segmenter.config["autoencoder_path"] = args.autoencoder_path
    save_checkpoint_file(segmenter, args.target, half=True)
    print(args.target)


if __name__ == "__main__":
    main()
