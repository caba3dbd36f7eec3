"""Choose the absolute score threshold on training-class episodes of training patients.

DESIGN.md: the threshold is part of the method and may never be tuned on a test fold. Scores of
each validation case are computed once; every candidate threshold then binarizes them (with the
method's own post-processing) and the one with the best mean 3D Dice over the cases wins.

    cd bundle && ../.venv/bin/python -m scripts.engine.threshold <run>/model.pt --dataset chaost2 \
        --dataset_dir <data> --test_labels liver spleen --fold 0 [--autoencoder_path ...]
"""

from __future__ import annotations

import argparse

import numpy as np

from scripts.engine.validation import validation_cases
from scripts.protocol.evaluate import episodes_for
from scripts.protocol.metrics import confusion, dice_from_counts

CANDIDATES = tuple(np.round(np.arange(-0.8, 0.45, 0.1), 2))


def choose_threshold(method, volumes, values: dict[str, int], candidates=CANDIDATES, max_queries: int = 3):
    """Returns (best threshold, {threshold: mean Dice}) over EP1 cases of the given classes."""
    by_pid = {v.pid: v for v in volumes}
    cases = validation_cases(volumes, values, max_queries)
    dice = {float(t): [] for t in candidates}
    saved = method.threshold
    try:
        for case in cases:
            support, query = by_pid[case["support_pid"]], by_pid[case["query_pid"]]
            episodes = episodes_for("ep1", support, query, case["value"])
            support_masks = (support.label[episodes.support_z] == case["value"]).astype(np.float32)
            scores = method.predict_scores(support.image[episodes.support_z], support_masks,
                                           query.image[episodes.query_z], episodes.query_episode)
            truth = query.label[episodes.query_z] == case["value"]
            for threshold in dice:
                method.threshold = threshold
                dice[threshold].append(dice_from_counts(*confusion(method.binarize(scores, support_masks), truth)) or 0.0)
    finally:
        method.threshold = saved
    means = {t: float(np.mean(d)) for t, d in dice.items()}
    return max(means, key=means.get), means


def main(argv=None) -> None:
    from scripts.engine.experiment import load_volumes, split_fold, training_values
    from scripts.network.presets import build_segmenter
    from scripts.network.model_file import save_checkpoint_file

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--dataset", default="chaost2")
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--test_labels", nargs="+", required=True)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--n_folds", type=int, default=5)
    parser.add_argument("--autoencoder_path", default=None)
    parser.add_argument("--write", action="store_true", help="store the chosen threshold in the checkpoint")
    args = parser.parse_args(argv)
    method = build_segmenter(checkpoint=args.checkpoint, autoencoder_path=args.autoencoder_path)
    train, _ = split_fold(load_volumes(args.dataset_dir, args.dataset), args.fold, args.n_folds)
    best, means = choose_threshold(method, train, training_values(args.dataset, args.test_labels))
    print({t: round(100 * d, 1) for t, d in means.items()}, "-> threshold", best)
    if args.write:
        method.threshold = best  # the config's threshold: the saved file keeps it
        save_checkpoint_file(method, args.checkpoint)


if __name__ == "__main__":
    main()
