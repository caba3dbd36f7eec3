"""CPU speed and memory of SD-FSMIS: the plain path and ours side by side, measured in one run.

Prints ONE markdown table and writes it to ``bench/results/cpu_<date>.md`` (issue #10):

- a  a few-shot call of the MONAI Label task, end to end (support resolution, loading, network,
     post-processing, inverse resampling, NIfTI written), on a 40-slice 256x256 phantom with one
     organ drawn on 3 slices; ``compact`` preset, pixel-unshuffle autoencoder; also with 4 organs;
- b  the same with TAEF2 (its 40 slices encoded on the call), beside its FLOP floor;
- c  a repeated call on the same image (latents cached by content), unshuffle and TAEF2;
- d  the dataset latent cache (``LatentCache``), TAEF2 encode time per slice;
- e  a ``compact`` training iteration of 8 episodes as the trainer runs it (latent gather, latent
     augmentation, support + query pass, MSE + Dice, backward, clipping, AdamW, EMA);
     optionally (``--compile``) the same with the U-Net under ``torch.compile``, compile time counted;
- f  peak RSS of a bundle training process and of the MONAI Label task over 20 calls (RSS after
     call 10 and call 20: no growth).

"Plain" is the product as it ran before the levers (``bench/plain.py``); "ours" is the product
as it runs now. Both run in the same process, interleaved call by call, so a busy machine slows
both alike; each cell is the fastest repeat (the median beside it). Floors are FLOPs counted
with ``torch.utils.flop_counter`` over the sgemm rate measured on this machine at the start.

On a shared machine, ``--pause-pid PID`` (or ``BENCH_PAUSE_PIDS``) stops another process with
SIGSTOP for the few seconds of each timed call and always resumes it (``bench/quiet.py``).

    .venv/bin/python bench/bench_cpu.py [--repeats 5] [--compile] [--skip f] [--pause-pid PID]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
for path in (REPO / "bench", REPO / "monailabel_app"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
os.environ.setdefault("MPLCONFIGDIR", str(REPO / ".cache" / "matplotlib"))

from quiet import paused, pids_from  # noqa: E402

SHARED = Path(os.environ.get("SDFSMIS_SHARED", REPO.parent / "shared"))
TAEF2 = SHARED / "weights" / "taef2"
CHAOST2 = SHARED / "data" / "CHAOST2"
GIB = 1024 ** 3


# ---- measuring -------------------------------------------------------------------------------------
class Bench:
    def __init__(self, pids, repeats: int):
        self.pids, self.repeats = pids, repeats
        self.rows: list[dict] = []

    def time_once(self, fn) -> float:
        with paused(self.pids):
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start

    def side_by_side(self, plain, ours, repeats: int | None = None, warmup: int = 1,
                     before=None) -> tuple[list[float], list[float]]:
        """``plain``/``ours``: (context factory, fn). Interleaved repeats; ``before`` runs untimed
        before every timed call (e.g. clearing a cache)."""
        times = {"plain": [], "ours": []}
        for index in range(warmup + (repeats or self.repeats)):
            for name, (context, fn) in (("plain", plain), ("ours", ours)):
                with context():
                    if before:
                        before()
                    elapsed = self.time_once(fn)
                if index >= warmup:
                    times[name].append(elapsed)
        return times["plain"], times["ours"]

    def add(self, key: str, what: str, plain=None, ours=None, goal: str = "", note: str = "", unit: str = "s",
            scale: float = 1.0):
        self.rows.append(dict(key=key, what=what, plain=_cell(plain, unit, scale), ours=_cell(ours, unit, scale),
                              goal=goal, note=note, plain_raw=plain, ours_raw=ours))
        print(f"[{key}] {what}: plain {_cell(plain, unit, scale)} | ours {_cell(ours, unit, scale)} | {note}", flush=True)


def _cell(value, unit: str, scale: float) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return f"{value * scale:.3g} {unit}"
    middle, low = statistics.median(value) * scale, min(value) * scale
    return f"**{low:.3g} {unit}** (median {middle:.3g})" if len(value) > 1 else f"{low:.3g} {unit}"


def best(values) -> float:
    """The fastest repeat: on a machine other processes share, the figure closest to idle cores."""
    return min(values)


def sgemm_rate(pids) -> float:
    """fp32 matrix-multiply GFLOP/s of this process's threads: the practical peak for floors."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = float("inf")
    for _ in range(10):
        with paused(pids):
            start = time.perf_counter()
            for _ in range(4):
                a @ b
            best = min(best, (time.perf_counter() - start) / 4)
    return 2 * 2048 ** 3 / best / 1e9


