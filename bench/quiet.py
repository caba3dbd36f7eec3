"""Timing on a shared machine: pause other processes (SIGSTOP) only while a measurement runs.

On a 2-core development machine a background training job halves every figure. ``paused(pids)``
stops the given processes for the few seconds of one measurement and always resumes them (on
exit of the block, on an exception, on SIGINT/SIGTERM and at interpreter exit), so figures are
taken on idle cores without killing anyone's work. With no pids it does nothing.

    BENCH_PAUSE_PIDS=1234 .venv/bin/python bench/bench_cpu.py     # or --pause-pid 1234
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal

_stopped: set[int] = set()


def _resume_all(*_args) -> None:
    for pid in list(_stopped):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGCONT)
        _stopped.discard(pid)


def _on_signal(signum, frame):
    _resume_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


_installed = False


def _install() -> None:
    global _installed
    if _installed:
        return
    atexit.register(_resume_all)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError):  # not the main thread: rely on atexit and finally
            previous = signal.getsignal(sig)
            if previous in (signal.SIG_DFL, signal.default_int_handler, None):
                signal.signal(sig, _on_signal)
    _installed = True


def pids_from(value: str | None = None) -> list[int]:
    """Pids from a comma-separated string (default: the ``BENCH_PAUSE_PIDS`` variable)."""
    text = value if value is not None else os.environ.get("BENCH_PAUSE_PIDS", "")
    return [int(part) for part in text.replace(" ", ",").split(",") if part.strip()]


@contextlib.contextmanager
def paused(pids):
    """Stop ``pids`` for the duration of the block; they are resumed whatever happens."""
    pids = [int(p) for p in (pids or []) if int(p) != os.getpid()]
    if not pids:
        yield
        return
    _install()
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                _stopped.add(pid)
                os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        _resume_all()
