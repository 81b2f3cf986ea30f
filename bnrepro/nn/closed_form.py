"""Algorithm 1 and the backward equations of Section 3 as one ``torch.autograd.Function``.

Reference: S. Ioffe and C. Szegedy, "Batch Normalization: Accelerating Deep
Network Training by Reducing Internal Covariate Shift", ICML 2015,
arXiv:1502.03167.  "Algorithm 1" is the training-time transform and Section 3
gives the backward equations.

:class:`BatchNormFunction` is training-mode BN whose backward pass is the
paper's closed form, not autograd run through the forward; the derivations
are in the comments next to each formula.  :func:`use_fused_kernels` compiles
the same closed form into fused kernels.

Speed notes, measured on CPU (torch 2.14; see :func:`bnrepro.measure.speed.bn_speed`):
``torch.var_mean`` uses a scalar Welford kernel and was about 4x slower than
two passes (mean, then the mean of the squared centred values).  The centred
tensor is needed for x_hat anyway, so the two passes cost almost nothing
extra.  Fresh full-size buffers are expensive too (page faults), so each
temporary buffer is reused as the output of a later step.  ``addcmul`` with
two per-channel operands falls back to a scalar loop (about 5x slower), so
``y = beta + gamma * x_hat`` is a fill with beta then an in-place ``addcmul_``.
Eager, that is still about 8 passes over memory forward and 6 backward
against PyTorch's 2-3 fused ones; :func:`use_fused_kernels` closes that gap.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["BatchNormFunction", "use_fused_kernels", "fused_kernels_enabled"]


def _reduce_dims(x: Tensor) -> tuple[int, ...]:
    # Every axis except channels (dim 1).  For conv features the paper's
    # Section 3.2 normalizes over the batch and all spatial positions, so that
    # every location of a feature map gets the same transform.
    return (0,) + tuple(range(2, x.dim()))


def _channel_shape(x: Tensor) -> tuple[int, ...]:
    # Shape (1, C, 1, ...) so that per-channel vectors broadcast against x
    # without copying x into a (C, rest) layout.
    return (1, x.shape[1]) + (1,) * (x.dim() - 2)


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


def fused_kernels_enabled() -> bool:
    """Whether :func:`use_fused_kernels` is on."""
    return _FUSED["on"]


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
