"""The runner: runs experiments into the results store (``load_or_run``), sweeps, parallel runs."""

from ..core.store import load_or_run

__all__ = ["load_or_run"]
