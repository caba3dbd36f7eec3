"""The app's work queue (``monailabel_app/lib/work_queue.py``): calls in arrival order and before any
background job, a bounded number of calls, background jobs once per key, failures kept to their call."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "monailabel_app"))

from lib.work_queue import QueueFull, WorkQueue  # noqa: E402


@pytest.fixture
def blocked():
    """A queue whose worker is held by a first job until ``release`` is set."""
    work = WorkQueue(capacity=4)
    release, started = threading.Event(), threading.Event()

    def hold():
        started.set()
        release.wait(10)

    work.submit_background("hold", hold, priority=1)
    assert started.wait(10)
    yield work, release
    release.set()


def test_calls_run_in_arrival_order_and_before_background_work(blocked):
    work, release = blocked
    ran: list[str] = []
    jobs = [work.submit_background("warm b", ran.append, "warm b", priority=3),
            work.submit(ran.append, "call 1"),
            work.submit_background("model", ran.append, "model", priority=1),
            work.submit(ran.append, "call 2"),
            work.submit(ran.append, "call 3")]
    release.set()
    for job in jobs:
        job.result(10)
    assert ran == ["call 1", "call 2", "call 3", "model", "warm b"]


def test_a_full_queue_refuses_at_once_with_a_retry_hint(blocked):
    work, release = blocked
    futures = [work.submit(time.sleep, 0) for _ in range(4)]
    with pytest.raises(QueueFull) as refused:
        work.submit(time.sleep, 0)
    assert refused.value.waiting == 4 and refused.value.retry_after_s >= 1
    release.set()
    for future in futures:
        future.result(10)
    deadline = time.time() + 10
    while not work.idle():
        assert time.time() < deadline
        time.sleep(0.01)
    work.submit(time.sleep, 0).result(10)  # room again


def test_background_jobs_run_once_per_key_unless_more_urgent(blocked):
    work, release = blocked
    ran: list[str] = []
    assert work.submit_background("image a", ran.append, "start-up", priority=3) is not None
    assert work.submit_background("image a", ran.append, "again", priority=3) is None
    assert work.submit_background("image a", ran.append, "opened", priority=2) is not None  # queued again, sooner
    work.submit_background("image b", ran.append, "image b", priority=2)
    release.set()
    deadline = time.time() + 10
    while not work.idle():
        assert time.time() < deadline
        time.sleep(0.01)
    assert ran == ["opened", "image b", "start-up"]


def test_a_failing_job_fails_its_own_future_and_the_worker_goes_on():
    work = WorkQueue(capacity=2)

    def fail():
        raise ValueError("bad volume")

    with pytest.raises(ValueError, match="bad volume"):
        work.submit(fail).result(10)
    assert work.submit(lambda: 42).result(10) == 42


def test_a_running_job_can_queue_its_own_key_to_go_on_later():
    work = WorkQueue(capacity=2)
    ran: list[int] = []

    def step(n: int):
        ran.append(n)
        if n < 3:
            assert work.submit_background("warm", step, n + 1, priority=2) is not None

    work.submit_background("warm", step, 1, priority=2)
    deadline = time.time() + 10
    while not work.idle():
        assert time.time() < deadline
        time.sleep(0.01)
    assert ran == [1, 2, 3]
