"""BN over several processes: the three BN modes of a data-parallel run, applied to a model.

Under ``DistributedDataParallel`` each process sees its slice of the global
batch, so what "the batch" of BN means is a choice (the chapter "Batch
statistics across devices"):

* ``local``: leave BN as it is -- per-device statistics, what plain DDP computes;
* ``sync``: :class:`bnrepro.nn.sync_bn.SyncBatchNorm`, the statistics of the global batch;
* ``ghost``: :class:`bnrepro.nn.ghost.GhostBatchNorm` of a fixed size within each process.

The names are part of the run's spec (:data:`bnrepro.core.data_parallel.BN_MODES`,
which names stored results); this module is what they do to a model.
"""

from __future__ import annotations

from torch import nn

from ..core.config import ConfigError
from ..core.data_parallel import BN_MODES
from .batchnorm import is_batchnorm
from .ghost import GhostBatchNorm, convert_ghost_batchnorm
from .sync_bn import SyncBatchNorm, convert_sync_batchnorm

__all__ = ["BN_MODES", "apply_bn_mode", "check_converted"]


def apply_bn_mode(model: nn.Module, mode: str, ghost_batch_size: int = 32) -> nn.Module:
    """``"local"``: leave BN as it is (per-device statistics under DDP); ``"sync"``: synchronized
    BN (:func:`bnrepro.nn.sync_bn.convert_sync_batchnorm`); ``"ghost"``: ghost BN of
    ``ghost_batch_size`` within each device. Returns the (converted) model."""
    if mode not in BN_MODES:
        raise ValueError(f"BN mode {mode!r} is not one of {', '.join(BN_MODES)}")
    if mode == "sync":
        return convert_sync_batchnorm(model)
    if mode == "ghost":
        return convert_ghost_batchnorm(model, ghost_batch_size)
    return model


def check_converted(model: nn.Module, mode: str) -> None:
    """Refuse BN layers that ``mode`` could not convert (a model's own ghost or noisy BN): left
    alone they would silently keep their own statistics, so the run would not be what it says."""
    target = SyncBatchNorm if mode == "sync" else GhostBatchNorm
    # A model's own ghost BN (the VGG's, on PyTorch's kernel) is of the target type but not the mode's.
    odd = sorted({type(m).__name__ for m in model.modules()
                  if is_batchnorm(m) and (type(m) is not target or getattr(m, "torch_kernel", False))})
    if odd:
        raise ConfigError(f"bn_mode={mode!r}: the model has BN layers of its own kind ({', '.join(odd)}) that "
                          f"this mode cannot convert; run this config with --bn-mode local")
