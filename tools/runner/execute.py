"""Run a table's jobs: train (or resume), evaluate, and write one result file per finished job.

A job is finished when its result file exists and records the job's configuration; re-running a
table skips those and carries on with the rest. Training resumes by itself: the training workflow
restarts from the newest `<output_dir>/checkpoints/checkpoint_*.pt` of the job's run folder, which
lives outside the work tree (`jobs.Workspace`). A run folder's `runner_training.json` records that
its training ended (with the sha256 of the model file it wrote), so later jobs that share the run
go straight to evaluation. Evaluation always starts afresh in an emptied folder, and reads the
final EMA weights (`model.pt`): nothing is selected on the test fold.

The commands go through a ``CommandRunner`` (argv, cwd, log path, env -> return code), so the
runner's logic can be tested without minutes of subprocesses.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .jobs import REPO, Job, Workspace, evaluate_command, train_command

__all__ = ["run_table", "run_job", "run_subprocess", "load_result", "job_lock_holder", "training_progress",
           "failure_path", "record_failure", "RESULT_SCHEMA", "JobFailed"]

RESULT_SCHEMA = 1
TRAINING_MARK = "runner_training.json"
CommandRunner = Callable[[Sequence[str], Path, Path, dict], int]
_children: set[subprocess.Popen] = set()
_children_lock = threading.Lock()
_stopping = threading.Event()


class JobFailed(RuntimeError):
    pass


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def run_subprocess(argv: Sequence[str], cwd: Path, log: Path, env: dict) -> int:
    """Run one bundle command, its output appended to ``log``; returns its exit status."""
    log.parent.mkdir(parents=True, exist_ok=True)
    if _stopping.is_set():
        return -signal.SIGTERM
    with open(log, "a") as out:
        out.write(f"\n[{_now()}] $ {' '.join(map(str, argv))}\n")
        out.flush()
        proc = subprocess.Popen(list(map(str, argv)), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        with _children_lock:
            _children.add(proc)
        try:
            return proc.wait()
        finally:
            with _children_lock:
                _children.discard(proc)


def stop_children(*_):
    """SIGTERM handler of a runner: end the commands it started, start no more, exit (the
    checkpoints stay, so the next run resumes)."""
    _stopping.set()
    with _children_lock:
        for proc in list(_children):
            proc.terminate()
    raise SystemExit(143)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _numbers_keys(config: dict | None, ignore: tuple[str, ...] = ("label",)) -> dict:
    """The keys that decide a result's numbers: the row's display label may change without
    invalidating results, and a key that does not apply (None) reads as absent, so adding one
    keeps older results valid."""
    return {k: v for k, v in (config or {}).items() if k not in ignore and v is not None}


def _complete_for(result, job: Job, ignore: tuple[str, ...] = ("label",)) -> bool:
    """Whether ``result`` is a finished result with ``job``'s numbers keys and modes."""
    if not isinstance(result, dict) or result.get("schema") != RESULT_SCHEMA or result.get("status") != "complete":
        return False
    wanted = _numbers_keys(json.loads(json.dumps(job.config(), default=str)), ignore)
    return _numbers_keys(result.get("config"), ignore) == wanted and set(result.get("modes", {})) == set(job.modes)


def load_result(job: Job, ws: Workspace) -> dict | None:
    """The job's result if it is finished *for this configuration*; None otherwise (absent, torn,
    or written for other keys, e.g. another step budget)."""
    result = _read_json(ws.result_path(job))
    return result if _complete_for(result, job) else None


def reuse_result(job: Job, ws: Workspace) -> Path | None:
    """Another table's finished job with this job's numbers keys (table and display label aside) is
    this job's result too: a baseline trains nothing, so a Setting does not reach it, and a network
    job with the same keys shares the very training run (its key) and is evaluated the same way.
    Writes it as this job's (``reused_from`` names the original) and returns the original's path;
    None where there is none."""
    for path in sorted(ws.results.glob(f"*/{job.name}.json")):
        if path == ws.result_path(job):
            continue
        result = _read_json(path)
        if not _complete_for(result, job, ignore=("label", "table")):
            continue
        origin = result.get("reused_from") or {"table": result.get("table"), "job": result.get("job"),
                                               "finished_at": result.get("finished_at")}
        _write_json(ws.result_path(job), dict(result, table=job.table, job=job.name, config=job.config(),
                                              reused_from=origin))
        return path
    return None


