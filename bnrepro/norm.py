"""Batch normalization written out in plain PyTorch.

Reference: S. Ioffe and C. Szegedy, "Batch Normalization: Accelerating Deep
Network Training by Reducing Internal Covariate Shift", ICML 2015,
arXiv:1502.03167.  "Algorithm 1" is the training-time transform, "Algorithm 2"
the inference network, and Section 3 gives the backward equations.

What is here:

* :func:`batch_norm` -- same semantics as ``torch.nn.functional.batch_norm``;
  in training its backward pass is the paper's closed form
  (:class:`BatchNormFunction`), not autograd run through the forward.
* :class:`BatchNorm` -- a drop-in for ``nn.BatchNorm1d``/``nn.BatchNorm2d``
  (same parameters, buffers and ``state_dict`` keys), plus the ablation modes
  ``"mean_only"`` and ``"var_only"``.
* :class:`FrozenBatchNorm` and :func:`freeze_batchnorm` -- BN with fixed
  statistics, for fine-tuning with small batches.
* :func:`convert_batchnorm`, :func:`momentum_to_decay`,
  :func:`decay_to_momentum` and :func:`bn_speed`.

Speed notes, measured on CPU (torch 2.14; see :func:`bn_speed`):
``torch.var_mean`` uses a scalar Welford kernel and was about 4x slower than
two passes (mean, then the mean of the squared centred values).  The centred
tensor is needed for x_hat anyway, so the two passes cost almost nothing
extra.  Fresh full-size buffers are expensive too (page faults), so each
temporary buffer is reused as the output of a later step.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = [
    "batch_norm", "BatchNormFunction", "BatchNorm", "FrozenBatchNorm",
    "freeze_batchnorm", "convert_batchnorm", "momentum_to_decay",
    "decay_to_momentum", "bn_speed",
]

_MODES = ("full", "mean_only", "var_only")


def _reduce_dims(x: Tensor) -> tuple[int, ...]:
    # Every axis except channels (dim 1).  For conv features the paper's
    # Section 3.2 normalizes over the batch and all spatial positions, so that
    # every location of a feature map gets the same transform.
    return (0,) + tuple(range(2, x.dim()))


def _channel_shape(x: Tensor) -> tuple[int, ...]:
    # Shape (1, C, 1, ...) so that per-channel vectors broadcast against x
    # without copying x into a (C, rest) layout.
    return (1, x.shape[1]) + (1,) * (x.dim() - 2)


def _check_batch(x: Tensor) -> None:
    # With one value per channel the batch variance is 0 and x_hat == 0:
    # training would learn nothing and the unbiased running variance would
    # divide by zero.  PyTorch raises here; we add the likely fix.
    if x.numel() // x.shape[1] <= 1:
        raise ValueError(
            "Expected more than 1 value per channel when training, got input "
            f"size {x.shape}.\nHint: use a batch size > 1 in training, or call "
            "model.eval() to normalize with the running statistics.")


def _centred_stats(x: Tensor, dims: tuple[int, ...]):
    """Return ``(mean, var, x - mean, (x - mean)**2)``; mean/var keep dims.

    Two passes (mean, then mean of squares of the centred values) are as
    stable as Welford and, on CPU, much faster than ``torch.var_mean``.  The
    variance is the biased one, as in the paper's Algorithm 1.
    """
    mean = x.mean(dims, keepdim=True)
    xc = x - mean
    sq = xc.square()
    return mean, sq.mean(dims, keepdim=True), xc, sq


class BatchNormFunction(torch.autograd.Function):
    """Training-mode BN (Algorithm 1) with the backward pass of Section 3.

    ``apply(x, weight, bias, eps) -> (y, batch_mean, batch_var)``; the batch
    statistics (biased variance, shape ``(C,)``) are returned for the
    running-average update and are not differentiable.  ``weight``/``bias``
    may be ``None``.

    The backward pass is differentiable once only: it reuses buffers in place
    for speed, so second derivatives (e.g. gradient penalties) raise a clear
    error. Use ``torch.nn.BatchNorm*`` where you need them.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        dims, shape = _reduce_dims(x), _channel_shape(x)
        mean, var, x_hat, buf = _centred_stats(x, dims)
        inv_std = torch.rsqrt(var + eps)
        x_hat.mul_(inv_std)  # x_hat is a fresh buffer: normalize in place
        # y = gamma * x_hat + beta, written into the free squares buffer.
        if weight is not None and bias is not None:
            y = torch.addcmul(bias.view(shape), x_hat, weight.view(shape), out=buf)
        elif weight is not None:
            y = torch.mul(x_hat, weight.view(shape), out=buf)
        elif bias is not None:
            y = torch.add(x_hat, bias.view(shape), out=buf)
        else:
            # Not `y = x_hat`: an in-place op on y (e.g. ReLU(inplace=True))
            # would then corrupt the tensor saved for backward.
            y = buf.copy_(x_hat)
        C = x.shape[1]
        ctx.save_for_backward(x_hat, inv_std.view(C), weight)
        mean, var = mean.view(C), var.view(C)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, _dmean, _dvar):
        x_hat, inv_std, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dims, shape = _reduce_dims(x_hat), _channel_shape(x_hat)
        m = x_hat.numel() // x_hat.shape[1]  # values per channel
        dx = dgamma = dbeta = None
        # Section 3: dl/dbeta = sum(dy), dl/dgamma = sum(dy * x_hat); dx
        # needs both sums.  Each is one reduction over all dims but channels.
        sum_dy = dy.sum(dims) if (need_x or need_b) else None
        if need_x or need_w:
            buf = dy * x_hat  # reused below as dx's storage
            sum_dy_xhat = buf.sum(dims)
        if need_x:
            # Section 3 chains dl/dx_hat = dy*gamma through dl/dvar and
            # dl/dmu.  Summed up (g = dy*gamma, sums over the m values):
            #   dx = inv_std/m * (m*g - sum(g) - x_hat*sum(g*x_hat))
            #      = a*dy - (a/m)*sum(dy) - (a/m)*sum(dy*x_hat)*x_hat,
            # with a = gamma*inv_std, since gamma is constant per channel.
            # Two passes over full-size data, written into `buf`.
            a = inv_std if weight is None else weight * inv_std
            k = a / m
            torch.addcmul((-k * sum_dy).view(shape), dy, a.view(shape), out=buf)
            dx = buf.addcmul_(x_hat, (-k * sum_dy_xhat).view(shape))
        if need_w and weight is not None:
            dgamma = sum_dy_xhat
        if need_b:
            dbeta = sum_dy
        return dx, dgamma, dbeta, None


