"""One prepared GPU command: the U-Net paths of SD-FSMIS timed side by side, then accuracy jobs.

Made for a bare GPU machine (Python 3.12, its own torch, no diffusers/monai/nibabel/ignite, no
registry) that lends a few minutes: it installs what is missing from the wheels of
``bench/gpu_pack.sh`` (``--pack``, default ``.gpu_pack``), never touching torch, then, within
``--budget`` seconds in all:

1. the SD-1.5-sized U-Net (diffusers' ``UNet2DConditionModel`` with SD 1.5's configuration, random
   weights; ``SDFSMISNet`` around it: support K/V bank, QE, VTCT), 4x32x32 latents of 256x256
   slices: the authors' path (one support + one query pass per slice, batch 1, fp32) and ours
   (one support pass whose K/V serve a batch of queries) with each lever on top: bf16 autocast,
   fused AdamW, channels_last, torch.compile (compile time counted), CUDA graphs with static shapes
   (capture time counted), recompute-safe gradient checkpointing. A training step is 8 episodes
   (8 supports + 8 queries, MSE on the velocity as the authors train, grad clipping, AdamW over
   the whole U-Net); inference is one 40-slice volume. CUDA events after warm-up, median of
   repeats, peak GPU memory per row;
2. the same for the ``compact`` preset (pixel-unshuffle latents, 64x32x32);
3. the rest of the budget on queued accuracy jobs through ``tools.runner`` (CHAOST2 and TAEF2
   unpacked from the pack), if that package imports; otherwise a log line says it was skipped;
4. ``gpu_bench.log``, ``gpu_bench.md`` (the table), ``gpu_bench.json`` and, if jobs ran,
   ``accuracy.tar.gz`` in ``--out``.

Every lever runs guarded: one that fails (or does not fit the time left) is logged and skipped.
Without CUDA, or with ``--tiny``, it runs the same code end to end with tiny sizes on the CPU (the
test suite does, ``tests/test_gpu_bench.py``).

    python3 bench/gpu_bench.py --out OUT [--pack .gpu_pack] [--budget 330] [--tiny]
    make gpu OUT=...
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.util
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
log = logging.getLogger("gpu_bench")

# module -> wheel: needed (installed when missing), then fallbacks the GPU image normally has
NEEDED = {"diffusers": "diffusers", "monai": "monai", "nibabel": "nibabel", "ignite": "pytorch-ignite"}
FALLBACKS = {"huggingface_hub": "huggingface-hub", "safetensors": "safetensors", "regex": "regex"}

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
SD15_TINY = dict(SD15_UNET, block_out_channels=(32, 32, 64, 64), cross_attention_dim=32, norm_num_groups=8,
                 attention_head_dim=2, layers_per_block=1)


class Clock:
    def __init__(self, budget: float):
        self.start, self.budget = time.perf_counter(), budget

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()


# ---- 0. install what is missing --------------------------------------------------------------------
def install(pack: Path) -> dict:
    """pip-install from the pack's wheels, without an index and without dependencies (so torch,
    numpy and whatever the image has stay as they are), only the modules that do not import."""
    report = {}
    wheels = pack / "wheels"
    for group in (FALLBACKS, NEEDED):  # fallbacks first: diffusers' import needs huggingface_hub
        missing = [wheel for module, wheel in group.items() if importlib.util.find_spec(module) is None]
        if not missing:
            continue
        if not wheels.is_dir():
            log.warning("missing %s and no wheels folder at %s: skipped", missing, wheels)
            report.update({w: "missing, no wheels" for w in missing})
            continue
        command = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), "--no-deps",
                   "--disable-pip-version-check", "-q", *missing]
        log.info("installing %s: %s", missing, " ".join(command))
        # our CPU pins (PIP_CONSTRAINT from the Makefile: torch 2.14.1, numpy<2...) must not apply here
        env = {k: v for k, v in os.environ.items() if k not in ("PIP_CONSTRAINT", "PIP_BUILD_CONSTRAINT")}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode:
            log.warning("pip failed (rc %d): %s", done.returncode, (done.stderr or done.stdout)[-2000:])
        importlib.invalidate_caches()
        report.update({w: "installed" if not done.returncode else f"pip rc {done.returncode}" for w in missing})
    for module in (*FALLBACKS, *NEEDED):
        spec = importlib.util.find_spec(module)
        report.setdefault(module, "present" if spec else "MISSING")
    return report


# ---- timing ---------------------------------------------------------------------------------------------
class Timer:
    """CUDA events on a GPU (after warm-up, median of repeats), perf_counter on the CPU."""

    def __init__(self, device, clock: Clock):
        import torch

        self.torch, self.device, self.clock = torch, device, clock
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def once(self, fn) -> float:
        if self.cuda:
            start, end = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def measure(self, fn, warmup: int, repeats: int, max_seconds: float) -> tuple[list[float], float]:
        """(times of the repeats, seconds of the first call). Repeats stop early at ``max_seconds``."""
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        first = time.perf_counter() - start
        for _ in range(max(0, warmup - 1)):
            fn()
        self.sync()
        times, spent = [], 0.0
        for _ in range(repeats):
            elapsed = self.once(fn)
            times.append(elapsed)
            spent += elapsed
            if spent > max_seconds and len(times) >= 3:
                break
        return times, first

    def reset_memory(self):
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gib(self, exclude_bytes: int = 0) -> float | None:
        """Peak allocated memory since ``reset_memory``, less ``exclude_bytes`` held throughout."""
        return (self.torch.cuda.max_memory_allocated() - exclude_bytes) / 1024 ** 3 if self.cuda else None


# ---- the models and their inputs ---------------------------------------------------------------------------
class Model:
    """One network (SD-1.5-sized or compact) with random inputs of its latent shape."""

    def __init__(self, name: str, tiny: bool, device):
        import torch

        self.name, self.device = name, device
        torch.manual_seed(0)
        with torch.device(device):  # initialised where it runs: 860 M random weights in a second
            if name == "sd15":
                from diffusers import UNet2DConditionModel

                from scripts.network.sdfsmis import SDFSMISNet
                from scripts.network.vtct import LatentFeatures

                unet = UNet2DConditionModel(**(SD15_TINY if tiny else SD15_UNET))
                self.channels, self.mask_channels = 4, 4
                self.net = SDFSMISNet(unet, 4, 4, LatentFeatures(4))
                self.side = 8 if tiny else 32  # 256x256 slices through the SD VAE: 32x32 latents
            else:
                from scripts.network.presets import build_segmenter

                segmenter = build_segmenter(preset="tiny" if tiny else "compact", device=device, channels_last=False)
                self.net = segmenter.net
                self.channels = self.mask_channels = 64
                self.side = 8 if tiny else 32
        self.net = self.net.to(device)  # the master copy: each lever runs its own copy of it
        self.parameters = sum(p.numel() for p in self.net.parameters())
        self.bytes = sum(t.numel() * t.element_size() for t in (*self.net.parameters(), *self.net.buffers()))

    def inputs(self, supports: int, queries: int, seed: int = 0) -> dict:
        import torch

        g = torch.Generator(device="cpu").manual_seed(seed)
        side, size = self.side, self.side * 8
        latent = lambda n, c: torch.randn(n, c, side, side, generator=g).to(self.device)  # noqa: E731
        mask = torch.zeros(supports, 1, size, size)
        mask[:, :, size // 4: size // 2, size // 4: 3 * size // 4] = 1
        return dict(support_latent=latent(supports, self.channels), support_mask_latent=latent(supports, self.mask_channels),
                    support_mask=mask.to(self.device), query_latent=latent(queries, self.channels),
                    target=latent(queries, self.mask_channels))


def _forward(net, x: dict, sl: slice | None = None, episodes=None):
    """The network on (a slice of) the inputs: supports ``sl`` and queries ``sl`` paired as episodes,
    or every query served by support 0 (``episodes=None`` and ``sl=None``: inference)."""
    import torch

    if sl is not None:
        return net(x["support_latent"][sl], x["support_mask_latent"][sl], x["support_mask"][sl], x["query_latent"][sl])
    queries = x["query_latent"].shape[0]
    if episodes is None:  # inference: one support pass serves every query
        episode = torch.zeros(queries, dtype=torch.long, device=x["query_latent"].device)
        return net(x["support_latent"][:1], x["support_mask_latent"][:1], x["support_mask"][:1], x["query_latent"], episode)
    return net(x["support_latent"], x["support_mask_latent"], x["support_mask"], x["query_latent"])


def _autocast(device, bf16: bool, graph: bool = False):
    import torch

    if not bf16:
        return contextlib.nullcontext()
    # a captured graph must not reuse autocast's weight casts across replays
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=not graph)


def _prepare(model: Model, lever: dict):
    """A fresh copy of the network with the lever's format, compilation and checkpointing."""
    import torch

    from scripts.network.speed import compile_unet, set_memory_format

    net = copy.deepcopy(model.net)
    if lever.get("channels_last"):
        set_memory_format(net, torch.channels_last)
    if lever.get("checkpointing"):
        net.unet.enable_gradient_checkpointing()
    if lever.get("compile"):
        options = {"dynamic": False}
        if lever["compile"] != "default":
            options["mode"] = lever["compile"]
        if model.device.type == "cpu":
            options["backend"] = "eager" if lever.get("cpu_backend") is None else lever["cpu_backend"]
        if not compile_unet(net, **options):
            raise RuntimeError("torch.compile unavailable here")
    return net


