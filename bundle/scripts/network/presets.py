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

import copy
from pathlib import Path

import torch

from .autoencoders import PixelUnshuffleAutoencoder, WeightsError, _from_pretrained, build_autoencoder
from .pipeline import FewShotSegmenter
from .sdfsmis import SDFSMISNet
from .speed import compile_unet, default_channels_last, is_cpu
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

PRESETS = {
    "sd15": dict(autoencoder="sd-vae", mask_codec="autoencoder", visual_encoder="dinov2"),
    "compact": dict(autoencoder="unshuffle", mask_codec="unshuffle", visual_encoder="latent"),
    "wide": dict(autoencoder="unshuffle", mask_codec="unshuffle", visual_encoder="latent"),
    "tiny": dict(autoencoder="unshuffle", mask_codec="unshuffle", visual_encoder="latent"),
}

MODEL_KEYS = (
    "preset", "autoencoder", "autoencoder_path", "mask_codec", "visual_encoder", "visual_encoder_path",
    "unet_path", "use_qe", "use_vtct", "use_support_kv", "threshold", "threshold_mode", "keep_largest",
    "keep_largest_3d", "component_3d", "dice_weight", "local_files_only",
)


def model_config(preset: str = "compact", **overrides) -> dict:
    """The full configuration of a preset with the given keys overridden (``None`` keeps the preset)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}'; choose one of {sorted(PRESETS)}")
    unknown = set(overrides) - set(MODEL_KEYS)
    if unknown:
        raise ValueError(f"unknown model keys {sorted(unknown)}; known: {MODEL_KEYS}")
    config = dict(
        preset=preset, autoencoder_path=None, visual_encoder_path=None, unet_path=None, use_qe=True,
        use_vtct=True, use_support_kv=True, threshold=0.0, threshold_mode="absolute", keep_largest=True,
        keep_largest_3d=True, component_3d="support", dice_weight=0.5, local_files_only=True, **PRESETS[preset],
    )
    config.update({key: value for key, value in overrides.items() if value is not None})
    return config


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


def build_unet(config: dict, latent_channels: int, mask_channels: int, unet_config: dict | None = None):
    """The diffusers U-Net: pretrained (``sd15``), or a fresh one of the preset's shape, or one
    rebuilt from a checkpoint's stored config (weights then come from the checkpoint)."""
    from diffusers import UNet2DConditionModel

    if unet_config is not None:
        return UNet2DConditionModel.from_config(unet_config), False
    if config["preset"] == "sd15":
        if not config.get("unet_path"):
            raise WeightsError("preset 'sd15' needs unet_path: a Stable Diffusion 1.5 model folder or id")
        unet = _from_pretrained(UNet2DConditionModel, config["unet_path"], "unet", config["local_files_only"])
        if unet.config.out_channels != mask_channels:
            raise WeightsError(
                f"the pretrained U-Net outputs {unet.config.out_channels} channels, the mask latent has {mask_channels}"
            )
        return unet, True
    shape = UNET_SHAPES[config["preset"]]
    return UNet2DConditionModel(
        sample_size=32, in_channels=latent_channels, out_channels=mask_channels, **shape
    ), False


