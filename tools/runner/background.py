"""Runners in the background: start one with nohup, see what every table has done, stop it.

Each runner process (foreground or background) keeps a pid file
`<home>/state/runners/<table>.<pid>.json` while it lives; `status` reads those, the job locks
(which hold the pid of the process working on a job), the failure notes and the result files.
"""

from __future__ import annotations

import datetime as _dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .execute import (_read_json, _write_json, failure_path, job_lock_holder, load_result, pid_alive,
                      training_progress)
from .jobs import REPO, Job, Workspace, expand
from .tables import Table

__all__ = ["register_runner", "live_runners", "start", "stop", "status"]


def _runner_file(ws: Workspace, table: str, pid: int) -> Path:
    return ws.runner_dir() / f"{table}.{pid}.json"


def register_runner(ws: Workspace, table: str, argv: list[str], log: str | None = None) -> Path:
    """Write this process's pid file; the caller removes it when it ends."""
    path = _runner_file(ws, table, os.getpid())
    _write_json(path, {"pid": os.getpid(), "table": table, "argv": argv, "log": log,
                       "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    return path


def live_runners(ws: Workspace, table: str) -> list[dict]:
    """Pid files of live runners of ``table``; those of dead ones are removed."""
    alive = []
    for path in sorted(ws.runner_dir().glob(f"{table}.*.json")) if ws.runner_dir().is_dir() else []:
        info = _read_json(path)
        if isinstance(info, dict) and info.get("table") == table and pid_alive(int(info.get("pid", 0))):
            alive.append(info)
        else:
            path.unlink(missing_ok=True)
    return alive


def start(ws: Workspace, table: Table, run_args: list[str]) -> dict:
    """Launch `python -m tools.runner run --table NAME ...` with nohup in its own session, output
    to `<home>/logs/<table>/runner.log`; returns its pid file's content."""
    running = live_runners(ws, table.name)
    if running:
        raise RuntimeError(f"a runner of {table.name} is already running (pid {running[0]['pid']}); "
                           f"`python -m tools.runner stop --table {table.name}` first")
    log = ws.home / "logs" / table.name / "runner.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = ["nohup", sys.executable, "-m", "tools.runner", "run", "--table", table.name, *run_args]
    env = dict(os.environ, SDFSMIS_RUNNER_HOME=str(ws.home), PYTHONUNBUFFERED="1")
    with open(log, "a") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    for _ in range(100):  # until the runner has written its pid file (it imports little)
        time.sleep(0.1)
        if proc.poll() is not None:  # nothing left to do ends it at once with status 0
            if proc.returncode != 0:
                raise RuntimeError(f"the runner exited at once (status {proc.returncode}); see {log}")
            break
        if _runner_file(ws, table.name, proc.pid).is_file():
            break
    return {"pid": proc.pid, "log": str(log)}


def stop(ws: Workspace, table: Table) -> list[int]:
    """SIGTERM to the table's live runners (and their process group when they lead one): the
    runner ends its commands; the training checkpoints stay for the next run to resume."""
    stopped = []
    for info in live_runners(ws, table.name):
        pid = int(info["pid"])
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGTERM)
            else:
                os.kill(pid, signal.SIGTERM)
            stopped.append(pid)
        except ProcessLookupError:
            pass
    return stopped


def _job_line(job: Job, ws: Workspace) -> str:
    progress = training_progress(job, ws)
    mark = _read_json(ws.train_dir(job) / "runner_training.json") if job.trains else None
    if job.trains and not (mark or {}).get("complete"):
        return f"{job.name} (training: {progress or 0}/{job.steps} steps in checkpoints)"
    return f"{job.name} (evaluating)"


def status(ws: Workspace, tables: dict[str, Table], names: list[str] | None = None, steps: int | None = None,
           verbose: bool = False) -> str:
    """What is done, running, failed and left, per table."""
    lines = []
    for name in names or list(tables):
        table = tables[name]
        jobs = expand(table, steps)
        done, running, failed, left = [], [], [], []
        for job in jobs:
            if load_result(job, ws) is not None:
                done.append(job)
            elif job_lock_holder(job, ws) is not None:
                running.append(job)
            elif failure_path(job, ws).is_file():
                failed.append(job)
            else:
                left.append(job)
        runners = live_runners(ws, name)
        who = ", ".join(f"pid {r['pid']} since {r['started']}" for r in runners) or "no runner"
        lines.append(f"{name}: {len(done)}/{len(jobs)} done, {len(running)} running, {len(failed)} failed, "
                     f"{len(left)} left ({who})")
        lines += [f"  running: {_job_line(j, ws)}" for j in running]
        for job in failed:
            note = _read_json(failure_path(job, ws)) or {}
            lines.append(f"  failed: {job.name}: {note.get('error')} (log {note.get('log')})")
        if verbose:
            lines += [f"  done: {j.name}" for j in done]
            for job in left:
                progress = training_progress(job, ws)
                lines.append(f"  left: {job.name}" + (f" (checkpoint at {progress}/{job.steps})" if progress else ""))
    return "\n".join(lines)
