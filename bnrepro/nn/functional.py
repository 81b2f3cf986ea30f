"""``batch_norm``: batch normalization as a function, with the semantics of ``F.batch_norm``.

In training it runs :class:`bnrepro.nn.closed_form.BatchNormFunction` (Algorithm 1,
with Section 3's closed-form backward pass) and updates the running statistics;
otherwise it applies the fixed affine map of Algorithm 2.  The input checks
here (rank, one value per channel, dtypes) are shared by every BN module of
the package and raise PyTorch's errors with the likely fix added.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .closed_form import _LOW_PRECISION, BatchNormFunction, _channel_shape

__all__ = ["batch_norm", "eval_scale_shift"]


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
    ``1 - momentum`` "momentum"; see :func:`~bnrepro.nn.batchnorm.momentum_to_decay`).  Otherwise
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


def eval_scale_shift(mean, var, weight, bias, eps):
    """BN at inference as one per-channel affine map y = scale * x + shift (Algorithm 2, step 11):
    scale = gamma / sqrt(Var + eps), shift = beta - gamma * E / sqrt(Var + eps). ``weight``/``bias``
    may be None (no affine parameters)."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


def _affine_eval(x, mean, var, weight, bias, eps):
    # Folding Algorithm 2 into per-channel (scale, shift) makes it one pass over x.
    # Half-precision input is transformed in float32 (its parameters may be float32).
    shape = _channel_shape(x)
    scale, shift = eval_scale_shift(mean, var, weight, bias, eps)
    xf = x.float() if x.dtype in _LOW_PRECISION else x
    return torch.addcmul(shift.view(shape).to(xf.dtype), xf, scale.view(shape).to(xf.dtype)).to(x.dtype)
