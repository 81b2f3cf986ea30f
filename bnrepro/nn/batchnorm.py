"""Batch normalization written out in plain PyTorch: the modules.

Reference: S. Ioffe and C. Szegedy, "Batch Normalization: Accelerating Deep
Network Training by Reducing Internal Covariate Shift", ICML 2015,
arXiv:1502.03167.

* :class:`BatchNorm` (and :class:`BatchNorm1d`, :class:`BatchNorm2d`) -- a
  drop-in for ``nn.BatchNorm1d``/``nn.BatchNorm2d`` (a ``_BatchNorm`` subclass
  with the same parameters, buffers, ``state_dict`` keys and input checks;
  second derivatives, half precision and ``torch.func`` work), plus the
  ablation modes ``"mean_only"`` and ``"var_only"``.  In training it runs
  :func:`bnrepro.nn.functional.batch_norm`, whose backward pass is the
  paper's closed form (:mod:`bnrepro.nn.closed_form`).
* :func:`is_batchnorm` -- the package's one test for "is this a BN layer".
* :func:`momentum_to_decay`, :func:`decay_to_momentum` -- PyTorch's momentum
  in Keras/TensorFlow terms and back.

Converting a model's layers is :mod:`bnrepro.nn.convert`; BN with fixed
statistics is :mod:`bnrepro.nn.frozen_bn`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .closed_form import _LOW_PRECISION, _centred_stats, _channel_shape, _reduce_dims
from .functional import _affine_empty, _check_batch, _check_dtypes, batch_norm

__all__ = ["BatchNorm", "BatchNorm1d", "BatchNorm2d", "is_batchnorm", "momentum_to_decay",
           "decay_to_momentum"]

_MODES = ("full", "mean_only", "var_only")


def is_batchnorm(module: nn.Module) -> bool:
    """True for a layer that normalizes with batch statistics in training: PyTorch's
    ``BatchNorm1d/2d/3d``, ``SyncBatchNorm`` and lazy variants, and every BN layer of this
    package (:class:`BatchNorm`, ghost BN, synchronized BN) -- all subclasses of PyTorch's
    ``_BatchNorm``.  Not :class:`~bnrepro.nn.frozen_bn.FrozenBatchNorm`, whose statistics are fixed.

    The package's one "is this a BN layer" test; callers add what they need on top
    (running statistics, affine parameters)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


_INPUT_SHAPES = {2: "(N, C)", 3: "(N, C, L)", 4: "(N, C, H, W)"}


