"""BN with fixed statistics: :class:`FrozenBatchNorm` and :func:`freeze_batchnorm`.

The inference transform of Ioffe & Szegedy's Algorithm 2 as a module whose
statistics and affine parameters never change, for fine-tuning with batches
too small for reliable batch statistics.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .batchnorm import is_batchnorm
from .convert import _replace
from .functional import _affine_eval

__all__ = ["FrozenBatchNorm", "freeze_batchnorm"]


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
        """Freeze any ``nn.BatchNorm*`` or :class:`~bnrepro.nn.batchnorm.BatchNorm` (in its eval behaviour)."""
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


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BN module (any ``nn.BatchNorm*``, :class:`~bnrepro.nn.batchnorm.BatchNorm`;
    see :func:`~bnrepro.nn.batchnorm.is_batchnorm`) by a :class:`FrozenBatchNorm`; returns the
    model (a new module if the model itself is a BN)."""
    return _replace(model, is_batchnorm, FrozenBatchNorm.from_module, {})
