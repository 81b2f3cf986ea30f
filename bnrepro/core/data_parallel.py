"""How a run is spread over processes: the :class:`DataParallel` spec.

It lives with the store because it names what is stored: a run made over
several processes, or with another BN mode, is a different computation from
the plain one-process run, so its result is kept apart under a file name
tagged by :meth:`DataParallel.tag` (``<config hash>-np2-sync.json``). The spec
is only a value: the BN modes are implemented by :mod:`bnrepro.nn.modes`, the
processes started by :mod:`bnrepro.distributed`, the runs by
:mod:`bnrepro.runner.parallel`.
"""

from __future__ import annotations

import dataclasses

from .config import require

__all__ = ["BN_MODES", "DataParallel"]

#: What BN does over several processes: ``local`` (per-device statistics, plain DDP), ``sync``
#: (statistics of the global batch), ``ghost`` (ghost batches within each process).
BN_MODES = ("local", "sync", "ghost")


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """How a run is spread: ``nproc`` processes, BN mode, ghost batch size (``ghost`` mode only)."""

    nproc: int = 1
    bn_mode: str = "local"
    ghost_batch_size: int = 32

    def __post_init__(self):
        require(isinstance(self.nproc, int) and not isinstance(self.nproc, bool) and self.nproc >= 1,
                "nproc", self.nproc, "the number of processes must be an int >= 1")
        require(self.bn_mode in BN_MODES, "bn_mode", self.bn_mode, f"must be one of {', '.join(BN_MODES)}")
        require(isinstance(self.ghost_batch_size, int) and self.ghost_batch_size >= 2, "ghost_batch_size",
                self.ghost_batch_size, "BN needs at least 2 samples per ghost batch")

    @property
    def is_default(self) -> bool:
        """One process with the model's own BN: the plain run every chapter stores."""
        return self.nproc == 1 and self.bn_mode in ("local", "sync")

    def tag(self) -> str:
        """Suffix of the result's file name: ``""`` for the plain run, e.g. ``"-np2-sync"``, ``"-np2-ghost16"``."""
        if self.is_default:
            return ""
        mode = f"ghost{self.ghost_batch_size}" if self.bn_mode == "ghost" else self.bn_mode
        return f"-np{self.nproc}-{mode}"

    def canonical(self) -> "DataParallel":
        """The same computation with one spelling: ``sync`` in one process is ``local``, and the
        ghost batch size is kept only in ``ghost`` mode."""
        mode = "local" if (self.nproc == 1 and self.bn_mode == "sync") else self.bn_mode
        ghost = self.ghost_batch_size if mode == "ghost" else DataParallel.ghost_batch_size
        return DataParallel(self.nproc, mode, ghost)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