def count_flops(fn, *segmenters) -> float:
    """FLOPs of ``fn`` as torch's counter sees them: through the eager encoders (a TorchScript-frozen
    graph runs kernels the counter does not see)."""
    from torch.utils.flop_counter import FlopCounterMode

    fast = [s.fast_encoder for s in segmenters]
    for segmenter in segmenters:
        segmenter.fast_encoder = None
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        for segmenter, encoder in zip(segmenters, fast):
            segmenter.fast_encoder = encoder
    return counter.get_total_flops()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def rss_gib(pid="self") -> dict:
    """Current (VmRSS) and peak (VmHWM) resident memory of a process, GiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            out[line.split(":")[0]] = int(line.split()[1]) * 1024 / GIB
    return out


# ---- the rows ------------------------------------------------------------------------------------------
def monailabel_rows(bench: Bench, work: Path, args) -> None:
    import torch

    from bench_monailabel_latency import make_call, prepare_call
    from lib.infers.fewshot import FewShotInfer
    from lib.served_model import FewShotModel
    from plain import plain_path

    def task_for(checkpoint):
        task = FewShotInfer(FewShotModel(checkpoint), device="cpu")
        return task, task.model.get("cpu")

    request, checkpoint = prepare_call(work, depth=args.depth, organs=1)
    request4, _ = prepare_call(work, depth=args.depth, organs=4)
    task, segmenter = task_for(checkpoint)
    plain = lambda: plain_path(segmenter)  # noqa: E731
    ours = contextlib.nullcontext
    clear = segmenter.latent_cache.clear
    call, call4 = make_call(task, request), make_call(task, request4)
    rate = bench.sgemm_gflops

    flops = count_flops(lambda: (clear(), call()), segmenter)
    p, o = bench.side_by_side((plain, call), (ours, call), before=clear)
    bench.add("a", f"few-shot call, MONAI Label task, compact + unshuffle, 1 organ on 3 slices, {args.depth}x256x256",
              p, o, "<= 3 s", f"{flops / 1e9:.0f} GFLOP: floor {flops / 1e9 / rate:.2f} s")
    flops4 = count_flops(lambda: (clear(), call4()), segmenter)
    p, o = bench.side_by_side((plain, call4), (ours, call4), before=clear)
    bench.add("a4", "the same, 4 organs drawn (4 one-way passes)", p, o, "",
              f"{flops4 / 1e9:.0f} GFLOP: floor {flops4 / 1e9 / rate:.2f} s")
    p, o = bench.side_by_side((plain, call), (ours, call))
    bench.add("c", "repeated call on the same image, compact + unshuffle", p, o, "<= 1 s")

    # segment_files alone: the seam without the app's own work (support resolution, NIfTI writing)
    from scripts.engine.inferer import segment_files

    seam = lambda: segment_files(segmenter, request["image"], request["label"], request["image"])  # noqa: E731
    p, o = bench.side_by_side((plain, seam), (ours, seam), before=clear)
    bench.add("a'", "row a without the app: `segment_files` (load, segment, map back)", p, o)

    if not (TAEF2 / "taef2_encoder.pth").is_file():
        bench.add("b", "TAEF2 rows skipped", note=f"no TAEF2 weights at {TAEF2}")
        return
    request_t, checkpoint_t = prepare_call(work, depth=args.depth, organs=1, autoencoder="taef2",
                                           autoencoder_path=str(TAEF2))
    task_t, segmenter_t = task_for(checkpoint_t)
    call_t, clear_t = make_call(task_t, request_t), segmenter_t.latent_cache.clear
    plain_t = lambda: plain_path(segmenter_t)  # noqa: E731
    flops_t = count_flops(lambda: (clear_t(), call_t()), segmenter_t)
    encode_flops = count_flops(lambda: segmenter_t.encode_images(torch.zeros(1, 1, 256, 256)), segmenter_t)
    p, o = bench.side_by_side((plain_t, call_t), (ours, call_t), repeats=max(2, bench.repeats // 2), before=clear_t)
    bench.add("b", "few-shot call as a, TAEF2 autoencoder (its 40 slices encoded on the call)", p, o, "",
              f"{flops_t / 1e9:.0f} GFLOP ({encode_flops / 1e9:.1f} per slice encode): floor "
              f"{flops_t / 1e9 / rate:.1f} s at the measured sgemm rate")
    p, o = bench.side_by_side((plain_t, call_t), (ours, call_t))
    bench.add("c-t", "repeated call on the same image, TAEF2", p, o, "<= 1 s",
              "plain re-encodes the support slices on every call")

    # d: the dataset latent cache, TAEF2, per slice
    from scripts.data.latent_cache import LatentCache

    volume = SimpleNamespace(pid="1", image=_phantom_slices(request_t["image"], args.cache_slices))
    encode = lambda: LatentCache(segmenter_t.encode_images, "taef2").add_volumes([volume])  # noqa: E731
    p, o = bench.side_by_side((plain_t, encode), (ours, encode), repeats=max(2, bench.repeats // 2))
    n = len(volume.image)
    floor = encode_flops / 1e9 / rate
    bench.add("d", f"latent cache, TAEF2 encode per slice ({n} slices per volume)", [t / n for t in p],
              [t / n for t in o], "<= 0.2 s/slice",
              f"{encode_flops / 1e9:.1f} GFLOP/slice: floor {floor:.3f} s at {rate:.0f} GFLOP/s sgemm; "
              f"ours runs at {encode_flops / 1e9 / (best(o) / n):.0f} GFLOP/s")
    if "avx512_bf16" in cpu_flags() or "amx_bf16" in cpu_flags():
        reference = LatentCache(segmenter_t.encode_images, "taef2").add_volumes([volume]).latents["1"]

        def encode_bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return LatentCache(segmenter_t.encode_images, "taef2").add_volumes([volume]).latents["1"]

        low = encode_bf16().float()
        error = float((low - reference).norm() / reference.norm())
        times = [bench.time_once(encode_bf16) / n for _ in range(max(2, bench.repeats // 2))]
        bench.add("d-bf16", "d under bf16 autocast (not used: changes the numbers; this CPU has avx512_bf16)",
                  None, times, "", f"latents' relative error {error:.1e} against fp32")


def _phantom_slices(image_path: str, count: int):
    from scripts.data.volumes import load_volume

    image = load_volume(image_path).image
    start = max(0, (len(image) - count) // 2)
    return image[start: start + count]


def training_rows(bench: Bench, work: Path, args) -> None:
    import torch
    from monai.inferers import SimpleInferer

    from bench_monailabel_latency import prepare_call
    from plain import authors_training_step
    from scripts.data.augment import LatentMaskAffine
    from scripts.data.latent_cache import LatentCache
    from scripts.data.volumes import load_volume
    from scripts.engine.training import EpisodeIteration, EpisodeObjective, build_ema, parameter_groups
    from scripts.network.episode_loss import EpisodeLoss
    from scripts.network.presets import build_segmenter
    from scripts.network.speed import adamw_options, default_channels_last

    request, _ = prepare_call(work, depth=args.depth, organs=1)
    volume = load_volume(request["image"], Path(request["image"]).with_name("label_1.nii.gz"))
    episodes = 8
    zs = [z for z in range(volume.depth) if (volume.label[z] == 1).any()]
    support_z = torch.as_tensor([zs[(3 * i) % len(zs)] for i in range(episodes)])
    query_z = torch.as_tensor([zs[(3 * i + 2) % len(zs)] for i in range(episodes)])
    mask = lambda z: torch.as_tensor(volume.label[z] == 1, dtype=torch.float32)[:, None]  # noqa: E731
    batch = {"shots": 1, "support_pid": [volume.pid] * episodes, "support_z": support_z,
             "support_mask": mask(support_z), "query_pid": [volume.pid] * episodes, "query_z": query_z,
             "query_mask": mask(query_z)}

    def trainer(levers: bool, compiled: bool = False, authors: bool = False):
        torch.manual_seed(0)
        # as train.yaml builds it (ours), or as before the levers (plain)
        segmenter = build_segmenter(preset="compact", channels_last=levers and default_channels_last("cpu", True),
                                    compile=compiled)
        if not levers:
            segmenter.set_channels_last(False)
        cache = LatentCache(segmenter.encode_images, "unshuffle").add_volumes([volume])
        options = adamw_options("cpu") if levers else {}
        optimizer = torch.optim.AdamW(parameter_groups(segmenter, 2e-4, 1e-3), weight_decay=0.01, **options)
        engine = SimpleNamespace(state=SimpleNamespace(device=torch.device("cpu")),
                                 network=EpisodeObjective(segmenter), optimizer=optimizer, inferer=SimpleInferer(),
                                 loss_function=EpisodeLoss())
        iteration = EpisodeIteration(cache, LatentMaskAffine().set_random_state(seed=0), build_ema(segmenter))
        if authors:
            return lambda: authors_training_step(iteration, engine, batch)
        return lambda: iteration(engine, batch)

    plain_step, our_step = trainer(False), trainer(True)
    authors_step = trainer(False, authors=True)
    a, o2 = bench.side_by_side((contextlib.nullcontext, authors_step), (contextlib.nullcontext, our_step), warmup=1,
                               repeats=bench.repeats)
    bench.add("e-authors", "e as the authors' code trains: one episode per forward (batch 1, its own support "
              "pass), gradients accumulated over the 8", a, o2, "half of plain",
              f"ours {best(a) / best(o2):.1f}x faster; the same loss and update")
    flops = count_flops(plain_step)
    p, o = bench.side_by_side((contextlib.nullcontext, plain_step), (contextlib.nullcontext, our_step), warmup=2,
                              repeats=2 * bench.repeats)
    bench.add("e", "compact training iteration, 8 episodes (support + query + AdamW, as the trainer runs it)",
              p, o, "half of plain", f"{flops / 1e9:.0f} GFLOP: floor {flops / 1e9 / bench.sgemm_gflops:.2f} s; "
              f"ours runs at {flops / 1e9 / best(o):.0f} GFLOP/s")
    if "avx512_bf16" in cpu_flags() or "amx_bf16" in cpu_flags():
        bf16_step = trainer(True)

        def autocast_step():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return bf16_step()

        autocast_step()
        times = [bench.time_once(autocast_step) for _ in range(2 * bench.repeats)]
        bench.add("e-bf16", "e under bf16 autocast (not used: changes the numbers; the CPU tables are fp32)",
                  None, times, "", "this CPU has avx512_bf16; the Zen 2 CI machines of docs/DESIGN.md do not")
    if args.compile:
        # a fresh inductor cache: the compilation is timed, not a re-use of an earlier run's kernels
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_", dir=work)
        compiled = trainer(True, compiled=True)
        start = time.perf_counter()
        compiled()
        compile_seconds = time.perf_counter() - start
        compiled()
        times = [bench.time_once(compiled) for _ in range(2 * bench.repeats)]
        saved = best(o) - best(times)
        pays_after = compile_seconds / saved if saved > 0 else float("inf")
        bench.add("e-compile", "e with the U-Net under torch.compile (inductor), not used by default",
                  None, times, "", f"first step (compilation) {compile_seconds:.0f} s; pays back after "
                  f"{pays_after:.0f} steps" if saved > 0 else f"first step {compile_seconds:.0f} s; no gain")


def memory_rows(bench: Bench, work: Path, args) -> None:
    """Children, so that each figure is one process's own (this one holds every model above)."""
    for mode in ("plain", "ours"):
        out = subprocess.run([sys.executable, __file__, "--child", "monailabel", "--mode", mode,
                              "--depth", str(args.depth), "--work", str(work)],
                             capture_output=True, text=True, timeout=1800)
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if out.returncode or not lines:
            bench.add("f", f"MONAI Label task memory ({mode})", note=f"child failed: {out.stderr[-300:]}")
            return
        setattr(bench, f"rss_{mode}", json.loads(lines[-1]))
    p, o = bench.rss_plain, bench.rss_ours
    cell = lambda r: f"{r['rss_10']:.2f} -> {r['rss_20']:.2f} GiB (peak {r['peak']:.2f})"  # noqa: E731
    bench.add("f-app", "MONAI Label task: RSS after call 10 -> call 20 (peak), compact + unshuffle", cell(p), cell(o),
              "<= 3 GiB, no growth", f"growth 10->20: plain {1024 * (p['rss_20'] - p['rss_10']):+.0f} MiB, "
              f"ours {1024 * (o['rss_20'] - o['rss_10']):+.0f} MiB")

    dataset = "chaost2" if (CHAOST2 / "chaos_MR_T2_normalized").is_dir() else "phantom"
    run = work / "train_run"
    # the bundle's own command, run by a wrapper that prints the process's peak RSS as it exits (a
    # child's rusage would count this process's pages up to the exec)
    wrapper = ("import atexit, runpy, sys; atexit.register(lambda: print('VmHWM', [l for l in open('/proc/self/status')"
               " if l.startswith('VmHWM')][0].split()[1], flush=True)); sys.argv = ['monai.bundle'] + sys.argv[1:]; "
               "runpy.run_module('monai.bundle', run_name='__main__')")
    command = [sys.executable, "-c", wrapper, "run", "training", "--config_file", "configs/train.yaml",
               "--dataset", dataset, "--steps", str(args.train_steps), "--steps_per_epoch", str(args.train_steps),
               "--val_interval", "1", "--ckpt_interval", "100000", "--run_name", "bench_rss",
               "--output_dir", str(run), "--cache_dir", str(work / "latents")]
    command += ["--dataset_dir", str(CHAOST2)] if dataset == "chaost2" else ["--dataset_dir", str(work / "phantoms")]
    start = time.perf_counter()
    out = subprocess.run(command, cwd=REPO / "bundle", capture_output=True, text=True, timeout=3600)
    peaks = [int(line.split()[1]) * 1024 / GIB for line in out.stdout.splitlines() if line.startswith("VmHWM")]
    if out.returncode or not peaks:
        bench.add("f-train", "bundle training process", note=f"failed: {out.stderr[-300:]}")
    else:
        bench.add("f-train", f"bundle training process, {dataset} (all volumes + supervoxels), compact + unshuffle, "
                  f"{args.train_steps} steps + one validation", None, f"{peaks[-1]:.2f} GiB peak", "<= 3 GiB",
                  f"{time.perf_counter() - start:.0f} s wall")
    background = _background_training()
    if background:
        pid, rss, command_line = background
        bench.add("f-bg", "the background training job on this machine (its own peak so far)", None,
                  f"{rss['VmHWM']:.2f} GiB peak", "<= 3 GiB", command_line)


