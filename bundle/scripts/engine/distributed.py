"""Process-group set-up for ``multi_gpu_train.yaml`` (torchrun): NCCL on GPUs, gloo on CPUs."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def local_device() -> torch.device:
    if torch.cuda.is_available():
        index = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def device_ids(device: torch.device):
    return [device.index] if device.type == "cuda" else None


def init_process_group() -> None:
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")


def destroy_process_group() -> None:
    """Leave the group, and tell ignite: its distributed helpers cache the context they last saw, so
    a later workflow in the same process (a notebook, a test run) would still ask the destroyed
    group for its rank."""
    import ignite.distributed as idist

    if dist.is_initialized():
        dist.destroy_process_group()
    idist.sync()
