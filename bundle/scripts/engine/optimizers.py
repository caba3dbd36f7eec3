"""The training optimizer, by name: AdamW (the authors') or Adafactor (lean optimizer states).

Both are torch's own (``torch.optim.AdamW``, ``torch.optim.Adafactor``). AdamW keeps two fp32
states per weight; for the SD-1.5 U-Net (860 M parameters) weights, gradients and AdamW states alone
take 13.8 GB. Adafactor keeps no first moment and factors the second over each tensor's last two
dimensions (a (m, n) matrix keeps m + n numbers), which is what lets a full-U-Net step fit a small
GPU memory budget (``bench/gpu_bench.py``). Its ``lr`` is relative to each tensor's RMS (torch's
default 1e-2), not AdamW's absolute step: pass ``--lr 1e-2 --lr_vtct 1e-2`` with it.
``tests/test_training.py`` checks its loss curve against AdamW's over the same steps.
"""

from __future__ import annotations

import torch

from scripts.network.speed import adamw_options

OPTIMIZERS = ("adamw", "adafactor")


def build_optimizer(name: str, param_groups, weight_decay: float, device) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(param_groups, weight_decay=weight_decay, **adamw_options(device))
    if name == "adafactor":
        return torch.optim.Adafactor(param_groups, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer '{name}'; expected one of {', '.join(OPTIMIZERS)}")


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the optimizer's per-parameter states (tensors only)."""
    return sum(value.numel() * value.element_size() for state in optimizer.state.values()
               for value in state.values() if torch.is_tensor(value) and value.ndim > 0)


LR_SCHEDULES = {"linear": 0.0, "constant": 1.0}


def final_lr_factor(schedule: str) -> float:
    """The LinearLR end factor of a schedule: `linear` decays to 0 at the last step; `constant` keeps
    the rate, so a run resumed into more steps is exactly the longer run (the learning curves)."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {sorted(LR_SCHEDULES)}, got {schedule!r}")
    return LR_SCHEDULES[schedule]
