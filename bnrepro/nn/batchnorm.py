"""Batch normalization written out in plain PyTorch.

Reference: S. Ioffe and C. Szegedy, "Batch Normalization: Accelerating Deep
Network Training by Reducing Internal Covariate Shift", ICML 2015,
arXiv:1502.03167.  "Algorithm 1" is the training-time transform, "Algorithm 2"
the inference network, and Section 3 gives the backward equations.

What is here:

* :func:`batch_norm` -- same semantics as ``torch.nn.functional.batch_norm``;
  in training its backward pass is the paper's closed form
  (:class:`BatchNormFunction`), not autograd run through the forward.
* :class:`BatchNorm` (and :class:`BatchNorm1d`, :class:`BatchNorm2d`) -- a
  drop-in for ``nn.BatchNorm1d``/``nn.BatchNorm2d`` (a ``_BatchNorm`` subclass
  with the same parameters, buffers, ``state_dict`` keys and input checks;
  second derivatives, half precision and ``torch.func`` work), plus the
  ablation modes ``"mean_only"`` and ``"var_only"``.
* :class:`FrozenBatchNorm` and :func:`freeze_batchnorm` -- BN with fixed
  statistics, for fine-tuning with small batches.
* :func:`convert_batchnorm`, :func:`momentum_to_decay`,
  :func:`decay_to_momentum`, :func:`bn_speed` and :func:`use_fused_kernels`.

Speed notes, measured on CPU (torch 2.14; see :func:`bn_speed`):
``torch.var_mean`` uses a scalar Welford kernel and was about 4x slower than
two passes (mean, then the mean of the squared centred values).  The centred
tensor is needed for x_hat anyway, so the two passes cost almost nothing
extra.  Fresh full-size buffers are expensive too (page faults), so each
temporary buffer is reused as the output of a later step.  ``addcmul`` with
two per-channel operands falls back to a scalar loop (about 5x slower), so
``y = beta + gamma * x_hat`` is a fill with beta then an in-place ``addcmul_``.
Eager, that is still about 8 passes over memory forward and 6 backward
against PyTorch's 2-3 fused ones; :func:`use_fused_kernels` compiles the same
closed form into fused kernels.
"""

from __future__ import annotations

import statistics
import time
import warnings

import torch
from torch import Tensor, nn