class _Lock:
    """An exclusive flock on a file holding the owner's pid (status reads it back)."""

    def __init__(self, path: Path, blocking: bool):
        self.path, self.blocking, self.fh = Path(path), blocking, None

    def __enter__(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | (0 if self.blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            self.fh.close()
            self.fh = None
            return False
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"{os.getpid()}\n")
        self.fh.flush()
        return True

    def __exit__(self, *exc):
        if self.fh is not None:
            self.fh.seek(0)
            self.fh.truncate()
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def job_lock_holder(job: Job, ws: Workspace) -> int | None:
    """The pid of the live process working on the job, if any."""
    try:
        text = ws.lock_path(job).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and pid_alive(int(text)) else None


def training_progress(job: Job, ws: Workspace) -> int | None:
    """Iterations of the job's training that are safe in a checkpoint (None: none yet)."""
    folder = ws.train_dir(job)
    if folder is None or not (folder / "checkpoints").is_dir():
        return None
    done = [int(p.stem.split("=")[-1]) for p in (folder / "checkpoints").glob("checkpoint_iteration=*.pt")
            if p.stem.split("=")[-1].isdigit()]
    return max(done) if done else None


def _git_state() -> dict:
    def git(*args):
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def _device(env: dict) -> dict:
    """The device the bundle commands run on: the first CUDA GPU if there is one (train.yaml
    picks it), else the CPU."""
    cpus = os.cpu_count()
    threads = env.get("OMP_NUM_THREADS")
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True)
        if out.returncode == 0 and out.stdout.strip():
            return {"kind": "cuda", "name": out.stdout.splitlines()[0].strip(), "cpus": cpus}
    name = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"kind": "cpu", "name": name, "cpus": cpus, "omp_num_threads": threads}


def _weights_sha256(path: Path) -> str | None:
    """sha256 over the model file's tensors (names, dtypes, shapes, bytes, in name order): the same
    for the same weights, unlike the file's bytes (its stored U-Net config lists diffusers'
    `_use_default_values` in an order that changes from one process to the next)."""
    try:
        import torch

        from scripts.network.model_file import load_checkpoint_file

        state = load_checkpoint_file(path)["state_dict"]  # either form (model_file.py)
        digest = hashlib.sha256()
        for name in sorted(state):
            tensor = state[name].detach().contiguous().cpu()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        return digest.hexdigest()
    except Exception:  # not a bundle model file: the file hash alone stands
        return None


def _autoencoder_hashes(job: Job, ws: Workspace) -> dict:
    path = ws.autoencoder_path(job)
    if path is None:
        return {}
    from scripts.network.autoencoders import TAE_FORMATS

    files = TAE_FORMATS[job.autoencoder][1:3] if job.autoencoder in TAE_FORMATS else \
        sorted(p.name for p in path.iterdir() if p.is_file())
    return {name: _sha256(path / name) for name in files if (path / name).is_file()}


_CASE_KEYS = ("fold", "support_pid", "query_pid", "organ", "label_value", "shots", "dice", "tp", "fp", "fn",
              "hd95", "assd", "pred_empty", "gt_empty", "n_scored", "n_segmented", "volume_mode", "dice_undrawn",
              "hd95_undrawn", "drawn_z")
_SUMMARY_KEYS = ("dice_mean", "dice_pooled", "n_cases", "n_dice_undefined", "hd95_mean", "hd95_undefined",
                 "assd_mean", "assd_undefined", "dice_undrawn_mean")


def _mode_results(job: Job, eval_dir: Path) -> dict:
    modes = {}
    for mode in job.modes:
        report = _read_json(eval_dir / mode / "results.json")
        if not isinstance(report, dict) or "cases" not in report:
            raise JobFailed(f"evaluation wrote no results for mode {mode} ({eval_dir / mode / 'results.json'})")
        agg = report["aggregate"]
        modes[mode] = {
            "summary": {name: {k: cell.get(k) for k in _SUMMARY_KEYS}
                        for name, cell in [*agg["organs"].items(), ("mean", agg["mean"])]},
            "method_stats": report.get("method_stats", {}),
            "cases": [{k: case.get(k) for k in _CASE_KEYS if k in case} for case in report["cases"]],
        }
    return modes


