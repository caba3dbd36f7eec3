"""Ignite glue for episodic training: what MONAI's ``SupervisedTrainer`` needs beyond its stock parts.

The trainer itself, its handlers (progress bar, stats, TensorBoard, LR schedule, checkpoints,
validation) and the optimiser are stock and wired in ``bundle/configs/train.yaml``. What is ours:
- ``EpisodeObjective``: the module the trainer optimises (wraps the segmenter; its ``forward`` gives
  what the loss reads, so DDP sees one forward per step);
- ``EpisodeIteration``: the trainer's ``iteration_update``: gather cached latents of each episode,
  augment latent and mask together, the trainer's ``loss_function`` (``train.yaml``), one optimiser
  step with gradient clipping, EMA update;
- ``collate_episodes``: K-shot episodes -> flat support batch (E*K) and query batch (E);
- ``build_ema`` / ``ema_segmenter``: the EMA of the weights that every table evaluates.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class EpisodeObjective(nn.Module):
    def __init__(self, segmenter):
        super().__init__()
        self.segmenter = segmenter

    def forward(self, batch: dict, with_scores: bool = True) -> dict:
        return self.segmenter.episode_outputs(batch, with_scores)


def collate_episodes(items: list[dict]) -> dict:
    """Stack K-shot episodes: support arrays become (E*K, ...), queries (E, ...)."""
    shots = len(items[0]["support_z"])
    if any(len(item["support_z"]) != shots for item in items):
        raise ValueError("all episodes of a batch must have the same number of shots")
    batch = {
        "shots": shots,
        "support_pid": [pid for item in items for pid in item["support_pid"]],
        "support_z": torch.cat([torch.as_tensor(item["support_z"]).reshape(-1) for item in items]),
        "support_mask": torch.cat([torch.as_tensor(item["support_mask"])[:, None] for item in items]).float(),
        "query_pid": [item["query_pid"] for item in items],
        "query_z": torch.as_tensor([int(item["query_z"]) for item in items]),
        "query_mask": torch.stack([torch.as_tensor(item["query_mask"]).reshape(1, *item["query_mask"].shape[-2:]) for item in items]).float(),
        "class_value": torch.as_tensor([int(item["class_value"]) for item in items]),
    }
    for key, shape_key in (("support_image", "support_mask"), ("query_image", "query_mask")):
        if key in items[0]:
            batch[key] = torch.cat([torch.as_tensor(item[key]).reshape(-1, 1, *item[key].shape[-2:]) for item in items]).float()
    return batch


class EpisodeIteration:
    """``iteration_update`` of MONAI's SupervisedTrainer for SD-FSMIS episodes."""

    def __init__(self, cache, augment=None, ema: AveragedModel | None = None, grad_clip: float = 1.0,
                 amp: bool = False, amp_dtype: torch.dtype = torch.bfloat16):
        self.cache = cache
        self.augment = augment
        self.ema = ema
        self.grad_clip = grad_clip
        self.amp = amp
        self.amp_dtype = amp_dtype

    def prepare(self, batch: dict, device: torch.device) -> dict:
        support_latent = self.cache.slices(batch["support_pid"], batch["support_z"])
        query_latent = self.cache.slices(batch["query_pid"], batch["query_z"])
        support_mask, query_mask = batch["support_mask"], batch["query_mask"]
        if self.augment is not None:
            support_latent, support_mask = self._augment_each(support_latent, support_mask)
            query_latent, query_mask = self._augment_each(query_latent, query_mask)
        prepared = {
            "shots": batch["shots"],
            "support_latent": support_latent.to(device),
            "support_mask": support_mask.to(device),
            "query_latent": query_latent.to(device),
            "query_mask": query_mask.to(device),
        }
        if "support_image" in batch:
            prepared["support_image"] = batch["support_image"].to(device)
        return prepared

    def _augment_each(self, latents: torch.Tensor, masks: torch.Tensor):
        out_latents, out_masks = self.augment.apply_batch(latents, masks)
        empty = out_masks.flatten(1).amax(dim=1) <= 0  # an organ pushed out of view: keep the original
        if empty.any():
            out_latents[empty], out_masks[empty] = latents[empty], masks[empty]
        return out_latents, out_masks

    @staticmethod
    def losses(engine, batch: dict) -> dict:
        """The trainer's ``loss_function`` (``train.yaml``) of the objective's forward (through the
        trainer's ``SimpleInferer``) on a prepared batch."""
        with_scores = getattr(engine.loss_function, "needs_scores", True)
        return engine.loss_function(engine.inferer(batch, engine.network, with_scores=with_scores), batch["query_mask"])

    def __call__(self, engine, batchdata: dict) -> dict:
        batch = self.prepare(batchdata, engine.state.device)
        engine.network.train()
        autocast = (
            torch.autocast(device_type=engine.state.device.type, dtype=self.amp_dtype)
            if self.amp else contextlib.nullcontext()
        )
        with autocast:
            losses = self.losses(engine, batch)
        engine.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.grad_clip)
        engine.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(_unwrap(engine.network).segmenter.net)
        return {key: float(value.detach()) for key, value in losses.items()}


