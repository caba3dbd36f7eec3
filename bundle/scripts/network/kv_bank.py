"""Support-Query Interaction: the self-attention K/V bank of SD-FSMIS.

The support pass stores every self-attention layer's keys and values; the query pass attends to
[own K; support K] and [own V; support V]. The bank and its mode travel explicitly through the
U-Net's ``cross_attention_kwargs`` (``support_bank``, ``bank_mode``), never through a hidden
counter, so a recomputed support pass (gradient checkpointing) only rewrites the same entries and a
recomputed query pass reads the same support tensors: gradients equal those without checkpointing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

WRITE = "write"
READ = "read"
BANK_MODES = (WRITE, READ)


@dataclass
class SupportBank:
    """Keys/values of one support pass, per self-attention layer.

    ``shots`` supports belong to each episode (the support batch is ``episodes * shots``). The
    support pass fills ``entries``; each query pass reads them through ``for_queries``, whose
    ``query_episode`` (Q,) says which episode serves each of its query slices: one support pass
    serves any number of query batches, and EP1's chunks can use different supports in one call.
    """

    shots: int = 1
    query_episode: torch.Tensor | None = None
    entries: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def for_queries(self, query_episode: torch.Tensor) -> "SupportBank":
        """The same stored keys/values, read by a batch of query slices of these episodes."""
        return SupportBank(self.shots, query_episode, self.entries)

    def store(self, layer: str, key: torch.Tensor, value: torch.Tensor) -> None:
        self.entries[layer] = (key, value)

    def support_for_queries(self, layer: str, n_queries: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Support K/V of each query's episode, the K shots concatenated along the tokens."""
        if layer not in self.entries:
            raise RuntimeError(f"no support keys/values stored for layer '{layer}': run the support pass first")
        key, value = self.entries[layer]
        support_batch, tokens, channels = key.shape
        if support_batch % self.shots:
            raise ValueError(f"support batch {support_batch} is not a multiple of shots={self.shots}")
        episodes = support_batch // self.shots
        key = key.reshape(episodes, self.shots * tokens, channels)
        value = value.reshape(episodes, self.shots * tokens, value.shape[-1])
        if self.query_episode is None:  # the query pass gives it (SDFSMISNet.query_pass)
            raise RuntimeError("the bank is read without query_episode: read it through for_queries")
        if self.query_episode.numel() != n_queries:
            raise ValueError(f"query_episode has {self.query_episode.numel()} entries for {n_queries} query slices")
        index = self.query_episode.to(device=key.device, dtype=torch.long)
        return key.index_select(0, index), value.index_select(0, index)

    def clear(self) -> None:
        self.entries.clear()


class SupportQueryAttnProcessor:
    """Scaled-dot-product attention (as diffusers' AttnProcessor2_0) plus the support K/V bank.

    Installed on every attention layer with ``set_attn_processor``; self-attention layers take part
    in the bank, cross-attention layers (the VTCT context) behave as the stock processor.
    """

    def __init__(self, name: str):
        self.name = name

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        support_bank: SupportBank | None = None,
        bank_mode: str | None = None,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attention_mask is not None:
            sequence = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape[1]
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        is_self_attention = encoder_hidden_states is None
        query = attn.to_q(hidden_states)
        if is_self_attention:
            context = hidden_states
        else:
            context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
        key = attn.to_k(context)
        value = attn.to_v(context)

        if is_self_attention and support_bank is not None and bank_mode is not None:
            if bank_mode == WRITE:
                support_bank.store(self.name, key, value)
            elif bank_mode == READ:
                support_key, support_value = support_bank.support_for_queries(self.name, batch)
                key = torch.cat([key, support_key.to(key.dtype)], dim=1)
                value = torch.cat([value, support_value.to(value.dtype)], dim=1)
            else:
                raise ValueError(f"bank_mode must be one of {BANK_MODES}, got {bank_mode!r}")
            if attention_mask is not None:
                raise ValueError("attention masks are not supported together with the support bank")

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install_support_query_attention(unet) -> None:
    """Give every attention layer of a diffusers U-Net its own named bank-aware processor."""
    unet.set_attn_processor({name: SupportQueryAttnProcessor(name) for name in unet.attn_processors})
