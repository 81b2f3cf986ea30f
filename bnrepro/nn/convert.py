"""Swapping a model's BN layers: :func:`convert_batchnorm` and the machinery every converter shares.

:func:`convert_batchnorm` turns ``nn.BatchNorm1d/2d`` into the package's
:class:`~bnrepro.nn.batchnorm.BatchNorm1d`/``BatchNorm2d``;
:func:`bnrepro.nn.ghost.convert_ghost_batchnorm`,
:func:`bnrepro.nn.sync_bn.convert_sync_batchnorm` and
:func:`bnrepro.nn.frozen_bn.freeze_batchnorm` are built on the same swap
(:func:`rebuild_batchnorm` makes the new layer with the old one's state).
"""

from __future__ import annotations

import warnings

from torch import nn

from .batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, is_batchnorm

__all__ = ["convert_batchnorm", "rebuild_batchnorm", "is_plain_batchnorm"]


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

    def leave(m: nn.Module) -> bool:
        return is_batchnorm(m) and not ours(m)

    model = _replace(model, match, make, {}, leave, left)
    if left:
        names = ", ".join(left)
        warnings.warn(f"{who} left {len(left)} BN layer(s) alone ({names}): they are not plain "
                      "nn.BatchNorm1d/2d, and replacing them would drop what they do differently. "
                      "To convert one anyway: bnrepro.nn.rebuild_batchnorm(layer, cls).",
                      UserWarning, stacklevel=3)
    return model


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
    """``nn.BatchNorm1d/2d`` or a full-mode :class:`~bnrepro.nn.batchnorm.BatchNorm` (``BatchNorm1d/2d``) --
    exactly those types, not subclasses (a model's own ghost or noisy BN is not plain BN, and converting it
    would change the model)."""
    return (type(m) in (nn.BatchNorm1d, nn.BatchNorm2d)
            or (type(m) in (BatchNorm, BatchNorm1d, BatchNorm2d) and m.mode == "full"))


def convert_batchnorm(model: nn.Module) -> nn.Module:
    """Replace each ``nn.BatchNorm1d``/``nn.BatchNorm2d`` by :class:`~bnrepro.nn.batchnorm.BatchNorm1d`/``BatchNorm2d``
    with the same state_dict and train/eval flag; returns the model.

    Exactly those two types are converted: subclasses of them (and other BN
    kinds) are left alone with a warning.  A layer used in several places
    (tied) stays one layer.  Parameters are copied, so build the optimizer
    after converting.
    """
    ours = {nn.BatchNorm1d: BatchNorm1d, nn.BatchNorm2d: BatchNorm2d}
    return _convert(model, lambda m: type(m) in ours, lambda bn: rebuild_batchnorm(bn, ours[type(bn)]),
                    lambda m: isinstance(m, BatchNorm), "convert_batchnorm")
