"""Where a result came from: code version, library versions, device, time."""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import platform
import subprocess
from pathlib import Path

import torch

from .device import describe_device
from .version import __version__

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # bnrepro/
REPO_ROOT = PACKAGE_DIR.parent


@functools.lru_cache(maxsize=1)
def git_revision() -> str:
    """``<commit>`` of the checkout bnrepro runs from, ``+dirty`` if modified.

    ``"unknown"`` when bnrepro is not run from a git checkout.
    """
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=60, check=True).stdout.strip()
        # --no-optional-locks: a status that is timed out and killed must not leave .git/index.lock behind
        dirty = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no", "--",
                                "bnrepro"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.lru_cache(maxsize=1)
def git_diff_hash() -> str | None:
    """sha256 (16 hex digits) of ``git diff HEAD -- bnrepro`` when the package is modified, else None.

    A result run from a modified checkout records it, so that it can at least
    be matched with the diff it was run with; the committed results must come
    from clean revisions (a test checks).
    """
    try:
        diff = subprocess.run(["git", "--no-optional-locks", "diff", "HEAD", "--", "bnrepro"], cwd=REPO_ROOT,
                              capture_output=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return hashlib.sha256(diff).hexdigest()[:16] if diff else None


def utc_now() -> str:
    """The time now, UTC, to the second (ISO 8601): how provenance stamps times."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def provenance(device: torch.device | str, wall_time_s: float, seeds: dict) -> dict:
    """The provenance block stored with every result."""
    rev = git_revision()
    return {
        "bnrepro_version": __version__,
        "git_revision": rev,
        **({"git_diff_sha256": git_diff_hash()} if rev.endswith("+dirty") else {}),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": describe_device(torch.device(device)),
        "threads": torch.get_num_threads(),
        "seeds": seeds,
        "wall_time_s": round(float(wall_time_s), 3),
        "finished_at": utc_now(),
    }
