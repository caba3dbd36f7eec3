"""The inference workflow on the user's own files: support image + label, query volumes in,
NIfTI segmentations out with each query's exact geometry (MONAI's SaveImage).

``check_inputs`` runs first: bad input is reported in one line, from the files' headers, before the
model loads and before anything is written. ``--log_level DEBUG`` logs where the time goes."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from scripts.engine.inferer import VOLUME_MODES

logger = logging.getLogger(__name__)
_inputs_checked_at: float | None = None  # perf_counter when check_inputs ended: the model loads after it


def seconds_since_start() -> float | None:
    """Seconds since this process started: imports and config parsing (None where psutil is absent)."""
    try:
        import psutil

        return time.time() - psutil.Process().create_time()
    except (ImportError, OSError):
        return None


def exit_without_last_collection() -> None:
    """``inference.yaml``'s ``finalize``: where this process is ``python -m monai.bundle``, which exits
    right after, every object is moved out of the garbage collector's reach (``gc.freeze``), so the
    interpreter's exit skips its last collection over torch, MONAI and the model (about 1 s of a
    2-core run: ``bench/bench_bundle_inference.py``). In any other process (a notebook, a test)
    it does nothing."""
    import gc
    import sys

    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name in ("monai.bundle", "monai.bundle.__main__"):
        gc.freeze()


def label_writer(output_dir, postfix: str = "seg"):
    """What ``inference.yaml``'s ``postprocessing`` spells: MONAI's ``SaveImage`` writing a label
    already on the query file's grid, as int16 NIfTI with the query's affine."""
    from monai.transforms import SaveImage

    return SaveImage(output_dir=str(output_dir), output_postfix=postfix, output_ext=".nii.gz", resample=False,
                     separate_folder=False, output_dtype=np.int16, print_log=False, savepath_in_metadict=True)


def save_label(label: np.ndarray, query, output_dir=None, postfix: str = "seg", writer=None) -> Path:
    """Write a label array on the query file's grid with the query's affine through ``writer`` (a
    ``SaveImage``; default ``label_writer(output_dir, postfix)``); return the path written."""
    from monai.data import MetaTensor

    source = query.meta.get("image_path", f"query_{query.pid}.nii.gz")
    tensor = MetaTensor(
        torch.as_tensor(label.astype(np.int16))[None],
        affine=torch.as_tensor(query.meta["original_affine"]),
        meta={"filename_or_obj": source},
    )
    saved = (writer or label_writer(output_dir, postfix))(tensor)
    return Path(saved.meta["saved_to"])


def check_inputs(checkpoint, support_image, support_label, query_images, slice_axis: int = 2,
                 volume_mode: str = "propagate", model: dict | None = None) -> None:
    """The workflow's first step: the checkpoint file exists, and where its card says how it was
    built, ``model`` (the config's architecture) agrees; the support image, its label and every
    query read as 3D volumes (headers only); the label lies on its image's grid; every query's slices
    can be matched to the support's. Otherwise it exits (status 1) with one line saying what is wrong:
    a traceback through the config's expressions would only bury it."""
    from scripts.data.volumes import AFFINE_TOLERANCE, DataError, matching_orientation, read_header

    try:
        if not checkpoint or not Path(checkpoint).is_file():
            raise ValueError(f"checkpoint not found: {checkpoint}")
        if model is not None:
            check_architecture(checkpoint, model)
        if support_image is None or support_label is None:
            raise ValueError("needs support_image and support_label (a labelled volume)")
        if slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis!r}")
        if volume_mode not in VOLUME_MODES:
            raise ValueError(f"volume_mode must be one of {VOLUME_MODES}, got {volume_mode!r}")
        queries = query_dataset(query_images)
        image, label = read_header(support_image), read_header(support_label)
        if label.shape != image.shape:
            raise DataError(f"{support_label}: shape {label.shape} does not match the support image's {image.shape}")
        if np.abs(label.affine - image.affine).max() > AFFINE_TOLERANCE:
            raise DataError(f"{support_label}: its affine differs from the support image's: a label must lie on "
                            "its image's grid")
        for query in queries:
            matching_orientation(image.affine, read_header(query["image"]).affine, slice_axis, str(support_image),
                                 query["image"])
    except ValueError as error:  # DataError is one
        raise SystemExit(f"inference: {error}") from None
    global _inputs_checked_at
    _inputs_checked_at = time.perf_counter()
    started = seconds_since_start()
    if started is not None:
        logger.debug("start-up (python, imports, config): %.1fs", started)


