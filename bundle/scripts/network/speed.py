"""Runtime levers: how the network runs, never what it computes (issue #10).

Each lever keeps the fp32 result within rounding (``tests/test_speed_paths.py`` compares every one
with the plain path) and is measured side by side with the plain path by ``bench/bench_cpu.py``
(tables in ``bench/results/cpu_*.md``) and, on a GPU, ``bench/gpu_bench.py``.

Figures from 2 CPU cores (AVX-512 Zen 4 here), fp32:
- ``channels_last`` (``default_channels_last``): oneDNN's NHWC convolutions, ~15% on the compact
  U-Net's inference; on for CPU inference, off for CPU training (its convolution backward ran ~7%
  slower in NHWC); the GPU bench measures it before it is used there.
- Frozen TorchScript encoder (``FrozenEncoder``): TAEF2's encoder, the costly part of a
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
    """Convert a module's 4D weights; its inputs follow them (``weights_format``)."""
    return module.to(memory_format=memory_format)


def weights_format(module: nn.Module) -> torch.memory_format:
    """The layout of ``module``'s first spatial convolution weight (``contiguous_format`` without one):
    a module hands its inputs over in it, so converting the weights is the whole switch."""
    conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d) and m.weight.shape[1] > 1
                 and m.kernel_size != (1, 1)), None)
    if conv is not None and not conv.weight.is_contiguous() \
            and conv.weight.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


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


class FrozenEncoder:
    """A tiny autoencoder's ``encode`` for CPU inference through its encoder frozen by TorchScript
    (``frozen_for_inference``). Runtime state, not part of the model: the segmenter calls it in
    place of ``autoencoder.encode``; the frozen copy is built on the first call and again when the
    weights move to another device or dtype (any input layout runs through it); copies and pickles
    leave it behind and rebuild it. Where it cannot serve (gradients wanted, autocast, another
    device, freezing failed) the eager encoder runs."""

    def __init__(self, autoencoder: nn.Module):
        self.autoencoder = autoencoder
        self._frozen, self._built_for = None, None

    def __getstate__(self):
        return {"autoencoder": self.autoencoder}

    def __setstate__(self, state):
        self.__init__(state["autoencoder"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rgb = self.autoencoder.as_rgb(x)
        if rgb.device.type != "cpu" or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
            return self.autoencoder.encode(x)
        weight = next(self.autoencoder.encoder.parameters())
        built_for = (weight.device, weight.dtype)  # the weights are frozen: their values never change
        if built_for != self._built_for:
            self._frozen, self._built_for = frozen_for_inference(self.autoencoder.encoder, rgb[:1]), built_for
        if self._frozen is None:
            return self.autoencoder.encode(x)
        return self._frozen(rgb).contiguous()

    @property
    def built(self) -> bool:
        return self._frozen is not None


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
