"""The inference workflow's inferer: ``inferer(query file, network_def)``, as MONAI's workflows call it.

``network_def`` decides how the volume is read. The bundle's ``SliceNetwork`` hands over the
segmenter it wraps, so the volume goes through the whole method (K shots per slice, one support
pass per episode, the latent cache, propagation). Any other network that takes the zoo's input
(``metadata.json``'s ``network_data_format``: (B, 3, H, W) [query slice, support slice, support
mask] -> (B, 1, H, W) scores), such as a TorchScript export by ``ckpt_export`` or a TensorRT engine,
is read as a 1-shot method (``SliceCallMethod``): one call per shot, the shots' scores averaged, and
the same seam (``inferer.segment_files``: orientation, propagation, organs merged, the original grid)
and post-processing (the config's ``model`` keys) around it. Swapping ``network_def`` thus changes
what runs, as the zoo expects; only the bundle's own network has the K-shot bank and the cache.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.inferers import Inferer

from scripts.engine.inferer import segment_files
from scripts.network.model_config import ModelConfig
from scripts.network.postprocess import binarize_scores


class SliceCallMethod:
    """A network of the zoo's input and output as a method of the seam (``predict_scores`` /
    ``binarize``): each query slice is read once per shot of its episode, the scores averaged, and
    binarized by ``config``'s post-processing keys."""

    name = "network_def"

    def __init__(self, network, config: ModelConfig | None = None, device=None, batch: int = 16):
        self.network, self.config, self.batch = network, config or ModelConfig(), int(batch)
        self.device = torch.device(device) if device is not None else _device_of(network)

    @property
    def z_sigma(self) -> float:  # propagation smooths these scores as the network's (propagation.py)
        return self.config.z_sigma

    @torch.no_grad()
    def predict_scores(self, support_images, support_masks, query_images, query_episode, **_):
        support_images = np.asarray(support_images, dtype=np.float32)
        support_masks = np.asarray(support_masks, dtype=np.float32)
        query_images = np.asarray(query_images, dtype=np.float32)
        query_episode = np.asarray(query_episode)
        shots = support_images.shape[1]
        scores = np.zeros(query_images.shape, dtype=np.float32)
        for k in range(shots):
            inputs = np.stack([query_images, support_images[query_episode, k], support_masks[query_episode, k]], axis=1)
            for start in range(0, len(inputs), self.batch):
                part = torch.as_tensor(inputs[start:start + self.batch], device=self.device)
                scores[start:start + self.batch] += self.network(part)[:, 0].float().cpu().numpy() / shots
        return scores

    def binarize(self, scores, support_masks=None, threshold=None, threshold_mode=None):
        return binarize_scores(np.asarray(scores), self.config, support_masks, threshold, threshold_mode)


def _device_of(network) -> torch.device:
    try:
        return next(network.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def method_of(network, config: ModelConfig | None = None):
    """The method that reads a volume for ``network``: the bundle's segmenter where the network
    wraps one, else the network itself, 1-shot (``SliceCallMethod``)."""
    segmenter = getattr(network, "segmenter", None)
    return segmenter if segmenter is not None else SliceCallMethod(network, config)


class FewShotVolumeInferer(Inferer):
    """``inferer(query image file, network)`` -> (label array on the query file's grid, the query
    ``Volume``, the ``Segmentation`` in slice space): ``segment_files`` with the workflow's support
    and settings. ``model``: the config's ``model`` block, whose post-processing keys serve a network
    other than the bundle's (that one carries its own config). ``preprocessing``: the config's
    transforms from file to slice space (``SliceSpaceTransforms``; None: the default list)."""

    def __init__(self, support_image, support_label, labels=None, max_shots: int | None = None, support_slices=None,
                 slice_axis: int = 2, volume_mode: str = "propagate", model: dict | None = None, preprocessing=None):
        super().__init__()
        if support_image is None or support_label is None:
            raise ValueError("inference needs support_image and support_label (a labelled volume)")
        self.support_image, self.support_label, self.labels = support_image, support_label, labels
        self.max_shots, self.support_slices, self.slice_axis = max_shots, support_slices, slice_axis
        self.volume_mode, self.preprocessing = volume_mode, preprocessing
        self.config = ModelConfig.from_keys(**(model or {}))

    def __call__(self, inputs, network, timings: dict | None = None, *args, **kwargs):
        method = method_of(network, self.config)
        return segment_files(method, self.support_image, self.support_label, inputs, self.labels, self.max_shots,
                             self.support_slices, self.slice_axis, self.volume_mode, timings=timings,
                             transforms=self.preprocessing)