def build_segmenter(checkpoint: str | Path | None = None, device: str | torch.device = "cpu",
                    channels_last: bool | None = None, compile: bool = False, **keys) -> FewShotSegmenter:
    """Build from configuration keys, or from a checkpoint (its stored config, overridable).

    ``channels_last`` and ``compile`` are runtime levers (``speed.py``), not part of the model: they
    change how fast it runs, not what it computes. ``channels_last`` is the U-Net's memory format
    (None: where it pays, ``speed.default_channels_last``: CPU inference); the frozen autoencoders
    only ever run inference and take NHWC wherever that pays, and on the CPU a frozen TorchScript
    copy of their encoder."""
    state, unet_config, trained_on = None, None, None
    if checkpoint is not None:
        stored = load_checkpoint_file(checkpoint)
        state, unet_config, trained_on = stored["state_dict"], stored["unet_config"], stored.get("trained_on")
        keys = {**stored["config"], **{k: v for k, v in keys.items() if v is not None}}
    config = model_config(**keys)
    autoencoder = build_autoencoder(
        config["autoencoder"], resolve_weights_path(config["autoencoder_path"], config["autoencoder"]),
        config["local_files_only"]
    )
    mask_codec = autoencoder if config["mask_codec"] == "autoencoder" else PixelUnshuffleAutoencoder()
    if config["mask_codec"] not in ("autoencoder", "unshuffle"):
        raise ValueError(f"mask_codec must be 'autoencoder' or 'unshuffle', got {config['mask_codec']!r}")
    unet, pretrained = build_unet(config, autoencoder.latent_channels, mask_codec.latent_channels, unet_config)
    visual = build_visual_encoder(
        config["visual_encoder"], autoencoder.latent_channels, config["visual_encoder_path"], config["local_files_only"]
    )
    net = SDFSMISNet(
        unet, autoencoder.latent_channels, mask_codec.latent_channels, visual,
        use_qe=config["use_qe"], use_vtct=config["use_vtct"], use_support_kv=config["use_support_kv"],
        pretrained_conv_in=pretrained,
    )
    segmenter = FewShotSegmenter(
        net, autoencoder, mask_codec, threshold=config["threshold"], threshold_mode=config["threshold_mode"],
        keep_largest=config["keep_largest"], keep_largest_3d=config["keep_largest_3d"],
        component_3d=config["component_3d"], dice_weight=config["dice_weight"],
    )
    segmenter.config = config
    # diffusers' private bookkeeping (e.g. `_use_default_values`, in hash-seed order) would make
    # identical weights save to different bytes: keep only the architecture
    segmenter.unet_config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    segmenter.trained_on = trained_on  # what the weights were trained on (None: not recorded), kept on re-save
    if state is not None:
        load_trainable_state(segmenter, state, source=str(checkpoint))
    segmenter = segmenter.to(device)
    segmenter.set_channels_last(default_channels_last(device) if channels_last is None else channels_last,
                                autoencoders=default_channels_last(device))  # frozen: always inference
    for codec in (segmenter.autoencoder, segmenter.mask_codec):
        codec.frozen_encoder = is_cpu(device)  # TorchScript-frozen encoder on the CPU (speed.py)
    if compile:
        compile_unet(segmenter.net)
    return segmenter


def trainable_state(segmenter: FewShotSegmenter) -> dict:
    """The network's weights without the frozen parts that come from their own files."""
    return {k: v for k, v in segmenter.net.state_dict().items() if not _is_frozen_key(segmenter, k)}


def _is_frozen_key(segmenter: FewShotSegmenter, key: str) -> bool:
    return key.startswith("visual_encoder.") and not any(p.requires_grad for p in segmenter.net.visual_encoder.parameters())


def load_trainable_state(segmenter: FewShotSegmenter, state: dict, source: str = "checkpoint") -> None:
    expected = trainable_state(segmenter)
    missing = sorted(set(expected) - set(state))
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or mismatched:
        detail = f"missing {missing[:5]}" if missing else f"shape mismatch in {mismatched[:5]}"
        raise WeightsError(f"{source} does not fit preset '{segmenter.config['preset']}' "
                           f"(autoencoder '{segmenter.config['autoencoder']}'): {detail}")
    segmenter.net.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)


def checkpoint_payload(segmenter: FewShotSegmenter, half: bool = False, trained_on: dict | None = None) -> dict:
    """config, unet_config and state_dict (what loading needs); `trained_on` (the datasets, classes
    and patients of the training, `experiment.training_record`) when known: given here, or carried
    over from the checkpoint the segmenter was built from. Files without it load as before."""
    state = trainable_state(segmenter)
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload = {"config": copy.deepcopy(segmenter.config), "unet_config": segmenter.unet_config, "state_dict": state}
    trained_on = trained_on if trained_on is not None else getattr(segmenter, "trained_on", None)
    if trained_on is not None:
        payload["trained_on"] = copy.deepcopy(trained_on)
    return payload


def save_checkpoint_file(segmenter: FewShotSegmenter, path: str | Path, half: bool = False,
                         trained_on: dict | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(checkpoint_payload(segmenter, half, trained_on), tmp)
    tmp.replace(path)  # never a half-written checkpoint


def load_checkpoint_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    try:
        stored = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise WeightsError(f"cannot read checkpoint {path}: {error}") from None
    for key in ("config", "unet_config", "state_dict"):
        if not isinstance(stored, dict) or key not in stored:
            raise WeightsError(f"{path} is not an SD-FSMIS checkpoint (no '{key}')")
    return stored
