"""Export a trained run's EMA model as the bundle's shipped ``models/model.pt``.

    cd bundle && ../.venv/bin/python -m scripts.network.export runs/<run>/model.pt models/model.pt \
        --autoencoder_path models/taef2

The target is the zoo form (``model_file.py``): the bare state dict of ``network_def`` in fp16 (a
compact model is ~9 MB) and its card ``models/model.json`` (config, ``trained_on``). The stored
autoencoder path is rewritten to the portable one the bundle ships (``models/taef2`` under the
bundle root, which ``large_files.yml`` also fills for a zoo download). The architecture must also be
``configs/inference.yaml``'s ``model`` block: the export says where they differ.
"""

from __future__ import annotations

import argparse

from pathlib import Path

from .model_file import save_zoo_model
from .presets import BUNDLE_ROOT, build_segmenter


def inference_config_differences(config: dict, inference_yaml: Path = BUNDLE_ROOT / "configs" / "inference.yaml") -> dict:
    """{key: (inference.yaml's value, the model's)} where the config's ``model`` block differs."""
    from monai.bundle import ConfigParser

    block = ConfigParser.load_config_file(str(inference_yaml)).get("model", {})
    return {key: (block.get(key), value) for key, value in config.items() if block.get(key) != value}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a run's model.pt")
    parser.add_argument("target", help="where to write the shipped model file")
    parser.add_argument("--autoencoder_path", default=None, help="path to store for the autoencoder weights")
    parser.add_argument("--read_autoencoder_path", default=None, help="where the weights are now, if moved")
    args = parser.parse_args(argv)
    segmenter = build_segmenter(checkpoint=args.source, autoencoder_path=args.read_autoencoder_path)
    if args.autoencoder_path:
        segmenter.config = segmenter.config.replace(autoencoder_path=args.autoencoder_path)
    card = save_zoo_model(segmenter, args.target)
    print(args.target, card)
    for key, (written, model) in inference_config_differences(segmenter.config.to_dict()).items():
        print(f"configs/inference.yaml model#{key} is {written!r}, the exported model's is {model!r}: update it")


if __name__ == "__main__":
    main()
