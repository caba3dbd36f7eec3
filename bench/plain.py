"""The plain path, for side-by-side timing: how the product ran before issue #10's levers.

``plain_path(*segmenters)`` makes the given segmenters (and the module functions they call) run as
before, for the duration of a block, and restores the levers afterwards:
- the largest component per slice through MONAI's ``KeepLargestConnectedComponent``, one call per slice;
- the inferer's label values through ``np.unique`` (a sort of every voxel);
- fp32 in the standard (NCHW) memory format, no ``channels_last``, the eager autoencoder encoder
  in chunks of 32 slices;
- every organ re-encodes its support slices (the inferer's support latents are ignored).
The levers themselves are product code (``scripts.network.speed``, ``postprocess``, ``inferer``);
nothing here is used outside the benches.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch


def monai_largest_component_per_slice(masks: np.ndarray) -> np.ndarray:
    from monai.transforms import KeepLargestConnectedComponent

    keep = KeepLargestConnectedComponent(applied_labels=[1], is_onehot=False, connectivity=2)
    out = np.zeros_like(masks, dtype=bool)
    for index, mask in enumerate(masks):
        if mask.any():
            out[index] = np.asarray(keep(torch.as_tensor(mask[None].astype(np.uint8))))[0] > 0
    return out


def unique_values(label: np.ndarray) -> list[int]:
    return [int(v) for v in np.unique(label) if v != 0]


@contextlib.contextmanager
def plain_path(*segmenters):
    import scripts.engine.inferer as inferer
    import scripts.network.pipeline as pipeline
    import scripts.network.postprocess as postprocess

    saved = postprocess.keep_largest_component_per_slice, inferer.present_values, pipeline.encode_chunk
    # the layouts and the frozen encoders (kept, so that switching back rebuilds nothing in a timed call)
    levers = [(s.net.memory_format, s.autoencoder.memory_format, s.fast_encoder) for s in segmenters]
    postprocess.keep_largest_component_per_slice = monai_largest_component_per_slice
    inferer.present_values = unique_values
    pipeline.encode_chunk = lambda device: 32
    for segmenter in segmenters:
        segmenter.set_channels_last(False)
        segmenter.fast_encoder = None
        predict = type(segmenter).predict_scores.__get__(segmenter)

        def without_support_latents(*args, _predict=predict, **kwargs):
            kwargs.pop("support_latents", None)
            return _predict(*args, **kwargs)

        segmenter.predict_scores = without_support_latents
    try:
        yield
    finally:
        postprocess.keep_largest_component_per_slice, inferer.present_values, pipeline.encode_chunk = saved
        for segmenter, (net, autoencoder, fast_encoder) in zip(segmenters, levers):
            del segmenter.predict_scores
            segmenter.set_channels_last(net == torch.channels_last, autoencoder == torch.channels_last)
            segmenter.fast_encoder = fast_encoder


def authors_training_step(iteration, engine, batch: dict) -> dict:
    """One optimizer step over the batch's episodes as the authors' code trains: one episode per
    forward (its own support pass, batch 1), gradients accumulated, then clip, AdamW and EMA; the
    same loss and update as ``EpisodeIteration`` on the whole batch (``gpu_bench.py``'s
    authors-style rows use the same definition)."""
    episodes = len(batch["support_pid"])
    engine.network.train()
    engine.optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for e in range(episodes):
        one = {key: (value[e:e + 1] if isinstance(value, (list, torch.Tensor)) else value)
               for key, value in batch.items()}
        losses = iteration.losses(engine, iteration.prepare(one, engine.state.device))
        (losses["loss"] / episodes).backward()
        total += float(losses["loss"].detach()) / episodes
    if iteration.grad_clip:
        torch.nn.utils.clip_grad_norm_(engine.network.parameters(), iteration.grad_clip)
    engine.optimizer.step()
    if iteration.ema is not None:
        iteration.ema.update_parameters(engine.network.segmenter.net)
    return {"loss": total}
