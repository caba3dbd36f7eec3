"""Visual-to-Textual Condition Translator (VTCT): the support as the U-Net's cross-attention context.

A visual encoder turns each support slice into a feature grid; the features under the support mask
are averaged (and averaged over shots) into one vector; an MLP translates it into context tokens
that take the place of a text embedding in every cross-attention layer of both passes.

Visual encoders (``build_visual_encoder``):
- ``dinov2``: a frozen ``transformers`` DINOv2 (``from_pretrained``), 224x224 input, 16x16 patch tokens;
- ``latent``: the autoencoder's latent itself (no parameters, free, works on cached latents);
- ``small``: a small trainable conv net over the latent (works on cached latents too).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .autoencoders import WeightsError, _from_pretrained
from .qe import episode_mean, masked_average

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class LatentFeatures(nn.Module):
    """The image latent as the visual feature grid."""

    needs_images = False

    def __init__(self, latent_channels: int):
        super().__init__()
        self.out_channels = latent_channels

    def forward(self, latent: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        return latent


class SmallConvEncoder(nn.Module):
    """A small trainable encoder over the image latent (a stand-in for DINOv2 offline)."""

    needs_images = False

    def __init__(self, latent_channels: int, width: int = 128):
        super().__init__()
        self.out_channels = width
        self.layers = nn.Sequential(
            nn.Conv2d(latent_channels, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1, stride=2),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1),
        )

    def forward(self, latent: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        return self.layers(latent)


class Dinov2Features(nn.Module):
    """Frozen DINOv2 patch tokens as a (N, hidden, 16, 16) grid, from the grey slice in [-1, 1]."""

    needs_images = True

    def __init__(self, model: nn.Module, image_size: int = 224):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.image_size = image_size
        self.out_channels = model.config.hidden_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_pretrained(cls, path: str, local_files_only: bool = True) -> "Dinov2Features":
        from transformers import Dinov2Model

        try:
            model = Dinov2Model.from_pretrained(path, local_files_only=local_files_only)
        except (OSError, ValueError) as error:
            raise WeightsError(f"cannot load DINOv2 from {path}: {error}") from None
        return cls(model)

    def forward(self, latent: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        if image is None:
            raise ValueError("the DINOv2 visual encoder needs the support images, not only latents")
        rgb = ((image.expand(-1, 3, -1, -1) + 1) / 2 - self.mean) / self.std
        rgb = F.interpolate(rgb, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        tokens = self.model(pixel_values=rgb).last_hidden_state[:, 1:]  # drop CLS
        side = int(tokens.shape[1] ** 0.5)
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)


VISUAL_ENCODERS = ("latent", "small", "dinov2")


def build_visual_encoder(kind: str, latent_channels: int, path: str | None = None, local_files_only: bool = True):
    if kind == "latent":
        return LatentFeatures(latent_channels)
    if kind == "small":
        return SmallConvEncoder(latent_channels)
    if kind == "dinov2":
        if not path:
            raise WeightsError("visual encoder 'dinov2' needs a DINOv2 model id or folder (visual_encoder_path)")
        return Dinov2Features.from_pretrained(path, local_files_only=local_files_only)
    raise ValueError(f"unknown visual encoder '{kind}'; choose one of {VISUAL_ENCODERS}")


class ConditionTranslator(nn.Module):
    """Mask-pooled support features -> ``tokens`` context vectors of the U-Net's cross-attention width.

    The authors' MLP: in -> hidden, LayerNorm, GELU, two more hidden layers, -> context width.
    """

    def __init__(self, in_channels: int, context_dim: int, hidden: int | None = None, tokens: int = 1):
        super().__init__()
        hidden = hidden or 2 * context_dim
        self.tokens = tokens
        self.context_dim = context_dim
        self.mlp = nn.Sequential(
            nn.Linear(in_channels, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, context_dim * tokens),
        )

    def forward(self, features: torch.Tensor, mask: torch.Tensor, shots: int) -> torch.Tensor:
        """features (E*K, D, fh, fw), mask (E*K, 1, H, W) {0,1} -> context (E, tokens, context_dim).

        The mask is area-resized to the feature grid and used as soft weights, so a small organ
        that covers no whole patch still pools its features instead of an empty set."""
        weights = F.adaptive_avg_pool2d(mask.float(), features.shape[-2:])
        pooled = episode_mean(masked_average(features, weights), shots)
        return self.mlp(pooled).view(pooled.shape[0], self.tokens, self.context_dim)
