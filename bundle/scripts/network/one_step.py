"""The one-step "diffusion" of SD-FSMIS through diffusers' DDIMScheduler.

With beta_start = beta_end = 1, alpha_bar = 0 at every timestep: at t = 1 the clean image latent
goes in without noise, the target velocity is v = sqrt(a) * noise - sqrt(1 - a) * x0 = -x0 (the
negated mask latent), and DDIM's step with v-prediction returns x0 = -v. In effect a deterministic
latent-to-latent regression (as Marigold's one-step variants), kept in the scheduler's own terms.
"""

from __future__ import annotations

import torch

TIMESTEP = 1


def make_one_step_scheduler():
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=1.0,
        beta_end=1.0,
        beta_schedule="linear",
        prediction_type="v_prediction",
        clip_sample=False,
        set_alpha_to_one=True,
    )
    scheduler.set_timesteps(1)
    return scheduler


def _as_noisy_sample(image_latent: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The image latent plays the noisy sample x_t. With alpha_bar = 0 its coefficient is zero, so
    where the mask latent has other channels (pixel-unshuffled masks beside a TAE image latent) a
    zero tensor of the mask latent's shape is the same sample in the scheduler's arithmetic."""
    return image_latent if image_latent.shape == like.shape else torch.zeros_like(like)


def training_target(scheduler, mask_latent: torch.Tensor, image_latent: torch.Tensor) -> torch.Tensor:
    """The velocity the U-Net must predict: the image latent plays the noise, the mask the sample."""
    timesteps = torch.full((mask_latent.shape[0],), TIMESTEP, dtype=torch.long, device=mask_latent.device)
    return scheduler.get_velocity(mask_latent, _as_noisy_sample(image_latent, mask_latent), timesteps)


def mask_latent_from_output(scheduler, model_output: torch.Tensor, image_latent: torch.Tensor) -> torch.Tensor:
    """One DDIM step from t = 1: the predicted clean sample (the mask latent)."""
    return scheduler.step(model_output, TIMESTEP, _as_noisy_sample(image_latent, model_output)).prev_sample