def _unwrap(network: nn.Module) -> nn.Module:
    return network.module if hasattr(network, "module") and isinstance(network.module, EpisodeObjective) else network


def build_ema(segmenter, decay: float = 0.995) -> AveragedModel:
    return AveragedModel(segmenter.net, multi_avg_fn=ema_with_warmup(decay), use_buffers=True)


def warmup_decay(decay: float, updates: int) -> float:
    """The EMA decay after ``updates`` averaging steps: (1 + n) / (10 + n), capped at ``decay``. A
    fixed 0.995 would keep 22% of the random initial weights after 300 steps; with the warm-up a
    short run's EMA follows its last tenth, and long runs (n > ~1,800) see the plain decay."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


def ema_with_warmup(decay: float):
    """``multi_avg_fn`` for AveragedModel: torch's EMA update with the warmed-up decay."""

    def update(ema_params, model_params, num_averaged):
        get_ema_multi_avg_fn(warmup_decay(decay, int(num_averaged)))(ema_params, model_params, num_averaged)

    return update


def ema_segmenter(segmenter, ema: AveragedModel):
    """A segmenter that runs the EMA weights (sharing the frozen autoencoders)."""
    return segmenter.with_net(ema.module)


def parameter_groups(segmenter, lr: float, lr_vtct: float) -> list[dict]:
    """The authors' two learning rates: the U-Net (and its input convs) and the VTCT translator."""
    vtct = [p for n, p in segmenter.net.named_parameters() if p.requires_grad and n.startswith(("vtct.", "visual_encoder."))]
    ids = {id(p) for p in vtct}
    rest = [p for p in segmenter.net.parameters() if p.requires_grad and id(p) not in ids]
    return [{"params": rest, "lr": lr}, {"params": vtct, "lr": lr_vtct}]


class ExportModel:
    """Writes the EMA weights as a model file (``model_file.py``'s zoo form: state dict + card) when
    training ends, so inference, evaluation and MONAI Label load them with
    ``build_segmenter(checkpoint=...)``; ``trained_on`` (``experiment.training_record``: datasets,
    classes, patients) goes in the card."""

    def __init__(self, segmenter, ema: AveragedModel, path: str, half: bool = False, trained_on: dict | None = None):
        self.segmenter, self.ema, self.path, self.half = segmenter, ema, path, half
        self.trained_on = trained_on

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
        from scripts.network.model_file import save_zoo_model

        save_zoo_model(ema_segmenter(self.segmenter, self.ema), self.path, half=self.half, trained_on=self.trained_on)
        engine.logger.info("EMA weights written to %s", self.path)


class EpochSetter:
    """Gives the episode dataset the epoch number, so each epoch draws new episodes while any
    epoch (and a resumed run) stays reproducible."""

    def __init__(self, dataset):
        self.dataset = dataset

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.dataset.set_epoch(e.state.epoch))
