"""Choosing, describing and synchronizing the compute device.

Every experiment in the book asks :func:`get_device` where to run, so one
environment variable (``BNREPRO_DEVICE``) moves a whole run between machines
without touching code. A device that was asked for but cannot be used is an
error, never a silent fallback: a "GPU" timing measured on the CPU would be
worse than no number at all.
"""

from __future__ import annotations

import contextlib
import os

import torch

__all__ = ["ENV_VAR", "THREADS_ENV", "get_device", "describe_device", "synchronize", "available_devices",
           "cpu_threads", "run_threads", "THREAD_TOLERANCE"]

#: Environment variable consulted when no device argument is given.
ENV_VAR = "BNREPRO_DEVICE"
#: Environment variable setting the CPU threads of every stored run (see :func:`run_threads`).
THREADS_ENV = "BNREPRO_THREADS"
#: Relative difference (of losses and other continuous results) that runs of one config on
#: different thread counts stay within, after the book's short smoke-profile training runs.
THREAD_TOLERANCE = 1e-4

# Device types we know how to check for availability. Anything else that
# torch can parse ("meta", "xpu", ...) is rejected rather than trusted blindly.
_SUPPORTED_TYPES = ("cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """Names of the devices usable on this machine, e.g. ``["cpu", "cuda:0"]``."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    return names


def _auto_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _bad(value, origin: str, problem: str) -> ValueError:
    fix = (f"set {ENV_VAR} to one of those or 'auto', or unset it" if ENV_VAR in origin
           else "pass one of those, or 'auto' to pick the best")
    return ValueError(
        f"device {str(value)!r} (from {origin}): {problem}. "
        f"Available on this machine: {', '.join(available_devices())}. Fix: {fix}."
    )


def get_device(device: str | torch.device | None = None) -> torch.device:
    """Return the device to run on.

    Precedence: the ``device`` argument, then the ``BNREPRO_DEVICE``
    environment variable, then CUDA, then Apple MPS, then the CPU. Strings
    such as ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` and
    :class:`torch.device` objects are accepted; ``"auto"`` (or an empty
    string) means "pick the best available".

    Raises:
        ValueError: the value is not a device name, or names a device this
            machine does not have. The message says where the value came from
            (the argument or ``BNREPRO_DEVICE``) and lists what is available.
    """
    if device is not None:
        origin, value = "the device argument", device
    elif os.environ.get(ENV_VAR, "").strip():
        origin, value = f"environment variable {ENV_VAR}", os.environ[ENV_VAR].strip()
    else:
        return _auto_device()

    if isinstance(value, str) and value.strip().lower() in ("", "auto"):
        return _auto_device()
    if not isinstance(value, (str, torch.device)):
        raise _bad(value, origin, f"expected a str or torch.device, got {type(value).__name__}")
    try:
        dev = torch.device(value.strip().lower() if isinstance(value, str) else value)
    except (RuntimeError, ValueError):
        raise _bad(value, origin, "unknown device name") from None

    if dev.type not in _SUPPORTED_TYPES:
        raise _bad(value, origin, f"unsupported device type {dev.type!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise _bad(value, origin, "CUDA was requested but is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise _bad(value, origin, f"there is no CUDA device with index {dev.index}")
    if dev.type == "mps" and not _mps_available():
        raise _bad(value, origin, "MPS was requested but is not available")
    return dev


def describe_device(device: str | torch.device) -> str:
    """One human-readable line for logs and result tables.

    Examples: ``"cpu (2 threads)"``, ``"cuda:0 (NVIDIA H100 80GB HBM3)"``,
    ``"mps"``.
    """
    dev = torch.device(device)
    if dev.type == "cpu":
        n = torch.get_num_threads()
        return f"cpu ({n} thread{'' if n == 1 else 's'})"
    if dev.type == "cuda":
        # A bare "cuda" means the current device; name it so logs are unambiguous.
        index = torch.cuda.current_device() if dev.index is None else dev.index
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(dev)


def synchronize(device: str | torch.device) -> None:
    """Wait until queued kernels on ``device`` have finished.

    GPU work is asynchronous, so a wall-clock timing is only meaningful after
    a synchronize. On the CPU this is a no-op.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


def run_threads() -> int:
    """CPU intra-op threads of every run that goes into the results store: ``$BNREPRO_THREADS``, else 1.

    A thread count changes the order of floating-point sums, so the same config
    run on 1 or 2 threads differs in the last digits (about 1e-6 relative after
    a short training run; tested to stay within :data:`THREAD_TOLERANCE`). The
    count is pinned rather than made part of the result key: one fixed count
    for every run, whichever executor and however many ``--jobs``, makes
    ``--jobs`` change nothing, keeps every config hash (and so every stored
    result) valid, and one thread is the fastest way to run the book's small
    networks anyway (see :func:`cpu_threads`); parallelism comes from ``--jobs``.
    Setting ``BNREPRO_THREADS`` (recorded in each result's provenance) changes
    numbers only within that tolerance, far below the seed-to-seed spread that
    the book's claims are judged on, so results with another count are still
    loaded. Over long runs such a difference can grow as any rounding
    difference does in training (a new PyTorch version does the same): that is
    why claims are judged on intervals over seeds, never on one run's last digits.
    """
    text = os.environ.get(THREADS_ENV, "").strip()
    if not text:
        return 1
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{THREADS_ENV}={text!r}: must be a whole number >= 1 (CPU threads per run); "
                         f"unset it for the default, 1")
    return n


@contextlib.contextmanager
def cpu_threads(device: str | torch.device = "cpu", n: int = 1):
    """Use ``n`` intra-op threads while on the CPU (restored after); no-op elsewhere.

    The book's small networks and exact checks are thousands of tiny ops: on
    a busy 2-core CPU, two threads ran them 5-20x slower than one (measured
    while writing the chapters), since thread synchronization costs more than
    the arithmetic. Provenance records the thread count a run used.
    """
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