__all__ = [
    "batch_norm", "BatchNormFunction", "BatchNorm", "BatchNorm1d", "BatchNorm2d", "FrozenBatchNorm",
    "freeze_batchnorm", "convert_batchnorm", "momentum_to_decay",
    "decay_to_momentum", "bn_speed", "use_fused_kernels",
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
    # divide by zero.  PyTorch raises here; we add the likely fix.  (An empty
    # batch is no error: like PyTorch, it gives an empty output.)
    if x.numel() > 0 and x.numel() // x.shape[1] == 1:
        raise ValueError(
            "Expected more than 1 value per channel when training, got input "
            f"size {x.shape}.\nHint: use a batch size > 1 in training, or call "
            "model.eval() to normalize with the running statistics.")


def _check_dtypes(who: str, x: Tensor, *tensors: Tensor | None) -> None:
    # PyTorch's rule: parameters and running statistics have the input's
    # dtype, except that float16/bfloat16 input may meet float32 ones (its
    # statistics are computed in float32 anyway).  Anything else is a mistake
    # that would otherwise be silently rounded away (float64 data through a
    # float32 layer).
    if not x.is_floating_point():
        raise TypeError(f"{who} expects a floating-point input, got {x.dtype}; convert it, e.g. x.float()")
    allowed = (x.dtype, torch.float32) if x.dtype in _LOW_PRECISION else (x.dtype,)
    for t in tensors:
        if t is not None and t.dtype not in allowed:
            raise RuntimeError(
                f"{who}: the input is {x.dtype} but the parameters/running statistics are {t.dtype}. "
                f"Convert one to the other (the module with .to({x.dtype}), or the input with "
                f".to({t.dtype})); only float16/bfloat16 input may meet float32 parameters.")


def _affine_empty(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    # An empty batch has no statistics; like PyTorch, return an empty output
    # that is still connected to weight and bias (their gradients are zeros).
    shape = _channel_shape(x)
    y = x.clone() if weight is None else x * weight.view(shape).to(x.dtype)
    return y if bias is None else y + bias.view(shape).to(x.dtype)


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


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _transformed(*tensors: Tensor | None) -> bool:
    # torch.func transforms (vmap, grad, jvp) wrap tensors; their batching rules
    # refuse ``out=`` arguments, so the buffer-reusing fast path is skipped there.
    # (torch.compile cannot trace the check, and its fake tensors are never wrapped.)
    if torch.compiler.is_compiling():
        return False
    return any(t is not None and torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors)


def _fill(buf: Tensor, per_channel: Tensor) -> Tensor:
    # buf[...] = per_channel, broadcast.  ``addcmul(b, x, w)`` with *two*
    # per-channel operands runs PyTorch's scalar CPU loop (the vectorized loop
    # allows one broadcast operand), about 5x slower than this fill followed by
    # ``buf.addcmul_(x, w)``; both round once per element (a fused multiply-add),
    # so the results are bit for bit the same.
    return buf.copy_(per_channel.expand_as(buf))


class BatchNormFunction(torch.autograd.Function):
    """Training-mode BN (Algorithm 1) with the backward pass of Section 3.

    ``apply(x, weight, bias, eps) -> (y, batch_mean, batch_var, x_hat, inv_std)``;
    the batch statistics (biased variance, shape ``(C,)``) are returned for
    the running-average update and are not differentiable.  ``x_hat`` (the
    normalized input) and ``inv_std = 1/sqrt(batch_var + eps)`` are returned
    because the backward pass is written in terms of them: as outputs of this
    function they carry the way back to ``x``, which makes the backward pass
    itself differentiable (second derivatives: Hessian-vector products,
    gradient penalties, ``gradgradcheck``).  ``weight``/``bias`` may be ``None``.

    Half-precision inputs (float16, bfloat16) are normalized in float32, as
    PyTorch does: ``(x - mean)**2`` overflows float16 for ``|x - mean| > 256``.
    ``y`` comes back in the input's dtype; the statistics, ``x_hat`` and
    ``inv_std`` in float32.  ``setup_context``, ``jvp`` and a generated vmap
    rule make it work under ``torch.func`` (``grad``, ``vmap``, ``jvp``,
    ``jacrev``, ``hessian``).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, eps):
        C = x.shape[1]
        dims, shape = _reduce_dims(x), _channel_shape(x)
        if x.dtype in _LOW_PRECISION or _transformed(x, weight, bias):
            return _forward_out_of_place(x, weight, bias, eps)
        if _FUSED["on"]:
            return _fused("forward")(x, weight, bias, eps)
        mean, var, x_hat, buf = _centred_stats(x, dims)
        inv_std = torch.rsqrt(var + eps)
        x_hat.mul_(inv_std)  # x_hat is a fresh buffer: normalize in place
        # y = gamma * x_hat + beta, written into the free squares buffer.
        if weight is not None and bias is not None:
            y = _fill(buf, bias.view(shape)).addcmul_(x_hat, weight.view(shape))
        elif weight is not None:
            y = torch.mul(x_hat, weight.view(shape), out=buf)
        elif bias is not None:
            y = torch.add(x_hat, bias.view(shape), out=buf)
        else:
            # Not `y = x_hat`: an in-place op on y (e.g. ReLU(inplace=True))
            # would then corrupt the tensor saved for backward.
            y = buf.copy_(x_hat)
        return y, mean.view(C), var.view(C), x_hat, inv_std.view(C)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, _eps = inputs
        _y, mean, var, x_hat, inv_std = output
        ctx.mark_non_differentiable(mean, var)
        ctx.set_materialize_grads(False)  # unused outputs (x_hat, inv_std) get None, not zeros
        ctx.save_for_backward(x_hat, inv_std, weight)
        ctx.save_for_forward(x_hat, inv_std, weight)
        ctx.x_dtype = x.dtype
        ctx.b_dtype = None if bias is None else bias.dtype

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar, dx_hat, dinv_std):
        x_hat, inv_std, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if (dx_hat is None and dinv_std is None and dy is not None and dy.dtype == x_hat.dtype
                and not torch.is_grad_enabled() and not _transformed(dy, x_hat, weight)):
            if _FUSED["on"]:
                return _fused("backward")(dy, x_hat, inv_std, weight, need_x, need_w, need_b) + (None,)
            return _closed_form_backward(dy, x_hat, inv_std, weight, need_x, need_w, need_b)
        return _differentiable_backward(ctx, dy, dx_hat, dinv_std, x_hat, inv_std, weight,
                                        need_x, need_w, need_b)

    @staticmethod
    def jvp(ctx, tx, tw, tb, _teps):
        # Forward mode (torch.func.jvp, forward-over-reverse Hessians): the
        # directional derivative of Algorithm 1.  With t = tx, s = inv_std:
        #   t_xhat = s * (t - mean(t) - x_hat * mean(x_hat * t))
        #   t_s    = -s**2 * mean(x_hat * t)      (d s = -s**3/2 * d var)
        #   t_y    = gamma * t_xhat + t_gamma * x_hat + t_beta
        x_hat, inv_std, weight = ctx.saved_tensors
        dims, shape = _reduce_dims(x_hat), _channel_shape(x_hat)
        t_y = t_xhat = t_inv = None
        if tx is not None:
            tx = tx.to(x_hat.dtype)
            c = (x_hat * tx).mean(dims, keepdim=True)
            s = inv_std.view(shape)
            t_xhat = s * (tx - tx.mean(dims, keepdim=True) - x_hat * c)
            t_inv = (-s * s * c).view(-1)
            t_y = t_xhat if weight is None else t_xhat * weight.view(shape).to(x_hat.dtype)
        if tw is not None:
            t = x_hat * tw.view(shape).to(x_hat.dtype)
            t_y = t if t_y is None else t_y + t
        if tb is not None:
            t = tb.view(shape).to(x_hat.dtype)
            t_y = t.expand_as(x_hat).clone() if t_y is None else t_y + t
        return t_y.to(ctx.x_dtype), None, None, t_xhat, t_inv


def _forward_out_of_place(x, weight, bias, eps):
    """Algorithm 1 without buffer reuse: for half precision (computed in float32)
    and under ``torch.func`` transforms.  Same arithmetic as the fast path."""
    C, dims, shape = x.shape[1], _reduce_dims(x), _channel_shape(x)
    xf = x.float() if x.dtype in _LOW_PRECISION else x
    mean = xf.mean(dims, keepdim=True)
    xc = xf - mean
    var = xc.square().mean(dims, keepdim=True)
    inv_std = torch.rsqrt(var + eps)
    x_hat = xc * inv_std
    if weight is not None and bias is not None:
        y = torch.addcmul(bias.view(shape).to(xf.dtype), x_hat, weight.view(shape).to(xf.dtype))
    elif weight is not None:
        y = x_hat * weight.view(shape).to(xf.dtype)
    elif bias is not None:
        y = x_hat + bias.view(shape).to(xf.dtype)
    else:
        y = x_hat.clone()
    return y.to(x.dtype), mean.view(C), var.view(C), x_hat, inv_std.view(C)


def _closed_form_backward(dy, x_hat, inv_std, weight, need_x, need_w, need_b):
    """The first-order backward pass of Section 3, reusing one buffer (fast path)."""
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
        # Written into `buf`: a fill with the per-channel constant, then two
        # in-place multiply-adds (see _fill for why not one addcmul).
        a = inv_std if weight is None else weight * inv_std
        k = a / m
        _fill(buf, (-k * sum_dy).view(shape)).addcmul_(dy, a.view(shape))
        dx = buf.addcmul_(x_hat, (-k * sum_dy_xhat).view(shape))
    if need_w and weight is not None:
        dgamma = sum_dy_xhat
    if need_b:
        dbeta = sum_dy
    return dx, dgamma, dbeta, None


def _backward_out_of_place(dy, x_hat, inv_std, weight, need_x: bool, need_w: bool, need_b: bool):
    """:func:`_closed_form_backward`'s formula without buffer reuse, for ``torch.compile``
    (which fuses it into one reduction pass and one elementwise pass)."""
    dims, shape = _reduce_dims(x_hat), _channel_shape(x_hat)
    m = x_hat.numel() // x_hat.shape[1]
    sum_dy, sum_dy_xhat = dy.sum(dims), (dy * x_hat).sum(dims)
    a = inv_std if weight is None else weight * inv_std
    k = a / m
    dx = dy * a.view(shape) - (k * sum_dy).view(shape) - x_hat * (k * sum_dy_xhat).view(shape)
    return (dx if need_x else None, sum_dy_xhat if need_w and weight is not None else None,
            sum_dy if need_b else None)


# Compiled closed form (see use_fused_kernels): off by default.
_FUSED: dict = {"on": False}


def use_fused_kernels(enabled: bool = True) -> bool:
    """Run the closed form -- training-mode forward and first-order backward --
    as kernels generated by ``torch.compile`` instead of one PyTorch op per line;
    returns the previous setting.

    Eager, each line of Algorithm 1 and of Section 3's backward pass is a
    separate pass over memory (about 8 forward and 6 backward), where PyTorch's
    native kernel makes 2-3; compiled, the closed form becomes one reduction
    and one elementwise kernel each way, like PyTorch's.  Off by default: the
    first call per input shape compiles for tens of seconds (needs a C++
    compiler on CPU), and the results differ from the eager ones in the last
    bits (another summation order), so stored results were computed without it.
    Second derivatives, half precision and ``torch.func`` keep the eager code.
    """
    previous = _FUSED["on"]
    _FUSED["on"] = bool(enabled)
    return previous


def _fused(which: str):
    if which not in _FUSED:
        fn = _forward_out_of_place if which == "forward" else _backward_out_of_place
        _FUSED[which] = torch.compile(fn, dynamic=None)
    return _FUSED[which]


def _differentiable_backward(ctx, dy, dx_hat, dinv_std, x_hat, inv_std, weight, need_x, need_w, need_b):
    """The same closed form, out of place, so that autograd can differentiate it.

    Used when a graph of the backward pass is recorded (``create_graph=True``,
    ``torch.func``), for half-precision inputs, and when gradients arrive for
    the ``x_hat``/``inv_std`` outputs (the second-order pass).  With
    g = gamma*dy + dl/dx_hat, d = dl/dinv_std and s = inv_std, Section 3's
    chain gives (sums over the m values of a channel)
      dx = s*g - (s/m)*sum(g) - (s/m)*(sum(g*x_hat) + s*d)*x_hat,
    since d x_hat_j/d x_i = s*(delta_ij - 1/m) - s*x_hat_i*x_hat_j/m and
    d s/d x_i = -s**2 * x_hat_i/m.  With dl/dx_hat = 0 and d = 0 this is the
    fast path's formula (g = gamma*dy).
    """
    dims, shape = _reduce_dims(x_hat), _channel_shape(x_hat)
    m = x_hat.numel() // x_hat.shape[1]
    if dy is not None:
        dy = dy.to(x_hat.dtype)
    w = None if weight is None else weight.to(x_hat.dtype)
    dx = dgamma = dbeta = None
    if need_x:
        g = None
        if dy is not None:
            g = dy if w is None else dy * w.view(shape)
        if dx_hat is not None:
            g = dx_hat if g is None else g + dx_hat
        k = inv_std / m
        if g is not None:
            s2 = (g * x_hat).sum(dims)
            if dinv_std is not None:
                s2 = s2 + inv_std * dinv_std
            dx = (inv_std.view(shape) * g - (k * g.sum(dims)).view(shape)
                  - x_hat * (k * s2).view(shape))
        elif dinv_std is not None:
            dx = -x_hat * (k * inv_std * dinv_std).view(shape)
        if dx is not None:
            dx = dx.to(ctx.x_dtype)
    if need_w and weight is not None and dy is not None:
        dgamma = (dy * x_hat).sum(dims).to(weight.dtype)
    if need_b and dy is not None:
        dbeta = dy.sum(dims).to(ctx.b_dtype)
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
    _check_dtypes("batch_norm", input, running_mean, running_var, weight, bias)
    if training:
        if input.numel() == 0:
            return _affine_empty(input, weight, bias)  # running statistics unchanged, as in PyTorch
        _check_batch(input)
        y, mean, var, _, _ = BatchNormFunction.apply(input, weight, bias, eps)
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
    # Half-precision input is transformed in float32 (its parameters may be float32).
    shape = _channel_shape(x)
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    xf = x.float() if x.dtype in _LOW_PRECISION else x
    return torch.addcmul(shift.view(shape).to(xf.dtype), xf, scale.view(shape).to(xf.dtype)).to(x.dtype)


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


def _replace(model: nn.Module, match, make, memo: dict, leave=None, left: list | None = None,
             prefix: str = "") -> nn.Module:
    # Recursive module swap.  `memo` maps every module seen to its replacement, so a
    # module shared by two parents -- or held under two names by one parent (weight
    # tying) -- becomes one new module everywhere.  Children are read from `_modules`,
    # not `named_children()`, which lists a module held under two names only once.
    # `leave(m)`: a BN layer this swap must not touch; its name goes into `left`.
    if id(model) in memo:
        return memo[id(model)]
    if match(model):
        new = make(model)
    else:
        if leave is not None and leave(model):
            left.append(f"{prefix.rstrip('.') or 'the model'} ({type(model).__name__})")
        for name, child in list(model._modules.items()):
            if child is not None:
                new_child = _replace(child, match, make, memo, leave, left, f"{prefix}{name}.")
                if new_child is not child:
                    setattr(model, name, new_child)
        new = model
    memo[id(model)] = new
    return new


def _convert(model: nn.Module, match, make, ours, who: str) -> nn.Module:
    """``_replace`` for the converters: other BN layers (a user's subclass of
    ``nn.BatchNorm2d``, ``nn.SyncBatchNorm``, an ablation mode...) are left
    alone -- replacing them would silently drop their own behaviour -- with a
    warning naming them; ``ours(m)`` marks layers already of the wanted kind."""
    left: list[str] = []
    leave = lambda m: isinstance(m, nn.modules.batchnorm._BatchNorm) and not ours(m)
    model = _replace(model, match, make, {}, leave, left)
    if left:
        names = ", ".join(left)
        warnings.warn(f"{who} left {len(left)} BN layer(s) alone ({names}): they are not plain "
                      "nn.BatchNorm1d/2d, and replacing them would drop what they do differently. "
                      "To convert one anyway: bnrepro.nn.batchnorm.rebuild_batchnorm(layer, cls).",
                      UserWarning, stacklevel=3)
    return model


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BN module (any ``nn.BatchNorm*``, :class:`BatchNorm`) by
    a :class:`FrozenBatchNorm`; returns the model (a new module if the model
    itself is a BN)."""
    is_bn = lambda m: isinstance(m, (nn.modules.batchnorm._BatchNorm, BatchNorm))
    return _replace(model, is_bn, FrozenBatchNorm.from_module, {})


# The input ranks PyTorch's BN classes accept, carried over by the converters.
_TORCH_INPUT_DIMS = {nn.BatchNorm1d: BatchNorm1d._input_dims, nn.BatchNorm2d: BatchNorm2d._input_dims}


def rebuild_batchnorm(bn: nn.Module, cls: type, **extra) -> nn.Module:
    """A ``cls`` BN layer (``BatchNorm`` or a subclass) with ``bn``'s settings,
    state_dict, ``requires_grad`` flags and train/eval mode; ``extra`` goes to
    ``cls`` (e.g. ``ghost_batch_size``). Shared by every converter.  The new
    layer accepts the input ranks ``bn`` accepts (4-D only for a 2-D BN)."""
    ref = bn.weight if bn.weight is not None else bn.running_mean
    kw = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    new = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
              track_running_stats=bn.track_running_stats, bias=bn.bias is not None or not bn.affine,
              **extra, **kw)
    new.load_state_dict(bn.state_dict())
    for name, p in new.named_parameters():
        p.requires_grad_(getattr(bn, name).requires_grad)
    dims = _TORCH_INPUT_DIMS.get(type(bn), getattr(bn, "_input_dims", None))
    if dims is not None and dims != new._input_dims:
        new._input_dims = dims
    return new.train(bn.training)


def is_plain_batchnorm(m: nn.Module) -> bool:
    """``nn.BatchNorm1d/2d`` or a full-mode :class:`BatchNorm` (``BatchNorm1d/2d``) -- exactly those types,
    not subclasses (a model's own ghost or noisy BN is not plain BN, and converting it would change the
    model)."""
    return (type(m) in (nn.BatchNorm1d, nn.BatchNorm2d)
            or (type(m) in (BatchNorm, BatchNorm1d, BatchNorm2d) and m.mode == "full"))


def convert_batchnorm(model: nn.Module) -> nn.Module:
    """Replace each ``nn.BatchNorm1d``/``nn.BatchNorm2d`` by :class:`BatchNorm1d`/:class:`BatchNorm2d`
    with the same state_dict and train/eval flag; returns the model.

    Exactly those two types are converted: subclasses of them (and other BN
    kinds) are left alone with a warning.  A layer used in several places
    (tied) stays one layer.  Parameters are copied, so build the optimizer
    after converting.
    """
    ours = {nn.BatchNorm1d: BatchNorm1d, nn.BatchNorm2d: BatchNorm2d}
    return _convert(model, lambda m: type(m) in ours, lambda bn: rebuild_batchnorm(bn, ours[type(bn)]),
                    lambda m: isinstance(m, BatchNorm), "convert_batchnorm")


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
             device: str = "cpu", seed: int = 0, threads: int | None = None, fused: bool = False) -> dict:
    """Median time (ms) of forward + backward in training mode: ours vs PyTorch.

    Both modules see the same input and upstream gradient; the runs alternate
    so that drift (turbo, other load) hits both alike.  ``threads`` sets the
    CPU intra-op thread count for the measurement only (``None``: as is).
    ``fused`` measures ours with :func:`use_fused_kernels` (the warm-up
    includes the compilation).
    """
    if threads is not None:
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return bn_speed(shape, repeats, warmup, device, seed, fused=fused)
        finally:
            torch.set_num_threads(old)
    if fused:
        before = use_fused_kernels(True)
        try:
            return {**bn_speed(shape, repeats, max(warmup, 2), device, seed), "fused": True}
        finally:
            use_fused_kernels(before)
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
            "threads": torch.get_num_threads(), "device": str(device), "fused": _FUSED["on"]}


def __getattr__(name: str):
    """Ghost BN is a mode of this module's :class:`BatchNorm` that lives in :mod:`bnrepro.nn.ghost`
    (it builds on this module); ``from bnrepro.nn.batchnorm import GhostBatchNorm`` works too."""
    if name in ("GhostBatchNorm", "convert_ghost_batchnorm"):
        from . import ghost

        return getattr(ghost, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