def _train(job: Job, ws: Workspace, runner: CommandRunner, env: dict, say) -> dict:
    """Train the job's run to the end (or find it trained); returns the run's training record."""
    folder = ws.train_dir(job)
    with _Lock(folder.parent / f".{folder.name}.lock", blocking=True):
        mark_path = folder / training_mark(job)
        mark = _read_json(mark_path) or {}
        model = ws.model_path(job)
        if mark.get("complete") and model.is_file() and mark.get("model_sha256") == _sha256(model):
            say(f"training already complete ({mark.get('trained_by')})")
            return mark
        start = training_progress(job, ws)
        if start and job.lr_schedule == "constant" and not mark:  # carries on a shorter budget's run
            mark = {key: value for key, value in (_earlier_budget_mark(folder, start) or {}).items()
                    if key in ("seconds", "sessions", "resumed_from")}
        say(f"training {job.steps} steps" + (f", resuming after iteration {start}" if start else ""))
        t0 = time.time()
        rc = runner(train_command(job, ws), ws.bundle, ws.log_path(job), env)
        mark = dict(mark, seconds=round(mark.get("seconds", 0) + time.time() - t0, 1),
                    sessions=mark.get("sessions", 0) + 1,
                    resumed_from=[*mark.get("resumed_from", []), start])
        folder.mkdir(parents=True, exist_ok=True)
        if rc != 0 or not model.is_file():
            _write_json(mark_path, dict(mark, complete=False))
            raise JobFailed(f"training exited with status {rc}" + ("" if model.is_file() else f", no {model.name}"))
        mark.update(complete=True, model_sha256=_sha256(model), steps=job.steps, trained_by=f"{job.table}/{job.name}",
                    finished_at=_now(), command=train_command(job, ws))
        _write_json(mark_path, mark)
        return mark


def training_mark(job: Job) -> str:
    """The file that records the end of the job's training: one per model file of the run."""
    return TRAINING_MARK if job.model_file == "model.pt" else f"runner_training_{job.steps}steps.json"


def _earlier_budget_mark(folder: Path, steps: int) -> dict | None:
    """The record of the shorter budget whose last checkpoint a constant-schedule run resumes, so
    the wall time counts from the run's start."""
    return _read_json(folder / f"runner_training_{steps}steps.json")


def run_job(job: Job, ws: Workspace, runner: CommandRunner = run_subprocess, env: dict | None = None,
            say: Callable[[str], None] = print) -> str:
    """Bring one job to its result file. Returns 'done' (already finished), 'finished' (evaluated
    now, or an identical job's result taken from another table), 'busy' (another process
    holds it) or raises JobFailed."""
    if load_result(job, ws) is not None:
        return "done"
    env = dict(os.environ if env is None else env)
    with _Lock(ws.lock_path(job), blocking=False) as held:
        if not held:
            return "busy"
        if load_result(job, ws) is not None:  # finished by another runner meanwhile
            return "done"
        reused = reuse_result(job, ws)
        if reused is not None:
            say(f"the identical job of table {reused.parent.name} stands for it")
            return "finished"
        t_start = time.time()
        training = _train(job, ws, runner, env, say) if job.trains else None
        eval_dir = ws.eval_dir(job)
        shutil.rmtree(eval_dir, ignore_errors=True)
        say(f"evaluating {job.method}, {job.shots}-shot, modes {', '.join(job.modes)}")
        t0 = time.time()
        rc = runner(evaluate_command(job, ws), ws.bundle, ws.log_path(job), env)
        eval_seconds = round(time.time() - t0, 1)
        if rc != 0 or _stopping.is_set():
            raise JobFailed(f"evaluation exited with status {rc}")
        modes = _mode_results(job, eval_dir)
        weights = {"autoencoder": {"name": job.autoencoder, "files": _autoencoder_hashes(job, ws)}}
        if job.is_network:
            model = ws.model_path(job)
            what = f"{model.name} (final EMA weights)" if training is not None else f"{job.checkpoint} (a fixed file)"
            weights["model"] = {"file": what, "sha256": _sha256(model), "state_dict_sha256": _weights_sha256(model)}
        result = {
            "schema": RESULT_SCHEMA, "status": "complete", "table": job.table, "job": job.name,
            "config": job.config(),
            "training": None if training is None else {
                "steps": job.steps, "labels": job.label_source, "seconds": training.get("seconds"),
                "sessions": training.get("sessions"), "resumed_from": training.get("resumed_from"),
                "trained_by": training.get("trained_by"), "run": job.train_key},
            "git": _git_state(), "weights": weights, "device": _device(env),
            "wall_seconds": {"train": None if training is None else training.get("seconds"),
                             "evaluate": eval_seconds, "this_session": round(time.time() - t_start, 1)},
            "commands": {"train": None if training is None else train_command(job, ws),
                         "evaluate": evaluate_command(job, ws)},
            "finished_at": _now(),
            "modes": modes,
        }
        _write_json(ws.result_path(job), result)
        return "finished"


