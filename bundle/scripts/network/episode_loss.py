"""The training loss of a batch of episodes, as ``train.yaml``'s ``loss_function`` spells it.

The authors' loss is the MSE between the U-Net's velocity and the target velocity (``one_step.py``:
the image latent plays the noise, the mask latent the sample). We add a Dice term on the mask the
velocity decodes to (MONAI's ``DiceLoss`` on ``sigmoid(sharpness * scores)``, the scores being
about [-1, 1]), which counters the under-segmentation plain MSE on {-1, 1} targets shows on small
organs; ``mask_weight`` 0 is the authors' loss alone.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.losses import DiceLoss


class EpisodeLoss(nn.Module):
    """``loss(outputs, query_mask)`` -> ``{"mse", "dice" (where weighted), "loss"}``; ``outputs``
    is the segmenter's ``episode_outputs``: ``velocity``, ``target`` and, where ``needs_scores``,
    ``scores`` (E, 1, H, W)."""

    def __init__(self, velocity_loss: nn.Module | None = None, mask_loss: nn.Module | None = None,
                 mask_weight: float = 0.5, sharpness: float = 4.0):
        super().__init__()
        self.velocity_loss = velocity_loss if velocity_loss is not None else nn.MSELoss()
        self.mask_loss = mask_loss if mask_loss is not None else DiceLoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0)
        self.mask_weight, self.sharpness = float(mask_weight), float(sharpness)

    @property
    def needs_scores(self) -> bool:
        """Whether the forward pass must decode the mask scores (only for the Dice term)."""
        return self.mask_weight > 0

    def forward(self, outputs: dict, query_mask: torch.Tensor) -> dict:
        mse = self.velocity_loss(outputs["velocity"], outputs["target"])
        losses = {"mse": mse, "loss": mse}
        if self.needs_scores:
            scores = outputs["scores"]
            dice = self.mask_loss(self.sharpness * scores, query_mask.to(scores))
            losses.update(dice=dice, loss=mse + self.mask_weight * dice)
        return losses