def _background_training():
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "monai.bundle run training" in command and "bench_rss" not in command and "pytest" not in command:
            try:
                short = " ".join(a for a in command.split() if not a.startswith("/"))[-160:]
                return int(entry.name), rss_gib(entry.name), f"pid {entry.name}: `...{short}`"
            except OSError:
                continue
    return None


def child_monailabel(args) -> None:
    """20 calls of the task in a fresh process; prints its RSS after calls 10 and 20 and its peak.
    Odd calls start from an empty latent cache (a new image's path), even ones repeat."""
    from bench_monailabel_latency import make_call, prepare_call
    from lib.infers.fewshot import FewShotInfer
    from lib.served_model import FewShotModel
    from plain import plain_path

    request, checkpoint = prepare_call(Path(args.work), depth=args.depth, organs=1)
    task = FewShotInfer(FewShotModel(checkpoint), device="cpu")
    segmenter = task.model.get("cpu")
    call = make_call(task, request)
    context = (lambda: plain_path(segmenter)) if args.mode == "plain" else contextlib.nullcontext
    rss = {}
    with context():
        for index in range(1, 21):
            if index % 2:
                segmenter.latent_cache.clear()
            call()
            if index in (10, 20):
                rss[f"rss_{index}"] = rss_gib()["VmRSS"]
    rss["peak"] = rss_gib()["VmHWM"]
    print(json.dumps(rss))


