"""Does a model read its support? Its loss on training episodes with each episode's own support,
against the same queries with the support of another episode of the batch.

A model that has learned the few-shot task does much worse with a wrong support: the CHAOST2
fold-0 model (3,000 steps, TAEF2 latents) has a ratio of 3.2 on ground-truth episodes and 2.5 on
supervoxel episodes. A model that ignores the support and predicts a class prior from the query
alone scores the same either way (ratio ~1.0), as the compact U-Net on pixel-unshuffle latents did
after 600 phantom steps. A few dozen forward passes, far cheaper than an evaluation, and it tells
"does not read the support" apart from "reads it badly" while a run trains.

    python -m scripts.engine.support_reliance --checkpoint runs/<run>/checkpoints/checkpoint_iteration=500.pt \\
        [--weights raw|ema] [--episodes 48] [--config_file configs/train.yaml] [the run's train.yaml overrides]

``--checkpoint`` is a ``model.pt`` or a trainer checkpoint of the run; the overrides must be the
run's (dataset, autoencoder, fold, ...), so that the network and the episodes are the run's.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

import torch

from scripts.engine.training import EpisodeIteration, collate_episodes

__all__ = ["support_reliance", "rolled_support", "main"]

BUNDLE = Path(__file__).resolve().parents[2]


def rolled_support(batch: dict) -> dict:
    """The batch with each episode's support (all K shots) replaced by the next episode's."""
    shots = batch["shots"]
    out = dict(batch)
    for key in ("support_latent", "support_mask", "support_image"):
        if key in batch:
            out[key] = batch[key].roll(shots, dims=0)
    return out


@torch.no_grad()
def support_reliance(segmenter, batches) -> dict:
    """Mean velocity MSE with the own and with a rolled support over prepared batches (each of at
    least two episodes), and their ratio."""
    was_training = segmenter.training
    segmenter.eval()
    own, rolled = [], []
    for batch in batches:
        if batch["query_latent"].shape[0] < 2:
            raise ValueError("support reliance needs at least two episodes per batch to swap supports")
        own.append(float(segmenter.loss(batch)["mse"]))
        rolled.append(float(segmenter.loss(rolled_support(batch))["mse"]))
    segmenter.train(was_training)
    if not own:
        raise ValueError("no batches to measure support reliance on")
    own_mse, rolled_mse = sum(own) / len(own), sum(rolled) / len(rolled)
    return {"own_mse": own_mse, "rolled_mse": rolled_mse, "ratio": rolled_mse / own_mse, "batches": len(own)}


def _override_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a plain string (a path, a name) or a "$..." expression for the config


def _parse_overrides(pairs: list[str]) -> dict:
    if len(pairs) % 2:
        raise SystemExit(f"overrides come as '--key value' pairs, got {pairs}")
    out = {}
    for key, value in zip(pairs[::2], pairs[1::2]):
        if not key.startswith("--"):
            raise SystemExit(f"expected '--key', got {key!r}")
        out[key[2:]] = _override_value(value)
    return out


def _load_weights(segmenter, checkpoint: Path, weights: str):
    from scripts.engine.training import build_ema, ema_segmenter
    from scripts.network.presets import build_segmenter

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if not (isinstance(state, dict) and "network" in state):  # a model.pt: it carries its own config
        loaded = build_segmenter(checkpoint=str(checkpoint))
        # the episodes' latents come from the config's autoencoder: they must be the model's
        mine, theirs = segmenter.config.autoencoder, loaded.config.autoencoder
        if mine != theirs:
            raise SystemExit(f"{checkpoint} was trained on '{theirs}' latents but the config builds "
                             f"'{mine}': pass the run's overrides (--autoencoder {theirs} --autoencoder_path ...)")
        return loaded
    if weights == "ema":
        if "ema" not in state:
            raise SystemExit(f"{checkpoint} has no EMA weights; use --weights raw")
        ema = build_ema(segmenter, 0.0)
        ema.load_state_dict(state["ema"])
        return ema_segmenter(segmenter, ema)
    segmenter.load_state_dict({key.removeprefix("segmenter."): value for key, value in state["network"].items()})
    return segmenter


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--weights", choices=("raw", "ema"), default="raw",
                        help="of a trainer checkpoint: the optimised weights or their EMA")
    parser.add_argument("--episodes", type=int, default=48, help="per label source")
    parser.add_argument("--config_file", default=str(BUNDLE / "configs" / "train.yaml"))
    args, rest = parser.parse_known_args(argv)
    if not args.checkpoint.is_file():
        raise SystemExit(f"checkpoint {args.checkpoint} does not exist")
    from monai.bundle import ConfigParser

    config = ConfigParser()
    config.read_config(args.config_file)
    config["bundle_root"] = str(BUNDLE)
    for key, value in _parse_overrides(rest).items():
        config[key] = value
    config["label_source"] = "both"  # volumes are loaded once, with supervoxels, for both kinds of episode
    config["steps"] = max(1, args.episodes // int(config["batch_size"]))
    segmenter = _load_weights(config.get_parsed_content("segmenter"), args.checkpoint, args.weights)
    config.get_parsed_content("train_volumes")  # loaded once through `preprocessing`, kept for the next two
    episodes = config.get_parsed_content("train#dataset", instantiate=False, reset=False)  # built once per source below
    iteration = EpisodeIteration(config.get_parsed_content("latent_cache", reset=False))  # no augmentation
    batch_size = int(config["batch_size"])
    results = {}
    for source in ("gt", "supervoxel"):
        dataset = episodes.instantiate(label_source=source)  # episodes of that kind only
        items = [dataset[i] for i in range(min(args.episodes, len(dataset)))]
        chunks = [items[start:start + batch_size] for start in range(0, len(items), batch_size)]
        batches = [iteration.prepare(collate_episodes(chunk), segmenter.device) for chunk in chunks if len(chunk) > 1]
        results[source] = support_reliance(segmenter, batches)
        print(f"{source:10s} mse own support {results[source]['own_mse']:.4f}  rolled support "
              f"{results[source]['rolled_mse']:.4f}  ratio {results[source]['ratio']:.2f}", flush=True)
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
