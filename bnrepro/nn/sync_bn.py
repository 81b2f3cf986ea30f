"""Synchronized batch normalization on ``torch.distributed``, for CPU (gloo) and GPU (NCCL).

Under data-parallel training (``DistributedDataParallel``) each process sees
its own shard of the batch. Plain BN then normalizes each shard with its own
statistics ("per-device BN": ghost BN with one ghost batch per device, see
:mod:`bnrepro.nn.ghost`). Synchronized BN takes the statistics of the *global*
batch instead, at the price of communication:

* forward: one all-reduce per BN layer of ``(sum x, sum x^2, count)`` per
  channel (the count makes unequal local batch sizes exact);
* backward: one all-reduce per BN layer of ``(sum dy, sum dy*x_hat)`` per
  channel, the two sums the closed-form input gradient of Ioffe & Szegedy's
  Section 3 needs.

``gamma``/``beta`` gradients stay local sums, which DDP then averages like
any other parameter gradient: the same convention as ``nn.SyncBatchNorm``
(which runs on CUDA only; this one runs wherever ``torch.distributed`` does).

Every all-reduce goes through the layer's :class:`Communication` (``comm``),
``torch.distributed``'s by default. Passing another one is how a measurement
changes the communication without touching this module: the chapter's cost
experiment (:mod:`bnrepro.experiments.multidevice`) switches the all-reduces
off to split the extra time of synchronized BN into its compute and its
communication.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn  # all_reduce with a backward pass
from torch import Tensor, nn

from .batchnorm import BatchNorm
from .closed_form import _LOW_PRECISION, _channel_shape, _reduce_dims
from .convert import _convert, is_plain_batchnorm, rebuild_batchnorm

__all__ = ["Communication", "TORCH_DISTRIBUTED", "SyncBatchNormFunction", "SyncBatchNorm", "convert_sync_batchnorm",
           "distributed_world_size"]


def distributed_world_size(group=None) -> int:
    """Processes in ``group`` (the default group), or 1 when torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


class Communication:
    """How synchronized BN exchanges its per-channel sums: ``torch.distributed``'s all-reduce.

    Subclass it to change the communication of one layer (``SyncBatchNorm(..., comm=...)``,
    ``convert_sync_batchnorm(model, comm=...)``), e.g. to count or switch off the all-reduces.
    """

    def all_reduce(self, tensor: Tensor, group=None) -> None:
        """Sum ``tensor`` over the processes of ``group``, in place."""
        dist.all_reduce(tensor, group=group)

    def all_reduce_differentiable(self, tensor: Tensor, group=None) -> Tensor:
        """The sum of ``tensor`` over the processes of ``group``, with a backward pass (second derivatives)."""
        return dist_nn.all_reduce(tensor, group=group)


#: The default communication: ``torch.distributed`` itself.
TORCH_DISTRIBUTED = Communication()


class SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode BN with global batch statistics across the processes of ``group``.

    ``apply(x, weight, bias, eps, group, comm) -> (y, mean, var, count, x_hat, inv_std)``
    (``comm``: the :class:`Communication` that sums over the processes):
    ``mean`` and the biased ``var`` are the global ones (shape ``(C,)``), ``count`` the
    global number of values per channel (a 0-d tensor); none is differentiable.
    ``x_hat`` and ``inv_std`` are returned, as in :class:`bnrepro.nn.batchnorm.BatchNormFunction`,
    so that the backward pass is differentiable (second derivatives). Half-precision
    input is normalized in float32.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps, group, comm):
        dims, shape, C = _reduce_dims(x), _channel_shape(x), x.shape[1]
        xf = x.float() if x.dtype in _LOW_PRECISION else x  # float16 squares overflow past 256
        # Sums accumulate in float64: var = E[x^2] - mean^2 cancels badly in float32
        # when |mean| >> std. Packed into one tensor: one all-reduce, not three.
        stats = torch.cat([xf.sum(dims, dtype=torch.float64), xf.square().sum(dims, dtype=torch.float64),
                           torch.full((1,), x.numel() // C, dtype=torch.float64, device=x.device)])
        comm.all_reduce(stats, group=group)
        count = stats[-1].clone()
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel across all processes, got {int(count)}")
        mean64 = stats[:C] / count
        var64 = (stats[C:2 * C] / count - mean64.square()).clamp_min_(0)
        mean, var = mean64.to(xf.dtype), var64.to(xf.dtype)
        inv_std = torch.rsqrt(var + eps)
        x_hat = (xf - mean.view(shape)) * inv_std.view(shape)
        y = x_hat if weight is None else x_hat * weight.view(shape).to(xf.dtype)
        y = y + bias.view(shape).to(xf.dtype) if bias is not None else y.clone()
        y = y.to(x.dtype)
        ctx.save_for_backward(x_hat, inv_std, weight)
        ctx.group, ctx.comm, ctx.count, ctx.x_dtype = group, comm, float(count), x.dtype
        ctx.b_dtype = None if bias is None else bias.dtype
        ctx.mark_non_differentiable(mean, var, count)
        ctx.set_materialize_grads(False)
        return y, mean, var, count, x_hat, inv_std

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar, _dcount, dx_hat, dinv_std):
        x_hat, inv_std, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dims, shape, C = _reduce_dims(x_hat), _channel_shape(x_hat), x_hat.shape[1]
        dy = torch.zeros_like(x_hat) if dy is None else dy.to(x_hat.dtype)
        sum_dy = dy.sum(dims)
        sum_dy_xhat = (dy * x_hat).sum(dims)
        dx = dgamma = dbeta = None
        if need_x:
            # dx = a*dy - (a/m)*sum(dy) - (a/m)*sum(dy*x_hat)*x_hat with the sums and m
            # global (norm.py derives it): one all-reduce of both sums. Every rank
            # needs input gradients or none does (same model), so the collectives match.
            a = inv_std if weight is None else weight.to(x_hat.dtype) * inv_std
            k = a / ctx.count
            second = dx_hat is not None or dinv_std is not None
            if not second and not torch.is_grad_enabled():
                sums = torch.cat([sum_dy, sum_dy_xhat])
                ctx.comm.all_reduce(sums, group=ctx.group)
                g_dy, g_dy_xhat = sums[:C], sums[C:]
                dx = dy * a.view(shape) - (k * g_dy).view(shape) - x_hat * (k * g_dy_xhat).view(shape)
            else:
                # Differentiable, and with the gradients of the x_hat/inv_std outputs
                # (h = dl/dx_hat, d = dl/dinv_std, s = inv_std; see norm.py):
                #   dx += s*h - (s/m)*sum(h) - (s/m)*(sum(h*x_hat) + s*d)*x_hat,
                # sums and m global, d summed over ranks (every rank's x moves inv_std).
                h = torch.zeros_like(x_hat) if dx_hat is None else dx_hat
                d = torch.zeros_like(inv_std) if dinv_std is None else dinv_std
                local = torch.cat([sum_dy, sum_dy_xhat, h.sum(dims), (h * x_hat).sum(dims) + inv_std * d])
                sums = (ctx.comm.all_reduce_differentiable(local, group=ctx.group) if torch.is_grad_enabled()
                        else _all_reduced(local, ctx.group, ctx.comm))
                g_dy, g_dy_xhat, g_h, g_hx = sums.split(C)
                kh = inv_std / ctx.count
                dx = (dy * a.view(shape) - (k * g_dy).view(shape) - x_hat * (k * g_dy_xhat).view(shape)
                      + h * inv_std.view(shape) - (kh * g_h).view(shape) - x_hat * (kh * g_hx).view(shape))
            dx = dx.to(ctx.x_dtype)
        if need_w and weight is not None:
            dgamma = sum_dy_xhat.to(weight.dtype)  # local: DDP averages it over ranks
        if need_b:
            dbeta = sum_dy.to(ctx.b_dtype)
        return dx, dgamma, dbeta, None, None, None


def _all_reduced(t: Tensor, group, comm: Communication) -> Tensor:
    t = t.clone()
    comm.all_reduce(t, group=group)
    return t


_FALLBACK_NOTED = False


class SyncBatchNorm(BatchNorm):
    """Drop-in for ``nn.BatchNorm1d/2d`` with statistics over all processes of ``process_group``.

    Same parameters, buffers and ``state_dict`` keys as ``nn.BatchNorm2d``. In
    training, with ``torch.distributed`` initialised and more than one process,
    it normalizes with the global batch statistics (:class:`SyncBatchNormFunction`)
    and updates the running statistics with them (unbiased variance over the
    global count), identically on every rank. In eval mode it is plain BN with the
    running statistics. Without an initialised process group (or with one
    process) it falls back to local BN and says so once. ``comm`` carries its all-reduces
    (:class:`Communication`; default ``torch.distributed``).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, process_group=None,
                 device=None, dtype=None, *, bias: bool = True, comm: Communication | None = None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self.process_group = process_group
        self.comm = TORCH_DISTRIBUTED if comm is None else comm

    def forward(self, input: Tensor) -> Tensor:
        use_batch_stats = self.training or not self.track_running_stats
        if not use_batch_stats:
            return super().forward(input)
        if distributed_world_size(self.process_group) == 1:
            _note_fallback()
            return super().forward(input)
        self._check_input(input)
        y, mean, var, count, _, _ = SyncBatchNormFunction.apply(input, self.weight, self.bias, self.eps,
                                                                self.process_group, self.comm)
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                n = float(count)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_((var * (n / (n - 1))).to(self.running_var.dtype), factor)
        return y


def _note_fallback() -> None:
    global _FALLBACK_NOTED
    if not _FALLBACK_NOTED:
        _FALLBACK_NOTED = True
        warnings.warn("SyncBatchNorm: torch.distributed is not initialised (or has one process), so it "
                      "normalizes with the local batch statistics, like plain BatchNorm.", RuntimeWarning,
                      stacklevel=3)


def convert_sync_batchnorm(model: nn.Module, process_group=None, comm: Communication | None = None) -> nn.Module:
    """Replace every ``nn.BatchNorm1d/2d`` and full-mode :class:`BatchNorm` (not ghost BN)
    by a :class:`SyncBatchNorm` with the same state; returns the model.

    Like ``nn.SyncBatchNorm.convert_sync_batchnorm``, but the result runs on
    CPU processes (gloo) as well as GPUs. Other BN layers are left alone with a
    warning. ``comm``: the layers' :class:`Communication` (default ``torch.distributed``).
    Build the optimizer after converting.
    """
    return _convert(model, is_plain_batchnorm,
                    lambda bn: rebuild_batchnorm(bn, SyncBatchNorm, process_group=process_group, comm=comm),
                    lambda m: type(m) is SyncBatchNorm, "convert_sync_batchnorm")
