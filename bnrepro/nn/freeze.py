"""Which parameters train: freezing as configuration (chapter "Training only BatchNorm").

Frankle, Schwab & Morcos (2020, arXiv 2003.00152) train a network whose
weights stay at their random initialisation except BN's per-channel scale
gamma and shift beta. Their code (open_lth) does it with flags
(``others_frozen``, ``output_frozen``, ``batchnorm_frozen``) that set
``requires_grad``; we do the same with one function per arm, each returning
a :class:`Trainable` (what trains, by name, and how many scalars):

* :func:`train_all` -- ordinary training;
* :func:`train_only_bn` -- gamma and beta only (``output_layer=True``: plus the
  output layer, open_lth's ``others_frozen`` alone);
* :func:`train_only_output` -- the output layer on top of frozen random features;
* :func:`train_bn_and_shortcuts` -- gamma and beta plus the 1x1 (projection)
  shortcut convolutions: an idea the BN-only blog lists for later;
* :func:`train_random_per_channel` -- the paper's control: as many scalars as
  BN has (2 per channel), but ordinary weights chosen at random, 2 per output
  channel of every convolution, with BN frozen at its initialisation.

:func:`bnrepro.training.loop.train` optimizes only parameters with ``requires_grad``,
so frozen tensors are never handed to the optimizer and neither weight decay
nor momentum can touch them. The random-weights control needs care: masking
the *gradient* of a conv weight is not enough, because SGD's weight decay adds
``wd * w`` to every entry's update (and Adam's moments are per entry too), so
the "frozen" entries would still shrink. Here the conv weight is instead
re-parametrised (``torch.nn.utils.parametrize``) as a frozen random tensor
with a small trainable vector written into chosen positions, so the optimizer
sees exactly the trainable scalars and nothing else
(``tests/test_freeze.py`` shows the gradient-mask version drifting).

BN initialisers (open_lth ``models/bn_initializers.py``) are plain functions
looked up by name in :data:`BN_INITS`; beta always starts at 0:

* ``"uniform"`` -- gamma ~ U[0, 1], open_lth's default;
* ``"fixed"`` -- gamma = 1, PyTorch's default (the blog calls it too
  symmetric to train);
* ``"he_normal"`` -- Keras's ``he_normal`` applied to the gamma vector, as the
  blog did: a normal with standard deviation sqrt(2 / C) (C = channels, the
  vector's fan-in in Keras) truncated at two standard deviations;
* ``"positivenegative"`` -- gamma ~ U[-1, 1];
* ``"zero"`` -- gamma = 0 in every BN layer. With beta = 0 too, every BN
  outputs exactly 0 and every ReLU sees exactly 0, where PyTorch's (and
  TensorFlow's) ReLU gradient is 0: no BN parameter gets any gradient, so
  BN-only training never moves (``tests/test_freeze.py``);
* ``"zero_residual"`` -- gamma ~ U[0, 1] as ``"uniform"`` (the same draw for
  the same seed), then gamma = 0 in the last BN of every residual branch (the
  model declares them as ``residual_bn_names``): every residual block starts
  as its shortcut (Goyal et al. 2017's zero-gamma trick), and those gammas do
  get gradient, through the shortcut's non-zero signal.

Initialisers that need to know the layers (``"zero_residual"``) say so with
the attribute ``zero_residual_branches``; the others act on one gamma vector.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from .batchnorm import is_batchnorm

__all__ = ["BN_INITS", "FREEZINGS", "Trainable", "apply_freezing", "batchnorm_layers",
           "batchnorm_parameter_names", "bn_gammas", "init_batchnorm", "output_layer_names",
           "residual_bn_names", "shortcut_conv_names", "train_all", "train_bn_and_shortcuts",
           "train_only_bn", "train_only_output", "train_random_per_channel"]


# --------------------------------------------------------------------------- BN layers
def batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every BN layer (:func:`~bnrepro.nn.batchnorm.is_batchnorm`) with a
    gamma/beta (affine parameters), in model order."""
    return [(name, m) for name, m in model.named_modules()
            if is_batchnorm(m) and isinstance(getattr(m, "weight", None), nn.Parameter)]


