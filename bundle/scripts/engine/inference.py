"""The inference workflow on the user's own files: support image + label, query volumes in,
NIfTI segmentations out with each query's exact geometry (MONAI's SaveImage)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from scripts.engine.inferer import segment_files

logger = logging.getLogger(__name__)


def save_label(label: np.ndarray, query, output_dir, postfix: str = "seg") -> Path:
    """Write a label array on the query file's grid with the query's affine; return the path."""
    from monai.data import MetaTensor
    from monai.transforms import SaveImage

    source = query.meta.get("image_path", f"query_{query.pid}.nii.gz")
    tensor = MetaTensor(
        torch.as_tensor(label.astype(np.int16))[None],
        affine=torch.as_tensor(query.meta["original_affine"]),
        meta={"filename_or_obj": source},
    )
    saver = SaveImage(output_dir=str(output_dir), output_postfix=postfix, output_ext=".nii.gz", resample=False,
                      separate_folder=False, output_dtype=np.int16, print_log=False)
    saver(tensor)
    name = Path(source).name.split(".")[0]
    return Path(output_dir) / f"{name}_{postfix}.nii.gz"


def query_dataset(query_images) -> list[dict]:
    """The inference workflow's dataset: one item per query volume."""
    queries = [query_images] if isinstance(query_images, (str, Path)) else list(query_images or [])
    if not queries:
        raise ValueError("inference needs at least one query image (query_images)")
    return [{"image": str(q)} for q in queries]


class QueryIteration:
    """``iteration_update`` of the inference workflow's MONAI ``Evaluator``: one query volume ->
    its segmentation, written as NIfTI on the query's grid."""

    def __init__(self, method, support_image, support_label, output_dir, labels=None, max_shots: int = 3,
                 support_slices=None, slice_axis: int = 2):
        if support_image is None or support_label is None:
            raise ValueError("inference needs support_image and support_label (a labelled volume)")
        self.method, self.support_image, self.support_label = method, support_image, support_label
        self.output_dir, self.labels, self.max_shots = output_dir, labels, max_shots
        self.support_slices, self.slice_axis = support_slices, slice_axis

    def __call__(self, engine, item: dict) -> dict:
        label, query, result = segment_files(self.method, self.support_image, self.support_label, item["image"],
                                             self.labels, self.max_shots, self.support_slices, self.slice_axis)
        path = save_label(label, query, self.output_dir)
        logger.info("%s -> %s (labels %s, shots %s)", item["image"], path, result.labels, result.shots_per_label)
        return {"image": item["image"], "pred_path": str(path), "labels": result.labels}