def batch_norm(input: Tensor, running_mean: Tensor | None,
               running_var: Tensor | None, weight: Tensor | None = None,
               bias: Tensor | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Batch normalization with the semantics of ``F.batch_norm``.

    ``input`` is ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)``; statistics
    are taken over every axis but dim 1.  In training the batch statistics
    are used and, if given, the running ones are updated in place as
    ``running = (1 - momentum) * running + momentum * batch_stat``.  Note
    that PyTorch's momentum is the weight of the *new* value (Keras calls
    ``1 - momentum`` "momentum"; see :func:`momentum_to_decay`).  Otherwise
    the running statistics are used: the fixed affine map of Algorithm 2.
    """
    if input.dim() < 2:
        raise ValueError(f"batch_norm expects input of shape (N, C, ...), got {tuple(input.shape)}")
    if momentum is None:
        raise TypeError("momentum must be a float; BatchNorm turns momentum=None "
                        "into 1/num_batches_tracked before calling batch_norm")
    C = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is not None and t.numel() != C:
            raise ValueError(f"{name} has {t.numel()} elements, expected {C} (input channels)")
    if training:
        _check_batch(input)
        y, mean, var = BatchNormFunction.apply(input, weight, bias, eps)
        with torch.no_grad():
            if running_mean is not None:
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            if running_var is not None:
                # Algorithm 2 step 10: inference uses the *unbiased* variance
                # estimate, Var[x] = m/(m-1) * E_B[sigma_B^2].
                m = input.numel() // C
                running_var.mul_(1 - momentum).add_(
                    var.to(running_var.dtype), alpha=momentum * m / (m - 1))
        return y
    if running_mean is None or running_var is None:
        raise ValueError("running_mean and running_var must be given in evaluation mode "
                         "(training=False)")
    return _affine_eval(input, running_mean, running_var, weight, bias, eps)


def _affine_eval(x, mean, var, weight, bias, eps):
    # Algorithm 2, step 11: y = gamma/sqrt(Var+eps) * x + (beta - gamma*E/sqrt(Var+eps)).
    # Folding into per-channel (scale, shift) makes it one pass over x.
    shape = _channel_shape(x)
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return torch.addcmul(shift.view(shape).to(x.dtype), x, scale.view(shape).to(x.dtype))


class BatchNorm(nn.Module):
    """Drop-in for ``nn.BatchNorm1d``/``nn.BatchNorm2d`` (2-D, 3-D, 4-D input).

    Same parameters (``weight``, ``bias``), buffers (``running_mean``,
    ``running_var``, ``num_batches_tracked``) and ``state_dict`` keys as the
    PyTorch modules, so state dicts load both ways.  ``momentum=None`` gives
    a cumulative moving average; ``track_running_stats=False`` always uses
    batch statistics.  ``bias=False`` (keyword, as in recent PyTorch) keeps
    gamma but drops beta.

    ``mode`` chooses an ablation (d2l exercises): ``"full"`` (standard BN),
    ``"mean_only"`` (subtract the batch mean; no division by the std) or
    ``"var_only"`` (divide by the batch std; no centring).  In eval they use
    the matching running statistic.  The two ablations backpropagate through
    plain autograd: they are teaching tools, not fast paths.
    """

    _version = 2  # same as nn.BatchNorm*: version 2 added num_batches_tracked

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 device=None, dtype=None, *, bias: bool = True, mode: str = "full"):
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        factory = {"device": device, "dtype": dtype}
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats, self.mode = affine, track_running_stats, mode
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            if bias:
                self.bias = nn.Parameter(torch.empty(num_features, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked", torch.tensor(
                0, dtype=torch.long, device=device))
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

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

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() not in (2, 3, 4):
            raise ValueError(f"expected 2D, 3D or 4D input (got {input.dim()}D input)")
        use_batch_stats = self.training or not self.track_running_stats
        if use_batch_stats:
            _check_batch(input)  # before num_batches_tracked is touched
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        if self.mode == "full":
            return batch_norm(input, self.running_mean, self.running_var, self.weight,
                              self.bias, use_batch_stats, factor, self.eps)
        return self._ablation(input, use_batch_stats, factor)

    def _ablation(self, x: Tensor, use_batch_stats: bool, factor: float) -> Tensor:
        dims, shape = _reduce_dims(x), _channel_shape(x)
        if use_batch_stats:
            mean, var, _, _ = _centred_stats(x, dims)  # autograd tracks these
            if self.training and self.track_running_stats:
                m = x.numel() // x.shape[1]
                with torch.no_grad():
                    self.running_mean.lerp_(mean.view(-1).to(self.running_mean.dtype), factor)
                    self.running_var.lerp_((var.view(-1) * (m / (m - 1))).to(
                        self.running_var.dtype), factor)
        else:
            mean, var = self.running_mean.view(shape), self.running_var.view(shape)
        if self.mode == "mean_only":
            y = x - mean
        else:  # var_only: x / sqrt(var + eps), where var is taken about the mean
            y = x * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(shape)
        if self.bias is not None:
            y = y + self.bias.view(shape)
        return y


class FrozenBatchNorm(nn.Module):
    """BN with fixed statistics and affine parameters, all stored as buffers.

    Like ``torchvision.ops.FrozenBatchNorm2d``: the inference transform of
    Algorithm 2 as a constant per-channel affine map.  Used to fine-tune with
    batches too small for reliable batch statistics.  ``.train()`` does not
    change it and it has no parameters; gradients still reach its input.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features, self.eps = num_features, eps
        self.register_buffer("weight", torch.ones(num_features, **factory))
        self.register_buffer("bias", torch.zeros(num_features, **factory))
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory))

    @classmethod
    def from_module(cls, bn: nn.Module) -> "FrozenBatchNorm":
        """Freeze any ``nn.BatchNorm*`` or :class:`BatchNorm` (in its eval behaviour)."""
        if getattr(bn, "running_mean", None) is None:
            raise ValueError(f"{type(bn).__name__} has no running statistics "
                             "(track_running_stats=False): there is nothing to freeze")
        rm, rv = bn.running_mean.detach(), bn.running_var.detach()
        frozen = cls(bn.num_features, bn.eps, device=rm.device, dtype=rm.dtype)
        mode = getattr(bn, "mode", "full")
        with torch.no_grad():
            if bn.weight is not None:
                frozen.weight.copy_(bn.weight)
            if bn.bias is not None:
                frozen.bias.copy_(bn.bias)
            if mode != "var_only":
                frozen.running_mean.copy_(rm)
            if mode != "mean_only":
                frozen.running_var.copy_(rv)
            else:
                frozen.eps = 0.0  # no division: var = 1, eps = 0 exactly
        return frozen

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Accept BN state dicts: the counter means nothing once frozen.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        return _affine_eval(x, self.running_mean, self.running_var, self.weight,
                            self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def _replace(model: nn.Module, match, make, memo: dict) -> nn.Module:
    # Recursive module swap; `memo` keeps a module shared by two parents shared.
    if match(model):
        if id(model) not in memo:
            memo[id(model)] = make(model)
        return memo[id(model)]
    for name, child in model.named_children():
        new = _replace(child, match, make, memo)
        if new is not child:
            setattr(model, name, new)
    return model


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BN module (any ``nn.BatchNorm*``, :class:`BatchNorm`) by
    a :class:`FrozenBatchNorm`; returns the model (a new module if the model
    itself is a BN)."""
    is_bn = lambda m: isinstance(m, (nn.modules.batchnorm._BatchNorm, BatchNorm))
    return _replace(model, is_bn, FrozenBatchNorm.from_module, {})


def rebuild_batchnorm(bn: nn.Module, cls: type, **extra) -> nn.Module:
    """A ``cls`` BN layer (``BatchNorm`` or a subclass) with ``bn``'s settings,
    state_dict, ``requires_grad`` flags and train/eval mode; ``extra`` goes to
    ``cls`` (e.g. ``ghost_batch_size``). Shared by every converter."""
    ref = bn.weight if bn.weight is not None else bn.running_mean
    kw = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    new = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
              track_running_stats=bn.track_running_stats, bias=bn.bias is not None or not bn.affine,
              **extra, **kw)
    new.load_state_dict(bn.state_dict())
    for name, p in new.named_parameters():
        p.requires_grad_(getattr(bn, name).requires_grad)
    return new.train(bn.training)


def is_plain_batchnorm(m: nn.Module) -> bool:
    """``nn.BatchNorm1d/2d`` or a full-mode :class:`BatchNorm` -- exactly those types, not subclasses
    (a model's own ghost or noisy BN is not plain BN, and converting it would change the model)."""
    return type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) or (type(m) is BatchNorm and m.mode == "full")


def convert_batchnorm(model: nn.Module) -> nn.Module:
    """Replace each ``nn.BatchNorm1d``/``nn.BatchNorm2d`` by :class:`BatchNorm`
    with the same state_dict and train/eval flag; returns the model.

    Parameters are copied, so build the optimizer after converting.
    """
    is_bn = lambda m: isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))
    return _replace(model, is_bn, lambda bn: rebuild_batchnorm(bn, BatchNorm), {})


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