# ---- the table ---------------------------------------------------------------------------------------
def table(bench: Bench, header: str) -> str:
    lines = [header, "", "| # | measurement | plain path | ours | goal | floor / note |", "|---|---|---|---|---|---|"]
    for row in bench.rows:
        lines.append(f"| {row['key']} | {row['what']} | {row['plain']} | {row['ours']} | {row['goal']} | {row['note']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--depth", type=int, default=40)
    parser.add_argument("--cache-slices", type=int, default=16, help="slices of the volume row d encodes")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compilation)")
    parser.add_argument("--skip", default="", help="comma-separated groups to skip: app, train, memory")
    parser.add_argument("--pause-pid", default=None, help="pids to SIGSTOP while timing (default: $BENCH_PAUSE_PIDS)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    parser.add_argument("--child", choices=["monailabel"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="ours", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "monailabel":
        return child_monailabel(args)

    import torch

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    bench = Bench(pids_from(args.pause_pid), args.repeats)
    bench.sgemm_gflops = sgemm_rate(bench.pids)
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="bench_cpu_"))
    load = os.getloadavg()
    if "app" not in skip:
        monailabel_rows(bench, work, args)
    if "train" not in skip:
        training_rows(bench, work, args)
    if "memory" not in skip:
        memory_rows(bench, work, args)
    flags = cpu_flags()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE"
    header = (
        f"## CPU benchmark, {datetime.date.today().isoformat()}: plain path vs ours (`bench/bench_cpu.py`)\n\n"
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores ({isa}{', avx512_bf16' if 'avx512_bf16' in flags else ''}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32; measured sgemm "
        f"{bench.sgemm_gflops:.0f} GFLOP/s. Load average at start {load[0]:.2f}, at end {os.getloadavg()[0]:.2f}"
        f"{'; paused pid(s) ' + ','.join(map(str, bench.pids)) + ' while timing' if bench.pids else ''}. "
        f"Cells: the fastest of {args.repeats} or more interleaved repeats, in bold (the figure closest to idle "
        f"cores on this shared machine), the median beside it. Wall time {time.time() - started:.0f} s."
    )
    text = table(bench, header)
    print("\n" + text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"cpu_{datetime.date.today().isoformat()}.md").write_text(text)


if __name__ == "__main__":
    main()
