"""``FewShotSegmenter``: the SD-FSMIS pipeline over stock parts (as diffusers' Marigold pipelines):
encode support and query, one support pass and one batched query pass, one DDIM step, decode,
threshold, largest component. It is the network's side of the method interface that the protocol,
the bundle workflows and the MONAI Label task all call; its ``episode_outputs`` are what the
training loss (``episode_loss.py``) reads.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from .autoencoders import LatentAutoencoder
from .episode_loss import EpisodeLoss
from .model_config import ModelConfig
from .one_step import make_one_step_scheduler, mask_latent_from_output, training_target
from .postprocess import binarize_scores
from .sdfsmis import SDFSMISNet
from .slice_latents import LatentCache, SliceLatents
from .speed import FrozenEncoder, encode_chunk, set_memory_format


class EmptySupportError(ValueError):
    """A support mask without foreground: there is nothing to segment from."""


def _config_key(key: str) -> property:
    """An attribute that reads ``config.<key>`` and, set, replaces the config (validated again)."""
    return property(lambda self: getattr(self.config, key),
                    lambda self, value: setattr(self, "config", self.config.replace(**{key: value})))


class FewShotSegmenter(nn.Module):
    name = "sdfsmis"

    def __init__(self, net: SDFSMISNet, autoencoder: LatentAutoencoder, mask_codec: LatentAutoencoder,
                 config: ModelConfig | None = None, trained_on: dict | None = None, query_chunk: int = 64,
                 latent_cache_size: int = 8):
        super().__init__()
        self.net = net
        self.autoencoder = autoencoder.requires_grad_(False)
        self.mask_codec = mask_codec.requires_grad_(False)
        self.scheduler = make_one_step_scheduler()
        self.config = config or ModelConfig()
        self.trained_on = trained_on  # what the weights were trained on (experiment.training_record), or None
        self.query_chunk = query_chunk
        self.latent_cache = LatentCache(latent_cache_size)
        self.fast_encoder: FrozenEncoder | None = None  # CPU inference's encoder (build_segmenter); None: eager

    def with_net(self, net: SDFSMISNet) -> "FewShotSegmenter":
        """The same pipeline around other weights (e.g. the EMA of the trained ones)."""
        other = FewShotSegmenter(net, self.autoencoder, self.mask_codec, self.config, self.trained_on,
                                 self.query_chunk, self.latent_cache.size)
        set_memory_format(net, self.net.memory_format)
        other.fast_encoder = self.fast_encoder
        return other

    def set_channels_last(self, enabled: bool = True, autoencoders: bool | None = None) -> "FewShotSegmenter":
        """Run the U-Net (and, unless ``autoencoders`` says otherwise, the frozen autoencoders) in
        NHWC: a speed lever on the CPU (``speed.py``); results are the same within rounding."""
        autoencoders = enabled if autoencoders is None else autoencoders
        set_memory_format(self.net, torch.channels_last if enabled else torch.contiguous_format)
        for part in {id(m): m for m in (self.autoencoder, self.mask_codec)}.values():
            set_memory_format(part, torch.channels_last if autoencoders else torch.contiguous_format)
        return self

    # ---- the config's post-processing and loss keys, read and set as attributes ----------------
    threshold = _config_key("threshold")
    threshold_mode = _config_key("threshold_mode")
    keep_largest = _config_key("keep_largest")
    keep_largest_3d = _config_key("keep_largest_3d")
    component_3d = _config_key("component_3d")
    z_sigma = _config_key("z_sigma")
    dice_weight = _config_key("dice_weight")

    # ---- latents -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """(N, 1, H, W) in [-1, 1] -> image latents, in chunks (``speed.encode_chunk``: small on the
        CPU, where that is faster, large on a GPU; either way memory stays bounded)."""
        images = images.to(self.device, torch.float32)
        chunk = chunk or encode_chunk(self.device)
        encode = self.fast_encoder or self.autoencoder.encode
        return torch.cat([encode(part) for part in images.split(chunk)])

    @property
    def latent_cache_stats(self) -> dict:
        return self.latent_cache.stats

    def latents_of(self, images: np.ndarray) -> SliceLatents:
        """The latents of a stack of slices (D, H, W), kept by content, each slice encoded when first
        indexed (``slice_latents.py``): a repeated call on the same image encodes nothing."""
        return self.latent_cache.get(images, self.encode_images)

    def cached_latents(self, images: np.ndarray) -> SliceLatents | None:
        """The kept latents of this stack of slices, or None (nothing is encoded)."""
        return self.latent_cache.peek(images)

    def encode_images_cached(self, images: np.ndarray) -> torch.Tensor:
        """Latents of every slice of a stack, through the cache (``latents_of``)."""
        return self.latents_of(images).all()

    @torch.no_grad()
    def encode_masks(self, masks: torch.Tensor) -> torch.Tensor:
        masks = masks.to(self.device)
        if self.fast_encoder is not None and self.fast_encoder.autoencoder is self.mask_codec:
            return self.fast_encoder(masks.float() * 2 - 1)  # encode_mask's {0,1} -> {-1,1}
        return self.mask_codec.encode_mask(masks)

    # ---- forward and loss ----------------------------------------------------------------------
    def forward(self, support_latent, support_mask, query_latent, query_episode=None, shots=1, support_image=None):
        """Velocity predicted for each query slice (the negated mask latent)."""
        if (support_mask.flatten(1).amax(dim=1) <= 0).any():
            raise EmptySupportError("a support mask is empty: label the organ on every support slice used")
        support_mask_latent = self.encode_masks(support_mask)
        return self.net(
            support_latent, support_mask_latent, support_mask, query_latent, query_episode, shots, support_image
        )

    def decode_scores(self, velocity: torch.Tensor, query_latent: torch.Tensor) -> torch.Tensor:
        """U-Net output -> mask latent (one DDIM step) -> decoded mask scores (Q, 1, H, W)."""
        return self.mask_codec.decode(mask_latent_from_output(self.scheduler, velocity, query_latent))

    def episode_outputs(self, batch: dict, with_scores: bool = True) -> dict:
        """What the training loss reads for a batch of episodes: the U-Net's ``velocity``, the
        ``target`` velocity of the query masks and, ``with_scores``, the decoded mask ``scores``."""
        velocity = self(
            batch["support_latent"], batch["support_mask"], batch["query_latent"],
            shots=batch["shots"], support_image=batch.get("support_image"),
        )
        target = training_target(self.scheduler, self.encode_masks(batch["query_mask"]), batch["query_latent"])
        outputs = {"velocity": velocity, "target": target}
        if with_scores:
            outputs["scores"] = self.decode_scores(velocity, batch["query_latent"])
        return outputs

    def loss(self, batch: dict, loss_function: EpisodeLoss | None = None) -> dict:
        """``loss_function`` (default: ``EpisodeLoss`` with this config's ``dice_weight``, as
        ``train.yaml`` builds it) of a batch of episodes."""
        loss_function = loss_function or EpisodeLoss(mask_weight=self.dice_weight)
        return loss_function(self.episode_outputs(batch, loss_function.needs_scores), batch["query_mask"])

    # ---- the method interface (protocol, bundle inference, MONAI Label) -------------------------
    @torch.no_grad()
    def predict_scores(self, support_images, support_masks, query_images, query_episode, query_latents=None,
                       support_latents=None):
        """support_images/support_masks (E, K, H, W), query_images (Q, H, W), query_episode (Q,)
        -> scores (Q, H, W) float32 in about [-1, 1]; one support pass serves every query slice.
        ``query_latents`` (Q, C, h, w) / ``support_latents`` (E*K, C, h, w): latents already encoded
        (the inferer's cache), so no slice is encoded twice."""
        support_images = np.asarray(support_images, dtype=np.float32)
        support_masks = np.asarray(support_masks, dtype=np.float32)
        episodes, shots = support_images.shape[:2]
        if support_masks.reshape(episodes * shots, -1).max(axis=1).min() <= 0:
            raise EmptySupportError("a support mask is empty: label the organ on every support slice used")
        flat = torch.as_tensor(support_images.reshape(episodes * shots, 1, *support_images.shape[2:]))
        if support_latents is None:
            support_latent = self.encode_images(flat)
        else:
            support_latent = torch.as_tensor(support_latents).to(self.device, torch.float32)
            support_latent = support_latent.reshape(episodes * shots, *support_latent.shape[-3:])
        support_mask = torch.as_tensor(support_masks.reshape(flat.shape)).to(self.device)
        support_image = flat.to(self.device) if getattr(self.net.visual_encoder, "needs_images", False) else None
        if query_latents is None:
            query_latents = self.encode_images_cached(np.asarray(query_images, dtype=np.float32))
        query_episode = torch.as_tensor(np.asarray(query_episode), dtype=torch.long, device=self.device)
        was_training = self.training
        if was_training:  # eval() walks every module: a few ms a call, paid only where it changes something
            self.eval()
        memory = self.net.support_pass(support_latent, self.encode_masks(support_mask), support_mask, shots, support_image)
        scores = []
        for start in range(0, query_latents.shape[0], self.query_chunk):  # bounded memory, one support pass
            part = slice(start, start + self.query_chunk)
            velocity = self.net.query_pass(memory, query_latents[part], query_episode[part])
            scores.append(self.decode_scores(velocity, query_latents[part])[:, 0])
        if was_training:
            self.train()
        return torch.cat(scores).float().cpu().numpy()

    def binarize(self, scores: np.ndarray, support_masks: np.ndarray | None = None, threshold: float | None = None,
                 threshold_mode: str | None = None) -> np.ndarray:
        """Scores (Q, H, W) -> masks. ``support_masks`` (..., H, W): the support of these scores, which
        ``component_3d: support`` needs to pick the 3D component. ``threshold`` / ``threshold_mode``:
        one call's own (None: the model's), so concurrent callers never change the shared model."""
        return binarize_scores(scores, self.config, support_masks, threshold, threshold_mode)