def batchnorm_parameter_names(model: nn.Module) -> list[str]:
    """Names of every BN gamma (``.weight``) and beta (``.bias``)."""
    names = []
    for name, m in batchnorm_layers(model):
        prefix = f"{name}." if name else ""
        names.append(prefix + "weight")
        if isinstance(getattr(m, "bias", None), nn.Parameter):
            names.append(prefix + "bias")
    return names


def bn_gammas(model: nn.Module) -> torch.Tensor:
    """All BN gammas of ``model`` concatenated into one CPU vector (a copy)."""
    layers = batchnorm_layers(model)
    if not layers:
        return torch.empty(0)
    return torch.cat([m.weight.detach().flatten().cpu() for _, m in layers])


def output_layer_names(model: nn.Module) -> tuple[str, ...]:
    """The output layer's parameter names: ``model.output_layer_names`` if the model
    declares them (as open_lth's models do), else those of the last ``nn.Linear``."""
    declared = getattr(model, "output_layer_names", None)
    if declared:
        return tuple(declared)
    last = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError("the model has no nn.Linear and declares no output_layer_names")
    prefix = f"{last[-1]}." if last[-1] else ""
    return tuple(prefix + p for p, _ in dict(model.named_modules())[last[-1]].named_parameters())


# --------------------------------------------------------------------------- BN initialisers
def _gamma_uniform(gamma: torch.Tensor, generator: torch.Generator | None) -> None:
    gamma.copy_(torch.rand(gamma.shape, generator=generator))


def _gamma_fixed(gamma: torch.Tensor, generator: torch.Generator | None) -> None:
    gamma.fill_(1.0)


# A standard normal truncated to [-2, 2] has standard deviation 0.87962566...; Keras divides
# by it so that the truncated draw has the requested standard deviation.
_TRUNC2_STD = 0.87962566103423978


def _gamma_he_normal(gamma: torch.Tensor, generator: torch.Generator | None) -> None:
    std = math.sqrt(2.0 / gamma.numel()) / _TRUNC2_STD  # Keras: fan_in of a vector = its length
    z = torch.empty(gamma.shape)
    nn.init.trunc_normal_(z, 0.0, 1.0, -2.0, 2.0, generator=generator)
    gamma.copy_(z * std)


def _gamma_positivenegative(gamma: torch.Tensor, generator: torch.Generator | None) -> None:
    gamma.copy_(torch.rand(gamma.shape, generator=generator) * 2 - 1)


def _gamma_zero(gamma: torch.Tensor, generator: torch.Generator | None) -> None:
    gamma.zero_()


def _gamma_zero_residual(gamma: torch.Tensor, generator: torch.Generator | None) -> None:
    _gamma_uniform(gamma, generator)  # every layer as "uniform"; init_batchnorm then zeroes the branch ends


_gamma_zero_residual.zero_residual_branches = True

BN_INITS: dict[str, Callable[[torch.Tensor, torch.Generator | None], None]] = {
    "uniform": _gamma_uniform,            # open_lth default: U[0, 1]
    "fixed": _gamma_fixed,                # gamma = 1
    "he_normal": _gamma_he_normal,        # the blog's Keras he_normal
    "positivenegative": _gamma_positivenegative,  # U[-1, 1]
    "zero": _gamma_zero,                  # gamma = 0 everywhere: a dead network (see the docstring)
    "zero_residual": _gamma_zero_residual,  # U[0, 1], then 0 at the end of every residual branch
}