class BatchNorm(nn.modules.batchnorm._BatchNorm):
    """Drop-in for ``nn.BatchNorm1d``/``nn.BatchNorm2d`` (2-D, 3-D, 4-D input).

    A subclass of PyTorch's ``_BatchNorm``, so PyTorch's BN utilities treat it
    as BN (``torch.optim.swa_utils.update_bn``,
    ``nn.SyncBatchNorm.convert_sync_batchnorm``,
    ``torch.func.replace_all_batch_norm_modules_``, ``isinstance`` checks).
    Same parameters (``weight``, ``bias``), buffers (``running_mean``,
    ``running_var``, ``num_batches_tracked``) and ``state_dict`` keys as the
    PyTorch modules, so state dicts load both ways.  ``momentum=None`` gives
    a cumulative moving average; ``track_running_stats=False`` always uses
    batch statistics.  ``bias=False`` (keyword, as in recent PyTorch) keeps
    gamma but drops beta.  :class:`BatchNorm1d` and :class:`BatchNorm2d` check
    the input's rank as PyTorch's classes do; this class accepts all three.

    ``mode`` chooses an ablation (d2l exercises): ``"full"`` (standard BN),
    ``"mean_only"`` (subtract the batch mean; no division by the std) or
    ``"var_only"`` (divide by the batch std; no centring).  In eval they use
    the matching running statistic.  The two ablations backpropagate through
    plain autograd: they are teaching tools, not fast paths.
    """

    _version = 2  # same as nn.BatchNorm*: version 2 added num_batches_tracked
    _input_dims: tuple[int, ...] = (2, 3, 4)  # input ranks accepted (an instance may narrow them)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 device=None, dtype=None, *, bias: bool = True, mode: str = "full"):
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self.mode = mode

    def reset_parameters(self) -> None:
        # gamma = 1, beta = 0 start as the identity transform (Section 3).
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        s = (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
             f"affine={self.affine}, bias={self.bias is not None}, "
             f"track_running_stats={self.track_running_stats}")
        return s if self.mode == "full" else s + f", mode={self.mode!r}"

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        # Old (version < 2) BN checkpoints have no num_batches_tracked.
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every submodule before compiling.
        raise RuntimeError(
            f"{type(self).__name__} cannot be compiled by torch.jit.script: its closed-form backward pass "
            "is a Python torch.autograd.Function, which TorchScript does not support. Use "
            "torch.compile(model) instead (it keeps the closed form); for a TorchScript export, load this "
            "layer's state_dict into an nn.BatchNorm1d/2d.")

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in self._input_dims:
            want = " or ".join(f"{d}D" for d in self._input_dims)
            hint = ""
            if input.dim() in _INPUT_SHAPES:
                other = "BatchNorm2d" if input.dim() == 4 else "BatchNorm1d"
                hint = f"; for {_INPUT_SHAPES[input.dim()]} input use {other}"
            raise ValueError(f"{type(self).__name__} expected {want} input (got {input.dim()}D input of "
                             f"shape {tuple(input.shape)}){hint}")

    def _check_input(self, input: Tensor) -> None:
        """PyTorch's checks, before any state changes: rank, channels, dtypes."""
        self._check_input_dim(input)
        if input.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) got an input with {input.shape[1]} "
                             f"channels in dim 1 (shape {tuple(input.shape)}); build it with "
                             f"num_features={input.shape[1]} or fix the layer before it")
        _check_dtypes(type(self).__name__, input, self.weight, self.bias, self.running_mean, self.running_var)

    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        # As nn.BatchNorm*: batch statistics in training, and in eval when there are
        # no running statistics; these are updated only in training.
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        update = self.training and self.track_running_stats
        if use_batch_stats:
            _check_batch(input)  # before num_batches_tracked is touched
        factor = 0.0 if self.momentum is None else self.momentum
        if update and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        if use_batch_stats and input.numel() == 0:
            return _affine_empty(input, self.weight, self.bias)
        if self.mode == "full":
            keep = update or not use_batch_stats
            return batch_norm(input, self.running_mean if keep else None, self.running_var if keep else None,
                              self.weight, self.bias, use_batch_stats, factor, self.eps)
        return self._ablation(input, use_batch_stats, update, factor)

    def _ablation(self, x: Tensor, use_batch_stats: bool, update: bool, factor: float) -> Tensor:
        dims, shape = _reduce_dims(x), _channel_shape(x)
        xf = x.float() if x.dtype in _LOW_PRECISION else x  # statistics in float32, as in full BN
        if use_batch_stats:
            mean, var, _, _ = _centred_stats(xf, dims)  # autograd tracks these
            if update:
                m = x.numel() // x.shape[1]
                with torch.no_grad():
                    self.running_mean.lerp_(mean.view(-1).to(self.running_mean.dtype), factor)
                    self.running_var.lerp_((var.view(-1) * (m / (m - 1))).to(
                        self.running_var.dtype), factor)
        else:
            mean, var = self.running_mean.view(shape), self.running_var.view(shape)
        if self.mode == "mean_only":
            y = xf - mean
        else:  # var_only: x / sqrt(var + eps), where var is taken about the mean
            y = xf * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(shape)
        if self.bias is not None:
            y = y + self.bias.view(shape)
        return y.to(x.dtype)


class BatchNorm1d(BatchNorm):
    """:class:`BatchNorm` for ``(N, C)`` and ``(N, C, L)`` input only, like ``nn.BatchNorm1d``."""

    _input_dims = (2, 3)


class BatchNorm2d(BatchNorm):
    """:class:`BatchNorm` for ``(N, C, H, W)`` input only, like ``nn.BatchNorm2d``."""

    _input_dims = (4,)


def _check_unit(name: str, value: float) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return v


def momentum_to_decay(momentum: float) -> float:
    """PyTorch ``momentum`` (weight of the new batch statistic) to the
    Keras/TensorFlow ``BatchNormalization(momentum=...)`` decay (weight of the
    old running value): ``0.1 -> 0.9``."""
    return 1.0 - _check_unit("momentum", momentum)


def decay_to_momentum(decay: float) -> float:
    """Keras/TensorFlow decay (their "momentum") to PyTorch momentum: ``0.9 -> 0.1``."""
    return 1.0 - _check_unit("decay", decay)
