"""Query Enhancement (QE): a query prototype found through the support's prototypes.

Foreground and background prototypes are masked averages of the support latent (averaged over the
K shots); each query-latent pixel gets a softmax over its cosine similarity to the two; pixels with
foreground probability above ``threshold`` (the top-k where none pass) are averaged into a query
prototype, broadcast over the latent grid and concatenated to the query latent by the caller.
No parameters: it shapes the U-Net's input, the U-Net learns what to do with it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def masked_average(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) features, (N, 1, h, w) weights -> (N, C) weighted mean."""
    total = weights.sum(dim=(2, 3)).clamp_min(1e-6)
    return (features * weights).sum(dim=(2, 3)) / total


def episode_mean(values: torch.Tensor, shots: int) -> torch.Tensor:
    """(E*K, ...) -> (E, ...): average the K shots of each episode."""
    return values.reshape(values.shape[0] // shots, shots, *values.shape[1:]).mean(dim=1)


class QueryEnhancement(nn.Module):
    def __init__(self, threshold: float = 0.7, top_k: int = 10, temperature: float = 1.0):
        super().__init__()
        self.threshold = threshold
        self.top_k = top_k
        self.temperature = temperature

    def select(
        self,
        support_latent: torch.Tensor,
        support_mask: torch.Tensor,
        query_latent: torch.Tensor,
        query_episode: torch.Tensor,
        shots: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The query pixels the prototype averages: -> (foreground probability, 0/1 weights), each
        (Q, 1, h, w). Inputs as ``forward``."""
        foreground = episode_mean(masked_average(support_latent, support_mask), shots)
        background = episode_mean(masked_average(support_latent, 1 - support_mask), shots)
        prototypes = torch.stack([background, foreground], dim=1)[query_episode]  # (Q, 2, C)
        similarity = torch.einsum(
            "qchw,qpc->qphw", F.normalize(query_latent, dim=1), F.normalize(prototypes, dim=2)
        )
        foreground_probability = (similarity / self.temperature).softmax(dim=1)[:, 1].flatten(1)  # (Q, h*w)
        selected = (foreground_probability > self.threshold).float()
        k = min(self.top_k, foreground_probability.shape[1])
        top = torch.zeros_like(selected).scatter_(1, foreground_probability.topk(k, dim=1).indices, 1.0)
        none_selected = selected.sum(dim=1, keepdim=True) == 0
        weights = torch.where(none_selected, top, selected)
        shape = query_latent[:, :1].shape
        return foreground_probability.view(shape), weights.view(shape)

    def forward(
        self,
        support_latent: torch.Tensor,
        support_mask: torch.Tensor,
        query_latent: torch.Tensor,
        query_episode: torch.Tensor,
        shots: int,
    ) -> torch.Tensor:
        """support_latent (E*K, C, h, w), support_mask (E*K, 1, h, w) in [0, 1] at latent scale,
        query_latent (Q, C, h, w), query_episode (Q,) -> (Q, C, h, w) query prototype map."""
        _, weights = self.select(support_latent, support_mask, query_latent, query_episode, shots)
        prototype = masked_average(query_latent, weights)
        return prototype[:, :, None, None].expand_as(query_latent)