def inference_fn(model: Model, lever: dict, x: dict):
    import torch

    net = _prepare(model, lever).eval()
    queries = x["query_latent"].shape[0]

    def authors():  # one support pass + one query pass per slice, batch 1
        for q in range(queries):
            net(x["support_latent"][:1], x["support_mask_latent"][:1], x["support_mask"][:1], x["query_latent"][q:q + 1])

    def batched():
        _forward(net, x)

    body = authors if lever.get("authors") else batched

    def run():
        with torch.no_grad(), _autocast(model.device, lever.get("bf16"), lever.get("graph")):
            body()

    if lever.get("graph"):
        return _cuda_graph(run)
    return run


def training_fn(model: Model, lever: dict, x: dict):
    import torch
    import torch.nn.functional as F

    net = _prepare(model, lever).train()
    options = {}
    if lever.get("fused"):
        options["fused"] = True
    if lever.get("graph"):
        options.update(fused=True, capturable=True)
    trainable = [p for p in net.parameters() if p.requires_grad]
    if lever.get("adafactor"):  # the product's lean optimizer (scripts/engine/optimizers.py): torch's own
        optimizer = torch.optim.Adafactor(trainable, lr=2e-2, weight_decay=1e-2)  # relative lr, as documented
    else:
        optimizer = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=1e-2, **options)
    episodes = x["query_latent"].shape[0]
    params = [p for p in net.parameters() if p.requires_grad]

    def losses():
        if lever.get("authors"):  # batch 1, gradients accumulated over the episodes (as the authors)
            for e in range(episodes):
                with _autocast(model.device, lever.get("bf16")):
                    loss = F.mse_loss(_forward(net, x, slice(e, e + 1)).float(), x["target"][e:e + 1]) / episodes
                loss.backward()
            return
        with _autocast(model.device, lever.get("bf16"), lever.get("graph")):
            loss = F.mse_loss(_forward(net, x, episodes=True).float(), x["target"])
        loss.backward()

    def step():
        optimizer.zero_grad(set_to_none=not lever.get("graph"))
        losses()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    if lever.get("graph"):
        return _cuda_graph(step)
    return step