def check_architecture(checkpoint, model: dict) -> None:
    """The model file's card (``model_file.py``), where it has one, against the config's ``model``:
    a file of another architecture would fail to load with a list of missing weights."""
    from scripts.network.autoencoders import WeightsError
    from scripts.network.model_config import TRAINED, ModelConfig
    from scripts.network.model_file import card_path, read_card

    card = card_path(checkpoint)
    try:
        written = read_card(checkpoint)
        if not written:
            return
        stored = ModelConfig.from_keys(**written["config"]).to_dict(TRAINED)
    except (WeightsError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"cannot read the model card {card}: {error}") from None
    wanted = ModelConfig.from_keys(**model).to_dict(TRAINED)
    differ = {key: (wanted[key], stored[key]) for key in wanted if wanted[key] != stored[key]}
    if differ:
        said = ", ".join(f"{key} {mine!r} (the file: {theirs!r})" for key, (mine, theirs) in differ.items())
        raise ValueError(f"{checkpoint} was built otherwise than the config's model: {said}; "
                         f"give its card: --model %{card}#config")


def query_dataset(query_images) -> list[dict]:
    """The inference workflow's dataset: one item per query volume."""
    queries = [query_images] if isinstance(query_images, (str, Path)) else list(query_images or [])
    if not queries:
        raise ValueError("inference needs at least one query image (query_images)")
    return [{"image": str(q)} for q in queries]


class QueryIteration:
    """``iteration_update`` of the inference workflow's MONAI ``SupervisedEvaluator``: one query volume
    -> ``engine.inferer(query, engine.network)`` (``volume_inferer.py``: the config's ``inferer`` and
    ``network_def``) -> its segmentation on the query's grid, written by ``writer`` (the config's
    ``postprocessing``, a ``SaveImage``)."""

    def __init__(self, writer):
        self.writer = writer
        if _inputs_checked_at is not None:  # the config built the model between the check and here
            logger.debug("model load: %.1fs", time.perf_counter() - _inputs_checked_at)

    def __call__(self, engine, item: dict) -> dict:
        stats = getattr(getattr(engine.network, "segmenter", None), "latent_cache_stats", None)
        before = dict(stats or {})
        seconds: dict[str, float] = {}
        label, query, result = engine.inferer(item["image"], engine.network, timings=seconds)
        start = time.perf_counter()
        path = save_label(label, query, writer=self.writer)
        seconds["write"] = time.perf_counter() - start
        logger.info("%s -> %s (labels %s, shots %s)", item["image"], path, result.labels, result.shots_per_label)
        encode_s = stats["encode_s"] - before.get("encode_s", 0.0) if stats is not None else 0.0
        encoded = stats["slices_encoded"] - before.get("slices_encoded", 0) if stats is not None else 0
        logger.debug("%s: loading %.1fs, encoding %.1fs (%d slices), network %.1fs, mapping back %.1fs, writing %.1fs",
                     Path(item["image"]).name, seconds["load"], encode_s, encoded, seconds["segment"] - encode_s,
                     seconds["map_back"], seconds["write"])
        return {"image": item["image"], "pred_path": str(path), "labels": result.labels,
                "slices": list(query.image.shape)}  # what the network read: the preprocessing's output