def residual_bn_names(model: nn.Module) -> tuple[str, ...]:
    """Module names of the last BN of every residual branch, as the model declares them
    (``model.residual_bn_names``); a ValueError if it declares none."""
    names = tuple(getattr(model, "residual_bn_names", None) or ())
    if not names:
        raise ValueError(f"{type(model).__name__} declares no residual_bn_names (it has no residual branches "
                         "to zero); bn_init='zero_residual' is for ResNets")
    return names


@torch.no_grad()
def init_batchnorm(model: nn.Module, name: str = "uniform", seed: int | None = None) -> nn.Module:
    """Set every BN gamma with the initialiser ``name`` (see :data:`BN_INITS`) and beta to 0.

    ``seed`` makes the draw independent of the global RNG; ``None`` uses it.
    """
    if name not in BN_INITS:
        raise ValueError(f"bn_init={name!r} is not one of {', '.join(map(repr, BN_INITS))}")
    init = BN_INITS[name]
    branch_ends = set(residual_bn_names(model)) if getattr(init, "zero_residual_branches", False) else set()
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    for layer, m in batchnorm_layers(model):
        gamma = torch.empty(m.weight.shape)
        init(gamma, generator)
        if layer in branch_ends:
            gamma.zero_()
        m.weight.copy_(gamma.to(m.weight))
        if isinstance(getattr(m, "bias", None), nn.Parameter):
            m.bias.zero_()
    return model


# --------------------------------------------------------------------------- freezing
@dataclasses.dataclass(frozen=True)
class Trainable:
    """What a freezing function left trainable: parameter names and scalar count."""

    arm: str
    names: tuple[str, ...]
    count: int

    def to_dict(self) -> dict:
        return {"arm": self.arm, "names": list(self.names), "count": self.count}


def _set_trainable(model: nn.Module, arm: str, keep: Callable[[str], bool]) -> Trainable:
    names, count = [], 0
    for name, p in model.named_parameters():
        p.requires_grad_(bool(keep(name)))
        if p.requires_grad:
            names.append(name)
            count += p.numel()
    return Trainable(arm, tuple(names), count)


def _require_bn(model: nn.Module) -> set[str]:
    bn = set(batchnorm_parameter_names(model))
    if not bn:
        raise ValueError("the model has no BN layer with gamma/beta (built with norm='none'?)")
    return bn


def train_all(model: nn.Module) -> Trainable:
    """Ordinary training: every parameter trains."""
    return _set_trainable(model, "all", lambda name: True)


def train_only_bn(model: nn.Module, output_layer: bool = False) -> Trainable:
    """Freeze everything except BN's gamma and beta (and the output layer if asked).

    ``output_layer=False`` is the paper's "BatchNorm" arm; ``True`` is
    open_lth's ``others_frozen`` alone ("BatchNorm + output").
    """
    bn = _require_bn(model)
    out = set(output_layer_names(model)) if output_layer else set()
    return _set_trainable(model, "bn_output" if output_layer else "bn", lambda n: n in bn or n in out)


def shortcut_conv_names(model: nn.Module) -> tuple[str, ...]:
    """Parameter names of every 1x1 convolution (in the book's ResNets: the projection shortcuts)."""
    names = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1):
            prefix = f"{name}." if name else ""
            names += [prefix + p for p, _ in m.named_parameters(recurse=False)]
    return tuple(names)


def train_bn_and_shortcuts(model: nn.Module) -> Trainable:
    """Train BN's gamma and beta plus every 1x1 (shortcut) convolution; everything else frozen.

    An idea the BN-only blog lists for later: the projection shortcuts carry
    the signal past each stage's first block, so letting them learn gives the
    network a few learned features. ResNet-14 (W = 16): 1,120 BN scalars plus
    16*32 + 32*64 = 2,560 shortcut weights.
    """
    bn = _require_bn(model)
    shortcuts = set(shortcut_conv_names(model))
    if not shortcuts:
        raise ValueError("the model has no 1x1 convolution (no projection shortcut) to unfreeze")
    return _set_trainable(model, "bn_shortcut", lambda n: n in bn or n in shortcuts)


