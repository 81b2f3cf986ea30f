"""Time boxes: stop a piece of work after N training steps or a number of seconds.

Two limits, both enforced rather than hoped for:

* :class:`StepBox` -- a training observer (:func:`bnrepro.training.loop.observe`)
  that records each step's loss and time and closes the box, by raising
  :class:`BoxClosed` between two steps, once ``max_steps`` steps have run or
  ``soft_s`` seconds have passed since the box opened. The training loop's
  ``finally`` runs, so the stop is clean.
* :func:`hard_limit` -- a wall-clock alarm (``SIGALRM``) that raises
  :class:`BoxClosed` wherever the work is (loading data, building a model, a
  measurement with no training steps), for work the step box cannot see.

:class:`BoxClosed` derives from ``BaseException`` so that an experiment's
``except Exception`` cannot swallow it.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time

#: Why a box closed (``BoxClosed.why``).
STEP_CAP, SOFT_BUDGET, HARD_LIMIT = "step cap", "wall budget", "hard limit"


class BoxClosed(BaseException):
    """The time box ended the work; ``why`` is one of STEP_CAP, SOFT_BUDGET, HARD_LIMIT."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


class StepBox:
    """Training observer: records losses and step times; closes at ``max_steps`` or ``soft_s``.

    The clock starts when the box is made (so data loading and model building
    count against ``soft_s``). ``total`` is the planned step count that the
    last :func:`bnrepro.training.loop.train` call reported.
    """

    def __init__(self, max_steps: int, soft_s: float):
        if max_steps < 1 or not soft_s > 0:
            raise ValueError(f"a step box needs max_steps >= 1 and soft_s > 0, got {max_steps}, {soft_s}")
        self.max_steps, self.soft_s = max_steps, soft_s
        self.opened = time.perf_counter()
        self.losses: list[float] = []
        self.times: list[float] = []  # perf_counter after each step (train() syncs on the loss)
        self.total: int | None = None

    def __call__(self, state) -> None:
        now = time.perf_counter()
        self.losses.append(float(state.loss))
        self.times.append(now)
        self.total = state.total
        if len(self.losses) >= self.max_steps:
            raise BoxClosed(STEP_CAP)
        if now - self.opened >= self.soft_s:
            raise BoxClosed(SOFT_BUDGET)

    @property
    def steps(self) -> int:
        return len(self.losses)

    def steps_per_s(self) -> float | None:
        """Steps per second after a warm-up (the first tenth of the steps, at least one step:
        CUDA context, cuDNN autotuning and caches), or None with fewer than 3 steps."""
        n = len(self.times)
        if n < 3:
            return None
        warm = max(1, n // 10)
        span = self.times[-1] - self.times[warm - 1]
        return (n - warm) / span if span > 0 else None

    def first_step_s(self) -> float | None:
        """Seconds from opening the box to the end of the first step (set-up included)."""
        return self.times[0] - self.opened if self.times else None


def _can_alarm() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def hard_limit_available() -> bool:
    """Whether :func:`hard_limit` can interrupt work here (Unix, main thread)."""
    return _can_alarm()


@contextlib.contextmanager
def hard_limit(seconds: float):
    """Raise :class:`BoxClosed` (``HARD_LIMIT``) in this thread after ``seconds`` of wall time.

    Needs ``SIGALRM`` and the main thread; elsewhere it only checks the time
    when the block ends, so the caller's record still says the limit was passed.
    Limits do not nest: the inner one replaces the outer one.
    """
    if not seconds > 0 or not math.isfinite(seconds):
        raise ValueError(f"a hard limit needs a positive number of seconds, got {seconds!r}")
    start = time.perf_counter()
    if not _can_alarm():
        yield
        if time.perf_counter() - start > seconds:
            raise BoxClosed(HARD_LIMIT)
        return

    def on_alarm(signum, frame):
        raise BoxClosed(HARD_LIMIT)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
