"""Image and mask autoencoders: the latent space the U-Net works in.

All share one interface: ``encode(x)`` takes (N, 1, H, W) grey slices in [-1, 1] (copied to RGB
where the model wants 3 channels) and returns (N, C, H/8, W/8) latents; ``decode(z)`` returns
(N, 1, H, W) in about [-1, 1] (mean over RGB). Masks use the same interface with {0,1} -> {-1,1}.

- ``PixelUnshuffleAutoencoder``: exact and free (8x8 pixels -> 64 channels); the CPU preset.
- ``TinyAutoencoder``: diffusers' ``AutoencoderTiny`` holding TAESD (SD 1.x latent space) or TAEF2
  (FLUX.2, 32 channels). TAEF2's mid blocks carry a pooled branch that diffusers lacks, so
  ``PooledTinyBlock`` adds that one branch to diffusers' own block; everything else is stock.
- ``StableDiffusionVAE``: ``AutoencoderKL.from_pretrained`` (the paper's VAE, scaling 0.18215).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .speed import weights_format

DOWNSCALE = 8


class WeightsError(FileNotFoundError):
    """Pretrained weights are missing or do not fit: says what was expected and where."""


class LatentAutoencoder(nn.Module):
    """Frozen image <-> latent map at 1/8 scale."""

    latent_channels: int
    exact = False

    @property
    def memory_format(self) -> torch.memory_format:
        """What inputs are handed over in: the weights' layout (``speed.set_memory_format``)."""
        return weights_format(self)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """{0,1} masks (N, 1, H, W) -> latents, through the {-1,1} image convention."""
        return self.encode(mask.float() * 2 - 1)


class PixelUnshuffleAutoencoder(LatentAutoencoder):
    """Parameter-free and lossless: each 8x8 patch becomes 64 channels at 1/8 scale."""

    exact = True

    def __init__(self, image_channels: int = 1):
        super().__init__()
        self.image_channels = image_channels
        self.latent_channels = image_channels * DOWNSCALE * DOWNSCALE

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x, DOWNSCALE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(z, DOWNSCALE)


class _RGBAutoencoder(LatentAutoencoder):
    """Grey slices go in as three equal channels; decoded RGB is averaged back to one."""

    def __init__(self, model: nn.Module, latent_channels: int):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.latent_channels = latent_channels

    def as_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) grey -> (N, 3, H, W), in the weights' layout."""
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        return x.contiguous(memory_format=self.memory_format)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        z = z.contiguous(memory_format=self.memory_format)
        return self._decode_rgb(z).clamp(-1, 1).mean(dim=1, keepdim=True).contiguous()


def _tiny_block_class():
    from diffusers.models.unets.unet_2d_blocks import AutoencoderTinyBlock

    class PooledTinyBlock(AutoencoderTinyBlock):
        """diffusers' tiny block with TAEF2's extra branch: x = x + pool(x) before the block."""

        def __init__(self, channels: int, act_fn: str = "relu"):
            super().__init__(channels, channels, act_fn)
            self.pool = nn.Sequential(
                nn.Conv2d(channels, 4 * channels, 1, bias=False),
                nn.GroupNorm(4, 4 * channels),
                nn.ReLU(),
                nn.Conv2d(4 * channels, channels, 1, bias=False),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x + self.pool(x))

    return PooledTinyBlock


TAE_FORMATS = {
    # name: (latent channels, encoder file, decoder file, pooled mid blocks (encoder, decoder))
    "taesd": (4, "taesd_encoder.safetensors", "taesd_decoder.safetensors", ((), ())),
    "taef2": (32, "taef2_encoder.pth", "taef2_decoder.pth", ((11, 12, 13), (2, 3, 4))),
}


