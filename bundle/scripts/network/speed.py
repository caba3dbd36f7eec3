"""Runtime levers: how the network runs, never what it computes (issue #10).

Each lever keeps the fp32 result within rounding (``tests/test_speed_paths.py`` compares every one
with the plain path) and is measured side by side with the plain path by ``bench/bench_cpu.py``
(tables in ``bench/results/cpu_*.md``) and, on a GPU, ``bench/gpu_bench.py``.

Figures from 2 CPU cores (AVX-512 Zen 4 here), fp32:
- ``channels_last`` (``default_channels_last``): oneDNN's NHWC convolutions, ~15% on the compact
  U-Net's inference; on for CPU inference, off for CPU training (its convolution backward ran ~7%
  slower in NHWC); the GPU bench measures it before it is used there.
- Frozen TorchScript encoder (``frozen_for_inference``): TAEF2's encoder, the costly part of a
  first call and of the dataset latent cache, traced once per process (~3 s) with oneDNN's
  prepacked weights and conv+ReLU fusion, the same numbers as eager: 0.29 -> 0.17 s a slice; on by
  default on the CPU. (inductor with ``freezing`` reaches the same 0.17 s after a 7 s compile.)
- ``encode_chunk``: 2 slices per encoder call on the CPU (cache-sized activations).
- Fused AdamW (``adamw_options``): one kernel over all parameters; a few % of a compact step.
- ``torch.compile`` (inductor, ``compile_unet``): optional, off by default. It needs a C++ compiler
  at run time; on 2 cores compiling the compact U-Net took 3-4 minutes for ~20% on inference and
  nothing on a training step, so it does not pay here; it falls back to eager with a log line.
- Threads: torch's default, one intra-op thread per core, is what pays on an idle machine; nothing
  to set. (On a machine other processes keep busy, 2-thread regions stall on the descheduled
  thread, several times slower: a property of the machine, not a lever.)
"""

from __future__ import annotations

import logging
import os
import shutil

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)


def is_cpu(device) -> bool:
    return torch.device(device).type == "cpu"


def as_format(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """A 4D tensor in ``memory_format`` (no copy when it already is); other tensors unchanged."""
    return x.contiguous(memory_format=memory_format) if x.dim() == 4 else x


def set_memory_format(module: nn.Module, memory_format: torch.memory_format) -> nn.Module:
    """Convert a module's 4D weights and record the format its inputs are given in."""
    module.to(memory_format=memory_format)
    module.memory_format = memory_format
    return module


def default_channels_last(device, training: bool = False) -> bool:
    """Where NHWC pays (bench/results/cpu_*.md): CPU inference (U-Net and TAEF2 encoder). Not CPU
    training, whose convolution backward runs slower in NHWC, and not by default on a GPU, where
    ``bench/gpu_bench.py`` measures it first."""
    return is_cpu(device) and not training


def encode_chunk(device) -> int:
    """Slices per autoencoder call: on the CPU small batches keep the full-resolution activations
    of TAEF2's first block (64 x 256 x 256 floats a slice) in cache: 0.174 s/slice in chunks of 2,
    0.187 in chunks of 16 (2 cores); on a GPU large batches fill the device."""
    return 2 if is_cpu(device) else 32


def frozen_for_inference(module: nn.Module, example: torch.Tensor):
    """``module`` traced, frozen and optimised for CPU inference by TorchScript (oneDNN: weights
    prepacked once, convolution + ReLU fused); None where that fails. For convolution stacks
    without data-dependent control flow (TAESD/TAEF2's encoder); inputs of any batch and size.
    TorchScript is deprecated in favour of ``torch.compile``, whose compilation costs more here
    than this saves (bench/results/cpu_*.md), so its deprecation warnings are silenced."""
    import copy
    import warnings

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(copy.deepcopy(module).eval(), example, check_trace=False)
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
            expected, got = module(example), frozen(example)  # one self-check before it is trusted
        if got.shape != expected.shape or (got - expected).norm() > 1e-4 * expected.norm():
            raise ValueError("the frozen module does not reproduce the eager one")
        return frozen
    except Exception as error:  # an op TorchScript cannot take: the eager module still works
        logger.warning("TorchScript freezing failed (%s: %s): running eager", type(error).__name__, error)
        return None


def compiler_available() -> bool:
    """inductor's CPU backend builds C++ at run time."""
    return any(shutil.which(name) for name in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++"))


def compile_unet(net: nn.Module, **options) -> bool:
    """Compile the U-Net of an ``SDFSMISNet`` in place (its state-dict keys stay the same). Returns
    whether it is compiled; where it cannot be (no C++ compiler on a CPU, no inductor), it stays
    eager and says so. ``options`` go to ``torch.compile`` (e.g. ``mode``, ``dynamic``)."""
    device = next(net.parameters()).device
    if device.type == "cpu" and not compiler_available():
        logger.warning("torch.compile asked for, but no C++ compiler is on PATH: the U-Net runs eager")
        return False
    try:
        net.unet.compile(**options)
    except Exception as error:  # an old torch, a backend that is missing: eager still works
        logger.warning("torch.compile failed (%s: %s): the U-Net runs eager", type(error).__name__, error)
        return False
    logger.info("U-Net compiled with torch.compile%s: its first calls compile (minutes on 2 CPU cores)",
                f" {options}" if options else "")
    return True


def adamw_options(device) -> dict:
    """Extra ``torch.optim.AdamW`` keywords for ``device``: the fused kernel where torch has it."""
    try:
        probe = nn.Parameter(torch.zeros(1, device=device))
        torch.optim.AdamW([probe], fused=True).step()
        return {"fused": True}
    except (RuntimeError, TypeError, ValueError):
        return {}
