"""Augmentation in latent space: one random affine for an image latent and its full-resolution mask.

Training reads image latents from a cache (encoding every augmented slice would cost far more
than the U-Net step on our CPUs), so geometric augmentation happens after encoding: the latent
(C, h, w) is warped bilinearly and the {0, 1} mask (1, H, W) with nearest neighbour, by the same
rotation, scale and translation. Both warps go through `monai.transforms.Affine` about the image
centre, with the translation given as a fraction of the size and converted to each grid's pixels,
so the latent and the mask stay aligned whatever their resolutions.
"""

from __future__ import annotations

import math

import numpy as np

import torch
from monai.data import MetaTensor
from monai.transforms import Affine, Randomizable

__all__ = ["LatentMaskAffine"]


class LatentMaskAffine(Randomizable):
    """Sample one affine and apply it to `latent` (C, h, w) and `mask` (1, H, W) alike.

    Args:
        rotate_deg: rotation drawn uniformly in [-rotate_deg, rotate_deg] degrees.
        scale_range: isotropic scale drawn uniformly in this range.
        translate_frac: shift along each axis drawn in [-f, f] of that axis's size.
        prob: chance of augmenting at all; otherwise the inputs come back unchanged.
        latent_padding: grid-sample padding of the latent ("border" repeats the edge, usually
            background; zeros in latent space are not background). The mask pads with zeros.

    Deterministic given `set_random_state(seed)`; `randomize()` then `__call__(..., randomize=False)`
    applies the same draw to several pairs.
    """

    def __init__(self, rotate_deg: float = 15.0, scale_range: tuple[float, float] = (0.9, 1.1),
                 translate_frac: float = 0.08, prob: float = 1.0, latent_padding: str = "border"):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        if scale_range[0] <= 0 or scale_range[0] > scale_range[1]:
            raise ValueError(f"scale_range must be (lo, hi) with 0 < lo <= hi, got {scale_range}")
        self.rotate_deg = float(rotate_deg)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.translate_frac = float(translate_frac)
        self.prob = float(prob)
        self.latent_padding = latent_padding
        self.params: dict | None = None
        self._drawn = False

    def randomize(self, data=None) -> None:
        """Draw the next affine into `self.params` (None: leave the inputs alone)."""
        apply = self.R.random_sample() < self.prob
        angle = math.radians(self.R.uniform(-self.rotate_deg, self.rotate_deg))
        scale = self.R.uniform(*self.scale_range)
        shift = self.R.uniform(-self.translate_frac, self.translate_frac, size=2)
        # draws happen whether or not the affine applies, so the stream does not depend on `prob`
        self.params = {"angle": angle, "scale": scale, "shift": (float(shift[0]), float(shift[1]))} if apply else None
        self._drawn = True

    def state_dict(self) -> dict:
        """The random stream's position, so a resumed training draws what the uninterrupted one
        would (ignite's checkpoints save objects with ``state_dict``); plain tensors and numbers,
        which ``torch.load(weights_only=True)`` reads."""
        kind, keys, pos, has_gauss, cached = self.R.get_state()
        return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached)}

    def load_state_dict(self, state: dict) -> None:
        keys = np.asarray(torch.as_tensor(state["keys"]).numpy(), dtype=np.uint32)
        self.R.set_state(("MT19937", keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached_gaussian"])))

    def _warp(self, x: torch.Tensor, mode: str, padding: str) -> torch.Tensor:
        p = self.params
        h, w = x.shape[-2:]
        warp = Affine(rotate_params=p["angle"], scale_params=(p["scale"], p["scale"]),
                      translate_params=(p["shift"][0] * h, p["shift"][1] * w),
                      mode=mode, padding_mode=padding, image_only=True, dtype=torch.float32)
        out = warp(x)
        return out.as_tensor() if isinstance(out, MetaTensor) else out

    def __call__(self, latent: torch.Tensor, mask: torch.Tensor, randomize: bool = True):
        """Returns the warped (latent, mask), as tensors of the input shapes; the mask stays {0, 1}."""
        latent = torch.as_tensor(latent)
        mask = torch.as_tensor(mask)
        if latent.ndim != 3 or mask.ndim != 3 or mask.shape[0] != 1:
            raise ValueError(f"expected latent (C, h, w) and mask (1, H, W), got {tuple(latent.shape)} "
                             f"and {tuple(mask.shape)}")
        if randomize or not self._drawn:
            self.randomize()
        if self.params is None:
            return latent, mask
        mask_dtype = mask.dtype
        new_latent = self._warp(latent.float(), "bilinear", self.latent_padding).to(latent.dtype)
        new_mask = self._warp(mask.float(), "nearest", "zeros").to(mask_dtype)
        return new_latent, new_mask

    def apply_batch(self, latents: torch.Tensor, masks: torch.Tensor):
        """One independent draw per pair, warped in one batched call of MONAI's ``AffineTransform``
        layer. Normalised coordinates make one matrix fit both grids (latent h x w, mask H x W),
        and a batch costs about what one pair costs through the per-sample transform."""
        from monai.networks.layers import AffineTransform

        batch = latents.shape[0]
        theta = torch.zeros(batch, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        for index in range(batch):
            self.randomize()
            if self.params is None:
                continue
            p = self.params
            cos, sin = math.cos(p["angle"]) / p["scale"], math.sin(p["angle"]) / p["scale"]
            theta[index] = torch.tensor([[cos, -sin, -2 * p["shift"][1]], [sin, cos, -2 * p["shift"][0]]])
        theta = theta.to(latents.device)
        warp_latent = AffineTransform(normalized=True, mode="bilinear", padding_mode=self.latent_padding,
                                      align_corners=False)
        warp_mask = AffineTransform(normalized=True, mode="nearest", padding_mode="zeros", align_corners=False)
        return warp_latent(latents.float(), theta), warp_mask(masks.float(), theta)
