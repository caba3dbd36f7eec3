"""Named network configurations and the one function that builds a segmenter from configuration.

- ``sd15``: the paper's model: Stable Diffusion 1.5's U-Net (``from_pretrained``), its VAE for
  images and masks, DINOv2 for VTCT. Needs the weights (local folder or a hub id already cached).
- ``compact``: a small U-Net (widths 32/64/128, one layer per block, K/V-bank attention at 16x16,
  8x8 and the mid block, head size 32) that trains on 2 CPU cores; any autoencoder, offline.
- ``tiny``: the smallest sensible U-Net, for tests.

The autoencoder, mask latent and visual encoder are separate keys (docs/DESIGN.md, "The network's parts"): ``autoencoder``
(``unshuffle``/``taef2``/``taesd``/``sd-vae``), ``mask_codec`` (``unshuffle`` or ``autoencoder``),
``visual_encoder`` (``latent``/``small``/``dinov2``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .autoencoders import PixelUnshuffleAutoencoder, TinyAutoencoder, WeightsError, _from_pretrained, build_autoencoder
from .model_config import ModelConfig
from .model_file import load_checkpoint_file, load_trainable_state
from .pipeline import FewShotSegmenter
from .sdfsmis import SDFSMISNet
from .speed import FrozenEncoder, compile_unet, default_channels_last, is_cpu
from .vtct import build_visual_encoder

UNET_SHAPES = {
    "compact": dict(
        block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        attention_head_dim=(1, 2, 4),  # diffusers' name for the number of heads: head size 32
        cross_attention_dim=128,
        norm_num_groups=8,
    ),
    "wide": dict(  # compact at twice the width (about 2.8x its time per step on the CPU)
        block_out_channels=(64, 128, 256),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        attention_head_dim=(2, 4, 8),
        cross_attention_dim=256,
        norm_num_groups=16,
    ),
    "tiny": dict(
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        attention_head_dim=(1, 2),
        cross_attention_dim=32,
        norm_num_groups=8,
    ),
}

BUNDLE_ROOT = Path(__file__).resolve().parents[2]
# autoencoder weights the bundle ships (committed; the zoo's zip fetches them through large_files.yml)
SHIPPED_WEIGHTS = {"taef2": "models/taef2"}
# where checkpoints exported before bundle 0.5 name them: large_files.yml's former folder
FORMER_WEIGHTS = {"weights/taef2": "models/taef2"}


def default_weights_path(autoencoder: str | None) -> str | None:
    """The shipped weights folder (relative to the bundle root) of an autoencoder, or None."""
    return SHIPPED_WEIGHTS.get(autoencoder)


def resolve_weights_path(path: str | None, autoencoder: str | None = None) -> str | None:
    """Where an autoencoder's weights are read from. No path: the shipped folder of that
    autoencoder (TAEF2: ``models/taef2``), if it ships. A relative folder is read from the working
    directory, else from the bundle root, so a checkpoint names it portably; a stored
    ``weights/taef2`` that is in neither place reads the shipped ``models/taef2``."""
    path = path or default_weights_path(autoencoder)
    if not path or Path(path).is_absolute() or Path(path).exists():
        return path
    for candidate in (path, FORMER_WEIGHTS.get(Path(path).as_posix())):
        if candidate and (BUNDLE_ROOT / candidate).exists():
            return str(BUNDLE_ROOT / candidate)
    return path


def build_unet(config: ModelConfig, latent_channels: int, mask_channels: int, unet_config: dict | None = None):
    """The diffusers U-Net: pretrained (``sd15``), or a fresh one of the preset's shape, or one
    rebuilt from a checkpoint's stored config (weights then come from the checkpoint)."""
    from diffusers import UNet2DConditionModel

    if unet_config is not None:
        return UNet2DConditionModel.from_config(unet_config), False
    if config.preset == "sd15":
        if not config.unet_path:
            raise WeightsError("preset 'sd15' needs unet_path: a Stable Diffusion 1.5 model folder or id")
        unet = _from_pretrained(UNet2DConditionModel, config.unet_path, "unet", config.local_files_only)
        if unet.config.out_channels != mask_channels:
            raise WeightsError(
                f"the pretrained U-Net outputs {unet.config.out_channels} channels, the mask latent has {mask_channels}"
            )
        return unet, True
    shape = UNET_SHAPES[config.preset]
    return UNet2DConditionModel(
        sample_size=32, in_channels=latent_channels, out_channels=mask_channels, **shape
    ), False


def build_segmenter(checkpoint: str | Path | None = None, device: str | torch.device = "cpu",
                    channels_last: bool | None = None, compile: bool = False, **keys) -> FewShotSegmenter:
    """Build from ``ModelConfig`` keys, or from a model file (its stored config, overridable by the
    keys; a bare state dict without its card takes the keys alone: ``model_file.py``).

    ``channels_last`` and ``compile`` are runtime levers (``speed.py``), not part of the model: they
    change how fast it runs, not what it computes. ``channels_last`` is the U-Net's memory format
    (None: where it pays, ``speed.default_channels_last``: CPU inference); the frozen autoencoders
    only ever run inference and take NHWC wherever that pays, and on the CPU a tiny autoencoder
    encodes through a frozen TorchScript copy of its encoder (``speed.FrozenEncoder``)."""
    stored = load_checkpoint_file(checkpoint) if checkpoint is not None else {}
    keys = {**(stored.get("config") or {}), **{k: v for k, v in keys.items() if v is not None}}
    config = ModelConfig.from_keys(**keys)
    autoencoder = build_autoencoder(
        config.autoencoder, resolve_weights_path(config.autoencoder_path, config.autoencoder), config.local_files_only
    )
    mask_codec = autoencoder if config.mask_codec == "autoencoder" else PixelUnshuffleAutoencoder()
    unet, pretrained = build_unet(config, autoencoder.latent_channels, mask_codec.latent_channels,
                                  stored.get("unet_config"))
    visual = build_visual_encoder(
        config.visual_encoder, autoencoder.latent_channels, config.visual_encoder_path, config.local_files_only
    )
    net = SDFSMISNet(
        unet, autoencoder.latent_channels, mask_codec.latent_channels, visual,
        use_qe=config.use_qe, use_vtct=config.use_vtct, use_support_kv=config.use_support_kv,
        pretrained_conv_in=pretrained,
    )
    # what the weights were trained on (None: not recorded), kept on re-save
    segmenter = FewShotSegmenter(net, autoencoder, mask_codec, config, trained_on=stored.get("trained_on"))
    if "state_dict" in stored:
        load_trainable_state(segmenter, stored["state_dict"], source=str(checkpoint))
    segmenter = segmenter.to(device)
    segmenter.set_channels_last(default_channels_last(device) if channels_last is None else channels_last,
                                autoencoders=default_channels_last(device))  # frozen: always inference
    if is_cpu(device) and isinstance(segmenter.autoencoder, TinyAutoencoder):
        segmenter.fast_encoder = FrozenEncoder(segmenter.autoencoder)
    if compile:
        compile_unet(segmenter.net)
    return segmenter