def bn_speed(shape=(64, 32, 28, 28), repeats: int = 30, warmup: int = 5,
             device: str = "cpu", seed: int = 0, threads: int | None = None) -> dict:
    """Median time (ms) of forward + backward in training mode: ours vs PyTorch.

    Both modules see the same input and upstream gradient; the runs alternate
    so that drift (turbo, other load) hits both alike.  ``threads`` sets the
    CPU intra-op thread count for the measurement only (``None``: as is).
    """
    if threads is not None:
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return bn_speed(shape, repeats, warmup, device, seed)
        finally:
            torch.set_num_threads(old)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(device).requires_grad_()
    dy = torch.randn(shape, generator=gen).to(device)
    ref_cls = nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d
    mods = {"ours": BatchNorm(shape[1], device=device),
            "torch": ref_cls(shape[1], device=device)}
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def step(mod):
        x.grad = None
        mod.zero_grad(set_to_none=True)
        sync()
        t0 = time.perf_counter()
        mod(x).backward(dy)
        sync()
        return time.perf_counter() - t0

    times = {k: [] for k in mods}
    for i in range(warmup + repeats):
        for k, mod in mods.items():
            t = step(mod)
            if i >= warmup:
                times[k].append(t)
    ours, ref = (statistics.median(times[k]) * 1e3 for k in ("ours", "torch"))
    return {"shape": tuple(shape), "ours_ms": ours, "torch_ms": ref, "ratio": ours / ref,
            "threads": torch.get_num_threads(), "device": str(device)}


def __getattr__(name: str):
    """Ghost BN is a mode of this module's :class:`BatchNorm` that lives in :mod:`bnrepro.ghost`
    (it builds on this module); ``from bnrepro.norm import GhostBatchNorm`` works too."""
    if name in ("GhostBatchNorm", "convert_ghost_batchnorm"):
        from . import ghost

        return getattr(ghost, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