def train_only_output(model: nn.Module) -> Trainable:
    """Freeze everything except the output layer: a linear classifier on random features."""
    out = set(output_layer_names(model))
    return _set_trainable(model, "output", lambda n: n in out)


class _ChosenEntries(nn.Module):
    """Parametrization ``weight = frozen random tensor, with `values` at (rows, cols)``.

    ``rows``/``cols`` index the weight viewed as (out_channels, fan_in). The
    frozen tensor is the parametrization's input (``original``), so only
    ``values`` -- initialised to the entries it replaces -- can train.
    """

    def __init__(self, weight: torch.Tensor, per_channel: int, generator: torch.Generator):
        super().__init__()
        flat = weight.detach().flatten(1)
        c, fan_in = flat.shape
        if per_channel > fan_in:
            raise ValueError(f"per_channel={per_channel} exceeds the {fan_in} weights of a channel")
        cols = torch.stack([torch.randperm(fan_in, generator=generator)[:per_channel] for _ in range(c)])
        rows = torch.arange(c).unsqueeze(1).expand(c, per_channel).contiguous()
        self.register_buffer("rows", rows.to(flat.device))
        self.register_buffer("cols", cols.to(flat.device))
        self.values = nn.Parameter(flat[self.rows, self.cols].clone())

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return original.flatten(1).index_put((self.rows, self.cols), self.values).view_as(original)


def train_random_per_channel(model: nn.Module, per_channel: int = 2, output_layer: bool = False,
                             seed: int = 0) -> Trainable:
    """The paper's control: train ``per_channel`` randomly chosen weights per output
    channel of every convolution, everything else (BN included) frozen.

    In the book's ResNets and VGGs every convolution feeds one BN layer of the
    same width, so with ``per_channel=2`` this trains exactly as many scalars
    as :func:`train_only_bn`. Each chosen pair sits in the filter of one output
    channel; ``seed`` picks the positions. Applying it twice raises.
    """
    if isinstance(per_channel, bool) or not isinstance(per_channel, int) or per_channel < 1:
        raise ValueError(f"per_channel={per_channel!r}: must be an int >= 1")
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("the model has no nn.Conv2d to choose weights from")
    generator = torch.Generator().manual_seed(seed)
    for name, conv in convs:
        if parametrize.is_parametrized(conv, "weight"):
            raise ValueError(f"{name}.weight is parametrized already (train_random_per_channel twice?)")
        parametrize.register_parametrization(conv, "weight", _ChosenEntries(conv.weight, per_channel,
                                                                              generator))
    out = set(output_layer_names(model)) if output_layer else set()
    return _set_trainable(model, "random_output" if output_layer else "random",
                          lambda n: n.endswith("parametrizations.weight.0.values") or n in out)


def _bn_output(model, seed=0):
    return train_only_bn(model, output_layer=True)


#: Arm name -> function(model, seed) -> Trainable; the experiment's ``trainable`` field.
FREEZINGS: dict[str, Callable[..., Trainable]] = {
    "all": lambda model, seed=0: train_all(model),
    "bn": lambda model, seed=0: train_only_bn(model),
    "bn_output": _bn_output,
    "output": lambda model, seed=0: train_only_output(model),
    "random": lambda model, seed=0: train_random_per_channel(model, 2, seed=seed),
    "random_output": lambda model, seed=0: train_random_per_channel(model, 2, output_layer=True, seed=seed),
    "bn_shortcut": lambda model, seed=0: train_bn_and_shortcuts(model),
}


def apply_freezing(model: nn.Module, arm: str, seed: int = 0) -> Trainable:
    """Apply the arm named ``arm`` (a key of :data:`FREEZINGS`) to ``model``."""
    if arm not in FREEZINGS:
        raise ValueError(f"trainable={arm!r} is not one of {', '.join(map(repr, FREEZINGS))}")
    return FREEZINGS[arm](model, seed=seed)