def failure_path(job: Job, ws: Workspace) -> Path:
    return ws.home / "state" / job.table / f"{job.name}.failed.json"


def record_failure(job: Job, ws: Workspace, message: str | None) -> None:
    """Note a job's failure for `status` (``None`` clears it)."""
    path = failure_path(job, ws)
    if message is None:
        path.unlink(missing_ok=True)
    else:
        _write_json(path, {"error": message, "log": str(ws.log_path(job)), "at": _now()})


def _commit(paths: Sequence[Path], message: str, say) -> None:
    """Commit only these files (best effort: a failure is reported, never fatal)."""
    rel = [str(Path(p).resolve().relative_to(REPO)) for p in paths if Path(p).exists()]
    add = subprocess.run(["git", "-C", str(REPO), "add", "--", *rel], capture_output=True, text=True)
    done = add.returncode == 0 and subprocess.run(
        ["git", "-C", str(REPO), "commit", "-q", "-m", message, "--only", "--", *rel],
        capture_output=True, text=True).returncode == 0
    if not done:
        say(f"warning: could not commit {rel}")


def _thread_env(max_jobs: int) -> dict:
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max_jobs))
    return env


def run_table(table, jobs: Sequence[Job], ws: Workspace, runner: CommandRunner = run_subprocess,
              max_jobs: int = 1, commit: bool = False, after_job: Callable[[], Sequence[Path]] | None = None,
              say: Callable[[str], None] = print) -> dict:
    """Run ``jobs`` (``max_jobs`` at a time); a failed job is reported and the others go on.
    ``after_job`` (e.g. re-aggregating the table) runs after each finished job and returns files
    to commit with it. Returns {job name: 'done' | 'finished' | 'busy' | 'failed: ...'}."""
    env = _thread_env(max_jobs)
    outcome: dict[str, str] = {}
    finished_lock = threading.Lock()
    total = len(jobs)

    def one(index_job):
        index, job = index_job
        if _stopping.is_set():
            return

        def tell(message):
            say(f"[{_now()}] [{index + 1}/{total}] {job.name}: {message}")

        try:
            state = run_job(job, ws, runner, env, tell)
        except (JobFailed, OSError, ValueError, KeyError) as error:
            if _stopping.is_set():
                tell("stopped; the next run resumes it")
                outcome[job.name] = "stopped"
                return
            tell(f"FAILED: {error} (log: {ws.log_path(job)})")
            outcome[job.name] = f"failed: {error}"
            record_failure(job, ws, str(error))
            return
        outcome[job.name] = state
        if state == "finished":
            record_failure(job, ws, None)
        if state == "done":
            return
        if state == "busy":
            tell("skipped: another runner is working on it")
            return
        summary = load_result(job, ws)["modes"]
        tell("finished: mean Dice " + ", ".join(
            f"{mode} {100 * m['summary']['mean']['dice_mean']:.1f}" if m["summary"]["mean"]["dice_mean"] is not None
            else f"{mode} n/a" for mode, m in summary.items()))
        with finished_lock:
            extra = list(after_job()) if after_job else []
            if commit:
                _commit([ws.result_path(job), *extra], f"accuracy {job.table}: {job.name}", tell)

    skipped = sum(load_result(j, ws) is not None for j in jobs)
    say(f"[{_now()}] table {table.name}: {total} jobs, {skipped} already finished, "
        f"{max_jobs} at a time; logs under {ws.home / 'logs' / table.name}")
    with ThreadPoolExecutor(max_workers=max(1, max_jobs)) as pool:
        list(pool.map(one, enumerate(jobs)))
    return outcome


def install_signal_handlers() -> None:
    signal.signal(signal.SIGTERM, stop_children)
