"""Ghost batch normalization: BN statistics over virtual sub-batches.

Hoffer, Hubara & Soudry 2017 ("Train longer, generalize better",
arXiv 1705.08741) split each SGD batch into "ghost" batches of a fixed size
and normalize each with its own mean and variance; De & Smith 2020
(arXiv 2002.10444) use ghost BN to separate the BN batch from the SGD batch
in their batch-size study. It is also exactly what data-parallel training
with per-device BN computes: under DDP every device normalizes its own shard
(see :mod:`bnrepro.nn.sync_bn` and the chapter "Batch statistics across devices").

:class:`GhostBatchNorm` is a mode of :class:`bnrepro.nn.batchnorm.BatchNorm` (same
parameters, buffers and ``state_dict`` keys as ``nn.BatchNorm2d``), with the
same closed-form backward pass per ghost batch. How the running statistics
follow the ghost batches is a choice (``stats_update``):

* ``"sequential"`` (default) -- as plain BN run on each ghost batch in turn:
  one running-average update (and one ``num_batches_tracked`` tick) per chunk;
* ``"first"`` -- only the first ghost batch updates them, once per call.  This
  is what DDP with per-device BN keeps: it broadcasts rank 0's buffers to the
  other ranks before every forward pass, so the running statistics are those of
  rank 0's shard;
* ``"mean"`` -- one update with the average of the ghost batches' statistics
  (what averaging the per-device running statistics across ranks gives, e.g.
  timm's ``distribute_bn(reduce=True)``).

``torch_kernel=True`` runs each ghost batch (and eval mode) through PyTorch's
own BN kernel, exactly as ``nn.BatchNorm2d`` applied to each chunk in turn,
instead of the closed form: the same transform, rounded as PyTorch rounds it.
The ghost-BN VGG of the chapter "Is it internal covariate shift?" uses it
(``NoisyVGG(norm="ghost")``), so that its stored results, computed with
PyTorch's kernel, are reproduced bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .batchnorm import BatchNorm
from .closed_form import BatchNormFunction
from .convert import _convert, is_plain_batchnorm, rebuild_batchnorm
from .functional import _check_batch

__all__ = ["GhostBatchNorm", "ghost_chunks", "convert_ghost_batchnorm", "STATS_UPDATES"]

STATS_UPDATES = ("sequential", "first", "mean")


def ghost_chunks(n: int, ghost_batch_size: int) -> list[int]:
    """Sizes of the ghost batches a batch of ``n`` samples is split into.

    Consecutive chunks of ``ghost_batch_size``; a last chunk of a single sample
    (whose variance is zero) is merged into the one before it.
    """
    if ghost_batch_size < 2:
        raise ValueError(f"ghost_batch_size={ghost_batch_size}: a ghost batch needs >= 2 samples")
    sizes = [ghost_batch_size] * (n // ghost_batch_size)
    rest = n - sum(sizes)
    if rest == 1 and sizes:
        sizes[-1] += 1
    elif rest:
        sizes.append(rest)
    return sizes


class GhostBatchNorm(BatchNorm):
    """Drop-in for ``nn.BatchNorm1d/2d`` whose training statistics come from ghost batches.

    In training, the batch (dim 0) is split into consecutive chunks of
    ``ghost_batch_size`` samples (see :func:`ghost_chunks`), each normalized
    with its own statistics (Ioffe & Szegedy's Algorithm 1 per chunk). In eval
    mode, or for a batch no larger than one ghost batch, it is plain BN.
    ``stats_update`` chooses how the running statistics are updated (module
    docstring). ``ghost_batch_size`` is not part of the ``state_dict``, so
    checkpoints load both ways with ``nn.BatchNorm2d`` and :class:`BatchNorm`.
    ``torch_kernel=True`` normalizes with PyTorch's BN kernel instead of the
    closed form (module docstring).
    """

    def __init__(self, num_features: int, ghost_batch_size: int = 32, eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True, track_running_stats: bool = True,
                 device=None, dtype=None, *, bias: bool = True, stats_update: str = "sequential",
                 torch_kernel: bool = False):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        ghost_chunks(2, ghost_batch_size)  # validates the size
        if stats_update not in STATS_UPDATES:
            raise ValueError(f"stats_update must be one of {STATS_UPDATES}, got {stats_update!r}")
        if torch_kernel and stats_update != "sequential":
            raise ValueError(f"torch_kernel=True runs nn.BatchNorm's forward on each ghost batch, which updates "
                             f"the running statistics per chunk: it needs stats_update='sequential', "
                             f"got {stats_update!r}")
        self.ghost_batch_size, self.stats_update = int(ghost_batch_size), stats_update
        self.torch_kernel = bool(torch_kernel)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", ghost_batch_size={self.ghost_batch_size}"
                + ("" if self.stats_update == "sequential" else f", stats_update={self.stats_update!r}")
                + (", torch_kernel=True" if self.torch_kernel else ""))

    def _plain(self, input: Tensor) -> Tensor:
        """Plain BN on ``input``: this package's closed form, or PyTorch's kernel (``torch_kernel``)."""
        if self.torch_kernel:
            return nn.modules.batchnorm._BatchNorm.forward(self, input)  # nn.BatchNorm2d's forward
        return super().forward(input)

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or input.shape[0] <= self.ghost_batch_size:
            return self._plain(input)
        self._check_input(input)
        chunks = input.split(ghost_chunks(input.shape[0], self.ghost_batch_size))
        if self.stats_update == "sequential" or not self.track_running_stats:
            # Plain BN on each chunk in turn: each updates the running statistics.
            return torch.cat([self._plain(c) for c in chunks])
        outs, stats = [], []
        for c in chunks:
            _check_batch(c)
            y, mean, var, _, _ = BatchNormFunction.apply(c, self.weight, self.bias, self.eps)
            m = c.numel() // c.shape[1]
            outs.append(y)
            stats.append((mean, var * (m / (m - 1))))  # unbiased, as Algorithm 2 stores it
        self._update_running(stats[:1] if self.stats_update == "first" else stats)
        return torch.cat(outs)

    @torch.no_grad()
    def _update_running(self, stats: list[tuple[Tensor, Tensor]]) -> None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        mean = torch.stack([s[0] for s in stats]).mean(0)
        var = torch.stack([s[1] for s in stats]).mean(0)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(var.to(self.running_var.dtype), factor)


def convert_ghost_batchnorm(model: nn.Module, ghost_batch_size: int,
                            stats_update: str = "sequential") -> nn.Module:
    """Replace every ``nn.BatchNorm1d/2d`` and full-mode :class:`BatchNorm` by a
    :class:`GhostBatchNorm` with the same state; returns the model. Other BN
    layers are left alone with a warning (see :func:`bnrepro.nn.convert.convert_batchnorm`).

    Parameters are copied, so build the optimizer after converting.
    """
    return _convert(model, is_plain_batchnorm, lambda bn: rebuild_batchnorm(
        bn, GhostBatchNorm, ghost_batch_size=ghost_batch_size, stats_update=stats_update),
        lambda m: type(m) is GhostBatchNorm, "convert_ghost_batchnorm")