class TinyAutoencoder(_RGBAutoencoder):
    """TAESD / TAEF2 in diffusers' ``AutoencoderTiny`` (maps [-1, 1] in and out itself)."""

    @property
    def encoder(self) -> nn.Module:
        """The convolution stack ``encode`` runs (``speed.FrozenEncoder`` freezes it)."""
        return self.model.encoder

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(self.as_rgb(x)).latents.contiguous()

    def _decode_rgb(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z).sample

    @classmethod
    def from_files(cls, kind: str, directory: str | Path) -> "TinyAutoencoder":
        """Load the authors' per-part state dicts (``nn.Sequential`` keys) from ``directory``."""
        from diffusers import AutoencoderTiny

        if kind not in TAE_FORMATS:
            raise ValueError(f"unknown tiny autoencoder '{kind}'; known: {sorted(TAE_FORMATS)}")
        channels, encoder_file, decoder_file, (pooled_encoder, pooled_decoder) = TAE_FORMATS[kind]
        directory = Path(directory)
        paths = [directory / encoder_file, directory / decoder_file]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise WeightsError(f"{kind} weights not found: expected {', '.join(missing)} (set the autoencoder path)")
        model = AutoencoderTiny(latent_channels=channels, scaling_factor=1.0, force_upcast=False)
        block = _tiny_block_class()
        for index in pooled_encoder:
            model.encoder.layers[index] = block(64)
        for index in pooled_decoder:
            model.decoder.layers[index] = block(64)
        state = {}
        for prefix, path, shift in (("encoder.layers.", paths[0], 0), ("decoder.layers.", paths[1], -1)):
            for key, tensor in _read_state(path).items():
                index, rest = key.split(".", 1)
                state[f"{prefix}{int(index) + shift}.{rest}"] = tensor.float()
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise WeightsError(f"{directory} does not hold {kind} weights that fit: {error}") from None
        return cls(model, channels)


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt or foreign file: name it
        raise WeightsError(f"cannot read weights file {path}: {error}") from None


class StableDiffusionVAE(_RGBAutoencoder):
    """The paper's frozen SD VAE; latents are the posterior mean times the scaling factor."""

    def __init__(self, model: nn.Module):
        super().__init__(model, model.config.latent_channels)
        self.scaling_factor = model.config.scaling_factor

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (self.model.encode(self.as_rgb(x)).latent_dist.mode() * self.scaling_factor).contiguous()

    def _decode_rgb(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z / self.scaling_factor).sample

    @classmethod
    def from_pretrained(cls, path: str, subfolder: str | None = "vae", local_files_only: bool = True):
        from diffusers import AutoencoderKL

        return cls(_from_pretrained(AutoencoderKL, path, subfolder, local_files_only))


def _from_pretrained(model_class, path: str, subfolder: str | None, local_files_only: bool):
    """``from_pretrained`` with the subfolder optional and a clear error where nothing fits."""
    attempts = [subfolder, None] if subfolder else [None]
    errors = []
    for folder in attempts:
        try:
            return model_class.from_pretrained(path, subfolder=folder, local_files_only=local_files_only)
        except (OSError, ValueError, EnvironmentError) as error:
            errors.append(f"{path}{'/' + folder if folder else ''}: {error}")
    raise WeightsError(f"cannot load {model_class.__name__} from_pretrained: " + " | ".join(errors))


AUTOENCODERS = ("unshuffle", "taesd", "taef2", "sd-vae")


def build_autoencoder(kind: str, path: str | None = None, local_files_only: bool = True) -> LatentAutoencoder:
    """The configured autoencoder, frozen. ``path``: folder of TAE files, or SD model id/folder."""
    if kind == "unshuffle":
        return PixelUnshuffleAutoencoder()
    if kind in TAE_FORMATS:
        if not path:
            raise WeightsError(f"autoencoder '{kind}' needs a weights folder (autoencoder_path)")
        return TinyAutoencoder.from_files(kind, path)
    if kind == "sd-vae":
        if not path:
            raise WeightsError("autoencoder 'sd-vae' needs a Stable Diffusion model id or folder (autoencoder_path)")
        return StableDiffusionVAE.from_pretrained(path, local_files_only=local_files_only)
    raise ValueError(f"unknown autoencoder '{kind}'; choose one of {AUTOENCODERS}")
