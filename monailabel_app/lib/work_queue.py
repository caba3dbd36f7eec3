"""One worker thread for the server's heavy work: clients' inference calls in order, warm-ups when idle.

MONAI Label's ``POST /infer/{model}`` is an ``async`` endpoint that runs the whole inference on the
event loop, so while one call runs the server answers nothing else (``/info/``, the datastore, label
saves). The app hands each call to this queue instead (``lib/infer_route.py``) and awaits it, which
leaves the event loop free. One worker, because a second inference on 2 cores only slows both;
calls run first come, first served; background work (loading the model, encoding images ahead of
the first call: ``lib/warmup.py``) runs only when no call waits.

The queue is bounded: beyond ``capacity`` calls waiting or running, a call is refused at once with
``QueueFull`` (the route answers 503 with a ``Retry-After`` estimate) rather than piling up uploads
and memory behind a queue that cannot drain.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Hashable

logger = logging.getLogger(__name__)

CALL = 0  # a waiting call always runs before any background job (priorities 1, 2, ...: lower first)


class QueueFull(Exception):
    def __init__(self, waiting: int, retry_after_s: int):
        super().__init__(f"{waiting} calls are already waiting or running; retry in about {retry_after_s} s")
        self.waiting = waiting
        self.retry_after_s = retry_after_s


class WorkQueue:
    def __init__(self, capacity: int, name: str = "fewshot-worker"):
        if capacity < 1:
            raise ValueError(f"the queue's capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._jobs: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._calls = 0  # calls waiting or running
        self._background: dict[Hashable, int] = {}  # keys of background jobs waiting: their priority
        self._background_jobs = 0  # background jobs waiting or running (a key may be queued twice)
        self._call_seconds = 5.0  # running mean of a call's duration, for the retry hint
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args, **kwargs) -> Future:
        """Queue a client's call; its future gives the result. Raises ``QueueFull`` at capacity."""
        with self._lock:
            if self._calls >= self.capacity:
                raise QueueFull(self._calls, self.retry_after_s())
            self._calls += 1
        future: Future = Future()
        self._jobs.put((CALL, next(self._order), fn, args, kwargs, future, None))
        return future

    def submit_background(self, key: Hashable, fn: Callable[..., Any], *args, priority: int = 1,
                          **kwargs) -> Future | None:
        """Queue background work under ``key`` at ``priority`` (>= 1; lower runs first). None if a
        job with that key already waits at that priority or a more urgent one; a more urgent
        submission queues the job again (``fn`` should then find its work done and return). A job
        that runs may queue its own key again (to go on later)."""
        if priority < 1:
            raise ValueError(f"a background job's priority must be at least 1, got {priority}")
        with self._lock:
            if key in self._background and self._background[key] <= priority:
                return None
            self._background[key] = priority
            self._background_jobs += 1
        future: Future = Future()
        self._jobs.put((priority, next(self._order), fn, args, kwargs, future, key))
        return future

    def calls_waiting(self) -> bool:
        """Whether a client's call waits (asked from a background job, which yields to it)."""
        return self._calls > 0

    def retry_after_s(self) -> int:
        return max(1, math.ceil(self._calls * self._call_seconds))

    def idle(self) -> bool:
        """Nothing waiting or running (a bench or test waits for this before timing a first call)."""
        with self._lock:
            return self._calls == 0 and self._background_jobs == 0

    def _work(self) -> None:
        while True:
            priority, _, fn, args, kwargs, future, key = self._jobs.get()
            if priority != CALL:
                with self._lock:
                    if self._background.get(key) == priority:  # the most urgent queued of its key
                        del self._background[key]
            start = time.perf_counter()
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args, **kwargs))
                    except BaseException as error:  # the caller's future carries it; the worker goes on
                        future.set_exception(error)
                        if priority != CALL:
                            logger.warning(f"background job {key!r} failed: {error}")
            finally:
                with self._lock:
                    if priority == CALL:
                        self._calls -= 1
                        self._call_seconds = 0.8 * self._call_seconds + 0.2 * (time.perf_counter() - start)
                    else:
                        self._background_jobs -= 1
