"""The network as the model zoo sees it: one tensor in, one tensor out, traceable to TorchScript.

``SliceNetwork`` runs SD-FSMIS on 2D 1-shot episodes, one per batch item: input (B, 3, H, W) with
channels [query slice, support slice, support mask] (slices min-max scaled to [-1, 1] as the
workflows do, the mask 0/1), output (B, 1, H, W) foreground scores clipped to [-1, 1] (above the
checkpoint's ``threshold`` is the organ). That is what ``metadata.json``'s ``network_data_format`` describes and
what ``verify_net_in_out`` and ``ckpt_export --use_trace True`` exercise; the bundle's workflows run
the same weights through ``FewShotSegmenter`` (volumes, K shots, several organs).

Its state dict has exactly the keys of the trainable SD-FSMIS weights (shared with the segmenter,
not copied): ``models/model.pt`` is that state dict (``model_file.py``), which ``CheckpointLoader``
and ``ckpt_export`` at its defaults load into it strictly. The frozen autoencoders (and a frozen visual encoder) come from
their own files: held, not registered, so a trace keeps them as constants of the exported model.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .pipeline import FewShotSegmenter
from .model_file import trainable_state

CHANNELS = ("query slice", "support slice", "support mask")


class SliceNetwork(nn.Module):
    def __init__(self, segmenter: FewShotSegmenter):
        super().__init__()
        trainable = set(trainable_state(segmenter))
        frozen = []
        for name, child in segmenter.net.named_children():
            keys = [f"{name}.{key}" for key in child.state_dict()]
            if keys and not any(key in trainable for key in keys):
                frozen.append(child)  # e.g. DINOv2: read from its own folder, not from the checkpoint
            else:
                self.add_module(name, child)
        # a tuple, so that nn.Module does not register them
        self._held = (segmenter, *{id(m): m for m in (segmenter.autoencoder, segmenter.mask_codec, *frozen)}.values())

    @property
    def segmenter(self) -> FewShotSegmenter:
        return self._held[0]

    def _apply(self, fn, recurse=True):  # .to(device) moves the held frozen parts too
        for part in self._held[1:]:
            part._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != len(CHANNELS):
            raise ValueError(f"expected (B, 3, H, W) with channels {CHANNELS}, got {tuple(x.shape)}")
        segmenter = self.segmenter
        query, support = x[:, 0:1], x[:, 1:2]
        mask = (x[:, 2:3] > 0.5).to(x.dtype)
        latents = segmenter.autoencoder.encode(torch.cat([query, support]))
        query_latent, support_latent = latents.chunk(2)
        # each item is its own episode; built from the input so that a trace keeps the batch size free
        episode = torch.ones_like(x[:, 0, 0, 0], dtype=torch.long).cumsum(0) - 1
        support_image = support if getattr(segmenter.net.visual_encoder, "needs_images", False) else None
        velocity = segmenter.net(support_latent, segmenter.mask_codec.encode_mask(mask), mask, query_latent,
                                 episode, 1, support_image)
        # the decoded scores overshoot [-1, 1] (-2..3 on the sample patients); clipped, they keep every
        # decision at the threshold (0 or any value inside) and lie where network_data_format says
        return segmenter.decode_scores(velocity, query_latent).float().clamp(-1.0, 1.0)
