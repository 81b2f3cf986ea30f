"""The loss landscape along the gradient: Santurkar et al.'s Figure 4 measures.

At a point ``theta`` of training with loss ``L`` and gradient ``g`` on a
batch, Santurkar, Tsipras, Ilyas & Madry (arXiv 1805.11604, Section 3.1)
move along the gradient, ``theta_eta = theta - eta * g``, over a range of
step sizes ``eta`` and record

(a) the *variation of the loss*: ``L(theta_eta)`` over the range, plotted as
    a band (its min and max);
(b) *gradient predictiveness*: ``||grad L(theta_eta) - g||_2``, how much the
    gradient changes as one moves along it (a band too);
(c) the *effective beta-smoothness*: ``max_eta ||grad L(theta_eta) - g|| /
    ||eta * g||``, the largest gradient change per unit of distance moved,
    an empirical Lipschitz constant of the gradient along this direction.

For a quadratic ``L = theta' H theta / 2`` the gradient change is
``eta * H g`` exactly, so (c) is ``||H g|| / ||g||``: the top eigenvalue of
``H`` when ``g`` is its eigenvector (unit-tested). :class:`LandscapeCallback`
takes the measures during :func:`bnrepro.training.loop.train`.

At a fixed step size a network with a larger gradient moves farther, so (a)
and (b) compare unequal moves (the standard VGG's gradient is about twice the
BN VGG's). With ``by_distance=True`` the "step sizes" are distances in
parameter space: ``theta_d = theta - d * g / ||g||``, the same moves for every
network; (c) is then ``max_d ||grad L(theta_d) - g|| / d``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from .ics import cross_entropy_closure, measuring

#: Step sizes along the gradient (learning-rate units, or distances with ``by_distance``):
#: 0.05 .. 0.4 in 8 equal steps. Santurkar et al.'s exact range is not known to us (the
#: chapter says so); a training step of our VGG moves about 0.2 to 0.3 in parameter space.
DEFAULT_STEP_SIZES = tuple(round(0.05 * k, 2) for k in range(1, 9))


def landscape_from_closure(closure: Callable[[], torch.Tensor], params: Sequence[torch.Tensor],
                           step_sizes: Sequence[float] = DEFAULT_STEP_SIZES, by_distance: bool = False) -> dict:
    """The three measures along ``-g`` for a loss ``closure`` of ``params`` (left unchanged).

    ``by_distance``: each step size is a distance ``d`` moved (``eta = d / ||g||``).

    Returns ``loss`` (at ``eta = 0`` then at each step size), ``grad_change``
    (``||grad L(theta_eta) - g||`` per step size), ``loss_min``/``loss_max``
    (over ``eta = 0`` and the step sizes), ``grad_change_min``/``_max``,
    ``beta`` (max of change / distance) and ``grad_norm`` (``||g||``).
    """
    if not step_sizes or min(step_sizes) <= 0:
        raise ValueError(f"step_sizes={tuple(step_sizes)!r}: need positive step sizes")
    params = list(params)
    loss0 = closure()
    g = [t if t is not None else torch.zeros_like(p)
         for p, t in zip(params, torch.autograd.grad(loss0, params, allow_unused=True))]
    g_norm = math.sqrt(sum(float((t * t).sum()) for t in g))
    saved = [p.detach().clone() for p in params]
    losses, changes, betas = [loss0.item()], [], []
    try:
        for size in step_sizes:
            eta = (size / g_norm if g_norm > 0 else 0.0) if by_distance else size
            with torch.no_grad():
                for p, s, t in zip(params, saved, g):
                    p.copy_(s - eta * t)
            loss = closure()
            ge = torch.autograd.grad(loss, params, allow_unused=True)
            change = math.sqrt(sum(float(((e if e is not None else torch.zeros_like(t)) - t).pow(2).sum())
                                   for e, t in zip(ge, g)))
            losses.append(loss.item())
            changes.append(change)
            betas.append(change / (eta * g_norm) if g_norm > 0 else math.nan)
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
    finite = [b for b in betas if math.isfinite(b)]
    return {"step_sizes": list(step_sizes), "by_distance": bool(by_distance), "loss": losses, "grad_change": changes,
            "loss_min": min(losses), "loss_max": max(losses),
            "grad_change_min": min(changes), "grad_change_max": max(changes),
            "beta": max(finite) if finite else math.nan, "grad_norm": g_norm}


def landscape_measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      step_sizes: Sequence[float] = DEFAULT_STEP_SIZES, by_distance: bool = False) -> dict:
    """The measures for ``model``'s cross-entropy on ``(x, y)`` in training mode; the model is left as it was."""
    params = [p for p in model.parameters() if p.requires_grad]
    with measuring(model):
        return landscape_from_closure(cross_entropy_closure(model, x, y), params, step_sizes, by_distance)


class LandscapeCallback:
    """A :func:`bnrepro.training.loop.train` callback: the measures every ``every`` steps on that step's batch."""

    def __init__(self, every: int, step_sizes: Sequence[float] = DEFAULT_STEP_SIZES, by_distance: bool = False):
        if every < 1:
            raise ValueError(f"every={every!r}: measure every >= 1 steps")
        self.every, self.step_sizes, self.records = every, tuple(step_sizes), []
        self.by_distance = bool(by_distance)

    def __call__(self, state) -> None:
        if state.step % self.every:
            return
        rec = landscape_measure(state.model, state.inputs, state.targets, self.step_sizes, self.by_distance)
        self.records.append({"step": state.step, **rec})


def quadratic_beta(H: torch.Tensor, g: torch.Tensor) -> float:
    """``||H g|| / ||g||``: the effective beta-smoothness of a quadratic along ``g`` (closed form)."""
    return float((H @ g).norm() / g.norm())
