"""The SD-FSMIS network: a diffusers U-Net with two input convolutions, the support K/V bank,
Query Enhancement and the VTCT context.

Support pass: [support latent; support mask latent] -> ``conv_in_ref`` -> U-Net, output discarded,
every self-attention layer stores its keys/values. Query pass: [query latent; QE prototype map] ->
``conv_in`` -> U-Net attending to [own; support] K/V. Both passes take the VTCT tokens as their
cross-attention context. The U-Net's own ``conv_in`` is replaced by an identity: the two input
convolutions belong to this module, so each pass states its input explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .kv_bank import READ, WRITE, SupportBank, install_support_query_attention
from .one_step import TIMESTEP
from .qe import QueryEnhancement
from .speed import as_format, weights_format
from .vtct import ConditionTranslator


def widened_conv(conv: nn.Conv2d, in_channels: int, pretrained: bool) -> nn.Conv2d:
    """A copy of ``conv`` taking ``in_channels`` inputs. From pretrained weights it is initialised as
    the authors do: the pretrained kernel tiled over the new inputs and divided by the tiling, so
    that equal halves reproduce the pretrained response."""
    wide = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding)
    if pretrained:
        old = conv.in_channels
        if in_channels % old:
            raise ValueError(f"cannot tile a {old}-input conv_in over {in_channels} inputs")
        repeats = in_channels // old
        with torch.no_grad():
            wide.weight.copy_(conv.weight.repeat(1, repeats, 1, 1) / repeats)
            wide.bias.copy_(conv.bias)
    return wide


@dataclass
class SupportMemory:
    """What one support pass leaves for any number of query passes: the VTCT tokens of each episode,
    the self-attention K/V bank, and the support latents and masks that Query Enhancement reads."""

    context: torch.Tensor  # (E, tokens, D)
    bank: SupportBank | None  # None where the support K/V are ablated
    latent: torch.Tensor  # (E*K, C, h, w)
    mask: torch.Tensor  # (E*K, 1, H, W) {0,1}
    shots: int

    @property
    def episodes(self) -> int:
        return self.latent.shape[0] // self.shots


class SDFSMISNet(nn.Module):
    def __init__(
        self,
        unet: nn.Module,
        latent_channels: int,
        mask_channels: int,
        visual_encoder: nn.Module,
        use_qe: bool = True,
        use_vtct: bool = True,
        use_support_kv: bool = True,
        pretrained_conv_in: bool = False,
        context_tokens: int = 1,
    ):
        super().__init__()
        if unet.config.out_channels != mask_channels:
            raise ValueError(f"U-Net outputs {unet.config.out_channels} channels but the mask latent has {mask_channels}")
        self.latent_channels = latent_channels
        self.mask_channels = mask_channels
        self.use_qe = use_qe
        self.use_vtct = use_vtct
        self.use_support_kv = use_support_kv
        original = unet.conv_in
        if pretrained_conv_in and original.in_channels != latent_channels:
            raise ValueError(
                f"pretrained U-Net takes {original.in_channels} latent channels, the autoencoder gives {latent_channels}"
            )
        query_inputs = latent_channels * (2 if use_qe else 1)
        self.conv_in = widened_conv(original, query_inputs, pretrained_conv_in)
        if pretrained_conv_in and mask_channels != latent_channels:
            # mask latent of another shape (pixel unshuffle): image half from the pretrained kernel
            self.conv_in_ref = widened_conv(original, 2 * latent_channels, True)
            self.conv_in_ref = _append_inputs(self.conv_in_ref, latent_channels, mask_channels)
        else:
            self.conv_in_ref = widened_conv(original, latent_channels + mask_channels, pretrained_conv_in)
        unet.conv_in = nn.Identity()
        install_support_query_attention(unet)
        self.unet = unet
        self.qe = QueryEnhancement() if use_qe else None
        self.visual_encoder = visual_encoder
        self.vtct = ConditionTranslator(visual_encoder.out_channels, unet.config.cross_attention_dim, tokens=context_tokens)

    @property
    def memory_format(self) -> torch.memory_format:
        """What the U-Net's inputs are handed over in: its weights' layout (``speed.set_memory_format``)."""
        return weights_format(self.conv_in)

    @property
    def context_dim(self) -> int:
        return self.unet.config.cross_attention_dim

    def context(self, support_latent, support_mask, shots, support_image=None) -> torch.Tensor:
        episodes = support_latent.shape[0] // shots
        if not self.use_vtct:  # ablation: a constant null context
            return support_latent.new_zeros(episodes, self.vtct.tokens, self.context_dim)
        features = self.visual_encoder(support_latent, support_image)
        return self.vtct(features, support_mask, shots)

    def forward(
        self,
        support_latent: torch.Tensor,
        support_mask_latent: torch.Tensor,
        support_mask: torch.Tensor,
        query_latent: torch.Tensor,
        query_episode: torch.Tensor | None = None,
        shots: int = 1,
        support_image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """support_latent (E*K, C, h, w); support_mask_latent (E*K, Cm, h, w); support_mask
        (E*K, 1, H, W) {0,1}; query_latent (Q, C, h, w); query_episode (Q,) episode of each
        query (default: queries split evenly over episodes). Returns the U-Net output (Q, Cm, h, w):
        the velocity, i.e. the negated mask latent."""
        memory = self.support_pass(support_latent, support_mask_latent, support_mask, shots, support_image)
        if query_episode is None:
            if query_latent.shape[0] % memory.episodes:
                raise ValueError("query slices cannot be split evenly over episodes; give query_episode")
            query_episode = torch.arange(memory.episodes, device=query_latent.device).repeat_interleave(
                query_latent.shape[0] // memory.episodes
            )
        return self.query_pass(memory, query_latent, query_episode)

    def support_pass(self, support_latent, support_mask_latent, support_mask, shots: int = 1,
                     support_image=None) -> SupportMemory:
        """The supports alone, once: (E*K, ...) tensors of E episodes of K shots each."""
        if support_latent.shape[0] % shots:
            raise ValueError(f"{support_latent.shape[0]} support slices is not a multiple of shots={shots}")
        context = self.context(support_latent, support_mask, shots, support_image)
        bank = None
        if self.use_support_kv:
            bank = SupportBank(shots=shots)
            support_input = self.conv_in_ref(as_format(torch.cat([support_latent, support_mask_latent], dim=1),
                                                       self.memory_format))
            self._unet(support_input, context.repeat_interleave(shots, dim=0), bank, WRITE)
        return SupportMemory(context, bank, support_latent, support_mask, shots)

    def query_pass(self, memory: SupportMemory, query_latent: torch.Tensor, query_episode: torch.Tensor) -> torch.Tensor:
        """Query slices (Q, C, h, w), each served by its episode of ``memory`` (``query_episode`` (Q,))."""
        query_episode = query_episode.to(query_latent.device, torch.long)
        query_parts = [query_latent]
        if self.qe is not None:
            mask_small = F.adaptive_avg_pool2d(memory.mask.float(), memory.latent.shape[-2:])
            query_parts.append(self.qe(memory.latent, mask_small, query_latent, query_episode, memory.shots))
        query_input = self.conv_in(as_format(torch.cat(query_parts, dim=1), self.memory_format))
        # The bank is not cleared here: a checkpointed query pass re-reads it during backward; it is
        # freed with the autograd graph that holds it.
        bank = memory.bank.for_queries(query_episode) if memory.bank is not None else None
        return self._unet(query_input, memory.context[query_episode], bank, READ if bank is not None else None)

    def _unet(self, sample, context, bank, mode):
        timestep = torch.full((sample.shape[0],), TIMESTEP, device=sample.device, dtype=torch.long)
        return self.unet(
            sample,
            timestep,
            encoder_hidden_states=context,
            cross_attention_kwargs={"support_bank": bank, "bank_mode": mode},
        ).sample


def _append_inputs(conv: nn.Conv2d, keep: int, extra: int) -> nn.Conv2d:
    """Keep the first ``keep`` input channels' kernels, add ``extra`` freshly initialised ones."""
    wide = nn.Conv2d(keep + extra, conv.out_channels, conv.kernel_size, conv.stride, conv.padding)
    with torch.no_grad():
        wide.weight[:, :keep].copy_(conv.weight[:, :keep])
        wide.weight[:, keep:].mul_(0.1)
        wide.bias.copy_(conv.bias)
    return wide