def _cuda_graph(fn):
    """Capture ``fn`` (static shapes, inputs in place) once; the returned function replays it."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("CUDA graphs need CUDA")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up off the default stream (allocator, optimizer state, cuBLAS)
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


# ---- the rows ---------------------------------------------------------------------------------------------------
INFERENCE_LEVERS = [
    ("authors: 1 support + 1 query pass per slice, fp32", dict(authors=True), 0),
    ("ours: 1 support pass, queries batched, fp32", dict(), 0),
    ("ours + bf16 autocast", dict(bf16=True), 0),
    ("ours + bf16 + channels_last", dict(bf16=True, channels_last=True), 0),
    ("ours + bf16 + CUDA graph (static shapes)", dict(bf16=True, graph=True), 20),
    ("ours + bf16 + torch.compile", dict(bf16=True, compile="default"), 90),
    ("ours + bf16 + torch.compile max-autotune-no-cudagraphs", dict(bf16=True, compile="max-autotune-no-cudagraphs"), 200),
]
TRAINING_LEVERS = [
    ("authors: batch 1 per episode, gradients accumulated, fp32, AdamW", dict(authors=True), 0),
    ("ours: the episodes batched, fp32, AdamW", dict(), 0),
    ("ours + bf16 autocast", dict(bf16=True), 0),
    ("ours + bf16 + fused AdamW", dict(bf16=True, fused=True), 0),
    ("ours + bf16 + fused + channels_last", dict(bf16=True, fused=True, channels_last=True), 0),
    ("ours + bf16 + fused + checkpointing (recompute-safe K/V bank)", dict(bf16=True, fused=True, checkpointing=True), 0),
    ("ours + bf16 + Adafactor (lean states) + checkpointing", dict(bf16=True, adafactor=True, checkpointing=True), 0),
    ("ours + bf16 + CUDA graph of the whole step (capturable fused AdamW)", dict(bf16=True, graph=True), 30),
    ("ours + bf16 + fused + torch.compile", dict(bf16=True, fused=True, compile="default"), 150),
]


def run_rows(model_name: str, kind: str, levers, args, clock: Clock, device, rows: list, reserve: float,
             models: dict):
    """Time every lever of one (model, kind) that fits the time left; failures are rows too."""
    import torch

    if not levers:
        return
    if clock.left() < reserve:
        log.warning("%s %s: skipped, %.0f s left", model_name, kind, clock.left())
        rows += [dict(model=model_name, kind=kind, lever=label, status=f"skipped: {clock.left():.0f} s left")
                 for label, _, _ in levers]
        return
    if model_name not in models:
        try:
            start = time.perf_counter()
            models[model_name] = Model(model_name, args.tiny, device)
            log.info("%s built (%.1f M parameters) in %.1f s", model_name, models[model_name].parameters / 1e6,
                     time.perf_counter() - start)
        except Exception as error:
            log.error("%s: cannot build (%s)\n%s", model_name, error, traceback.format_exc())
            models[model_name] = None
            rows.append(dict(model=model_name, kind=kind, lever="build", status=f"failed: {error}"))
    model = models[model_name]
    if model is None:
        return
    timer = Timer(device, clock)
    queries = args.slices if kind == "inference" else args.episodes
    supports = 1 if kind == "inference" else args.episodes
    x = model.inputs(supports, queries)
    for label, lever, minimum in levers:
        row = dict(model=model_name, kind=kind, lever=label, params_m=round(model.parameters / 1e6, 1))
        rows.append(row)
        needs_cuda = lever.get("graph") or (lever.get("compile") and not args.cpu_compile)
        if needs_cuda and device.type != "cuda":
            row["status"] = "skipped: needs CUDA"
            log.info("%s %s / %s: skipped (needs CUDA)", model_name, kind, label)
            continue
        if lever.get("compile") and device.type == "cpu":
            lever = dict(lever, cpu_backend=args.cpu_compile)
        if clock.left() < reserve + minimum * (0.05 if args.tiny else 1):
            row["status"] = f"skipped: {clock.left():.0f} s left"
            log.info("%s %s / %s: skipped, %.0f s left", model_name, kind, label, clock.left())
            continue
        fn = None
        try:
            timer.reset_memory()
            start = time.perf_counter()
            fn = (inference_fn if kind == "inference" else training_fn)(model, lever, x)
            setup = time.perf_counter() - start
            if args.tiny:  # a wiring check: one warm call, one timed
                warmup, repeats = 1, 1
            else:
                warmup, repeats = (2, 3) if lever.get("authors") else (5, args.repeats)
            times, first = timer.measure(fn, warmup=warmup, repeats=repeats,
                                         max_seconds=min(20.0, max(2.0, clock.left() / 20)))
            row.update(status="ok", median_ms=1000 * statistics.median(times), min_ms=1000 * min(times),
                       repeats=len(times), first_call_s=round(first + setup, 2), peak_gib=timer.peak_gib(model.bytes))
            log.info("%s %s / %s: median %.2f ms (min %.2f, %d repeats), first call %.1f s, peak %s GiB",
                     model_name, kind, label, row["median_ms"], row["min_ms"], len(times), row["first_call_s"],
                     f"{row['peak_gib']:.2f}" if row["peak_gib"] is not None else "-")
        except Exception as error:  # a lever that fails is a row that says so, never the end
            row["status"] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"
            log.error("%s %s / %s failed: %s\n%s", model_name, kind, label, error, traceback.format_exc())
        finally:
            del fn
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.empty_cache()


# ---- 3. accuracy jobs ------------------------------------------------------------------------------------------
def accuracy(args, clock: Clock, work: Path, out: Path) -> dict:
    # no `make setup` on the GPU machine: the paths its editable install would give, here and to the runner
    paths = [str(BUNDLE), str(REPO)]
    sys.path[:0] = [path for path in paths if path not in sys.path]
    runner_env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [*paths, os.environ.get("PYTHONPATH")])))
    try:
        importlib.import_module("tools.runner")
    except Exception as error:
        log.info("accuracy jobs skipped: tools.runner does not import here (%s)", error)
        return {"status": f"skipped: no runner ({type(error).__name__})"}
    shared = work / "shared"
    data = Path(args.pack) / "data" / "chaost2.npz"
    if not data.is_file():
        log.info("accuracy jobs skipped: no data pack at %s (bench/gpu_pack.sh makes it)", data)
        return {"status": "skipped: no data pack"}
    try:
        sys.path.insert(0, str(REPO / "bench"))
        from gpu_data import unpack

        start = time.perf_counter()
        files = unpack(data, shared / "data" / "CHAOST2")
        weights = Path(args.pack) / "weights"
        if weights.is_dir():
            shutil.copytree(weights, shared / "weights", dirs_exist_ok=True)
        log.info("unpacked %d data files and the weights into %s in %.1f s", len(files), shared,
                 time.perf_counter() - start)
    except Exception as error:
        log.error("accuracy jobs skipped: cannot unpack the data (%s)\n%s", error, traceback.format_exc())
        return {"status": f"failed: unpack: {error}"}
    common = ["--home", str(work / "runner_home"), "--results", str(work / "accuracy"), "--shared", str(shared)]
    listing = subprocess.run([sys.executable, "-m", "tools.runner", "list", "--table", args.accuracy_table,
                              *(["--only", args.accuracy_only] if args.accuracy_only else []), *common],
                             cwd=REPO, env=runner_env, capture_output=True, text=True, timeout=120)
    queued = [line for line in listing.stdout.splitlines() if line.strip()]
    log.info("accuracy jobs queued (%s, %s): %s", args.accuracy_table, args.accuracy_only or "all", queued or listing.stderr[-500:])
    left = clock.left() - 20
    if args.tiny or left < 60:
        reason = "tiny run: listing only" if args.tiny else f"{left:.0f} s left"
        log.info("accuracy jobs not run (%s)", reason)
        return {"status": f"not run: {reason}", "queued": queued}
    command = [sys.executable, "-m", "tools.runner", "run", "--table", args.accuracy_table, "--max-jobs", "1",
               *(["--only", args.accuracy_only] if args.accuracy_only else []), *common]
    log.info("running accuracy jobs for at most %.0f s: %s", left, " ".join(command))
    runner_log = out / "accuracy_runner.log"
    with open(runner_log, "w") as stream:
        process = subprocess.Popen(command, cwd=REPO, env=runner_env, stdout=stream, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            rc = process.wait(timeout=left)
            status = f"runner finished, rc {rc}"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)  # the runner keeps its checkpoints; jobs resume elsewhere
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            status = "stopped at the end of the budget"
    results = work / "accuracy"
    finished = sorted(str(p.relative_to(results)) for p in results.rglob("*.json")) if results.is_dir() else []
    with tarfile.open(out / "accuracy.tar.gz", "w:gz") as archive:
        if results.is_dir():
            archive.add(results, arcname="accuracy")
        logs = work / "runner_home" / "logs"
        if logs.is_dir():
            archive.add(logs, arcname="runner_logs")
    log.info("accuracy: %s; result files: %s", status, finished or "none")
    return {"status": status, "queued": queued, "results": finished}


# ---- 4. the report ----------------------------------------------------------------------------------------------
def table(rows: list, meta: dict) -> str:
    lines = [f"## GPU benchmark: {meta['device']} ({meta['when']})", "",
             f"torch {meta['torch']}, Python {meta['python']}; {meta['note']}", "",
             "| model | what | path / levers | median | vs plain | min | peak GPU memory | first call (compile, capture) | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ok = row.get("status") == "ok"
        lines.append("| {model}{params} | {kind} | {lever} | {median} | {speed} | {low} | {peak} | {first} | {status} |".format(
            model=row["model"], params=f" ({row['params_m']} M)" if "params_m" in row else "", kind=row["kind"], lever=row["lever"],
            median=f"{row['median_ms']:.2f} ms" if ok else "-", speed=f"{row['speedup']:.2f}x" if ok else "-",
            low=f"{row['min_ms']:.2f} ms" if ok else "-",
            peak=f"{row['peak_gib']:.2f} GiB" if ok and row.get("peak_gib") is not None else "-",
            first=f"{row['first_call_s']:.1f} s" if ok else "-", status=row.get("status", "")))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for the log, the table and the accuracy results")
    parser.add_argument("--pack", default=str(REPO / ".gpu_pack"), help="wheels/, data/, weights/ (bench/gpu_pack.sh)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for everything (default 330; tiny 60)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (automatic without CUDA)")
    parser.add_argument("--slices", type=int, default=None, help="query slices of the inference volume (40)")
    parser.add_argument("--episodes", type=int, default=None, help="episodes of a training step (8)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--models", default="sd15,compact")
    parser.add_argument("--cpu-compile", default=None, help="torch.compile backend to try on the CPU (e.g. eager)")
    parser.add_argument("--accuracy-table", default="chaost2_s1")
    parser.add_argument("--accuracy-only", default="sdfsmis*liver-spleen*1shot*fold0",
                        help="runner --only pattern ('' = the whole table)")
    parser.add_argument("--no-install", action="store_true")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        handlers=[logging.FileHandler(out / "gpu_bench.log", mode="w"), logging.StreamHandler(sys.stdout)],
                        force=True)
    import torch

    cuda = torch.cuda.is_available()
    args.tiny = args.tiny or not cuda
    clock = Clock(args.budget if args.budget is not None else (60 if args.tiny else 330))
    args.slices = args.slices or (3 if args.tiny else 40)
    args.episodes = args.episodes or (2 if args.tiny else 8)
    if args.tiny:
        args.repeats = min(args.repeats, 3)
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:  # a wiring check: one thread stays quick on a CPU that other processes share
        torch.set_num_threads(1)
    name = torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    log.info("gpu_bench on %s, torch %s, python %s, budget %.0f s, tiny %s", name, torch.__version__,
             platform.python_version(), clock.budget, args.tiny)
    installed = {} if args.no_install else install(Path(args.pack))
    log.info("packages: %s", installed)
    sys.path.insert(0, str(BUNDLE))

    rows: list = []
    plan = []
    for model_name in [m.strip() for m in args.models.split(",") if m.strip()]:
        plan += [(model_name, "inference", INFERENCE_LEVERS), (model_name, "training", TRAINING_LEVERS)]
    # the levers that cost setup time (capture, compilation) of every model come after the cheap
    # ones of all models, the cheapest first, so that a short budget still gives every model a row
    cheap = lambda levers: [lv for lv in levers if lv[2] == 0]  # noqa: E731
    dear = lambda levers: [lv for lv in levers if lv[2] > 0]  # noqa: E731
    reserve = 5 if args.tiny else 45
    models: dict = {}
    for model_name, kind, levers in plan:
        run_rows(model_name, kind, cheap(levers), args, clock, device, rows, reserve, models)
    for minimum in sorted({lv[2] for _, _, levers in plan for lv in dear(levers)}):  # graphs, then compile
        for model_name, kind, levers in plan:
            run_rows(model_name, kind, [lv for lv in dear(levers) if lv[2] == minimum], args, clock, device, rows,
                     reserve, models)
    models.clear()
    rank = {(m, k, lever[0]): (i, j) for i, (m, k, levers) in enumerate(plan) for j, lever in enumerate(levers)}
    rows.sort(key=lambda r: rank.get((r["model"], r["kind"], r["lever"]), (len(plan), 0)))
    for model_name, kind, _ in plan:
        _relative_to_plain(rows, model_name, kind)

    meta = dict(device=name, when=time.strftime("%Y-%m-%d %H:%M"), torch=torch.__version__,
                python=platform.python_version(),
                note=(f"{args.slices}-slice inference, {args.episodes}-episode training step; 'vs plain' is against "
                      "the first row of each block (the authors' path); CUDA events after warm-up."
                      + (" TINY SIZES: wiring check, not a benchmark." if args.tiny else "")))
    (out / "gpu_bench.md").write_text(table(rows, meta))
    (out / "gpu_bench.json").write_text(json.dumps(dict(meta=meta, packages=installed, rows=rows), indent=1))
    log.info("benchmark table written to %s after %.0f s", out / "gpu_bench.md", clock.elapsed())

    with tempfile.TemporaryDirectory(prefix="gpu_bench_") as tmp:
        try:
            outcome = accuracy(args, clock, Path(tmp), out)
        except Exception as error:
            log.error("accuracy step failed: %s\n%s", error, traceback.format_exc())
            outcome = {"status": f"failed: {error}"}
    summary = json.loads((out / "gpu_bench.json").read_text())
    summary["accuracy"] = outcome
    (out / "gpu_bench.json").write_text(json.dumps(summary, indent=1))
    with open(out / "gpu_bench.md", "a") as stream:
        stream.write(f"\nAccuracy jobs: {outcome.get('status')}; results: {outcome.get('results', [])}\n")
    log.info("done in %.0f s", clock.elapsed())
    print((out / "gpu_bench.md").read_text())
    return 0


def _relative_to_plain(rows: list, model_name: str, kind: str) -> None:
    block = [r for r in rows if r["model"] == model_name and r["kind"] == kind and r.get("status") == "ok"]
    plain = next((r for r in block if r["lever"].startswith("authors")), None)
    for row in block:
        if plain is not None:
            row["speedup"] = plain["median_ms"] / row["median_ms"]


if __name__ == "__main__":
    sys.exit(main())
