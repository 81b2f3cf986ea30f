"""Length-direction decoupling (Kohler et al. 2018) and the effective learning rate.

Kohler, Daneshmand, Lucchi, Zhou, Neymeyr & Hofmann (arXiv 1805.10694) read
BN on a single unit as a reparametrisation of its weight vector,

    w = g * v / ||v||_S,   ||v||_S = sqrt(v' S v),   S = covariance of the unit's input,

so that the *length* ``g`` and the *direction* ``v`` are optimised
separately. On least squares and learning halfspaces they prove that
gradient descent in ``(g, v)`` (with ``g`` found by a 1-D search, their
bisection) converges linearly. :func:`gd` is plain gradient descent on ``w``,
:func:`decoupled_gd` the same budget of steps in ``(g, v)``; problems are
:func:`least_squares` and :func:`logistic_regression` with an input
covariance of a chosen condition number.

Because the loss depends on ``v`` only through its direction, the gradient
in ``v`` is orthogonal to ``v`` and scales as ``1/||v||``. Plain GD therefore
grows the norm, ``||v_{t+1}||^2 = ||v_t||^2 + lr^2 ||grad||^2`` exactly, and a
step of size ``lr`` moves the direction by an *effective learning rate*
``lr / ||v||^2`` that falls as the norm grows (:func:`scale_invariant_gd`).
The same holds for any weight followed by BN.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

Tensor = torch.Tensor


@dataclasses.dataclass
class Problem:
    """A convex loss ``f(w)`` on R^d with its input covariance ``S`` and optimum value ``f_star``."""

    name: str
    f: Callable[[Tensor], Tensor]
    S: Tensor
    f_star: float
    w_star: Tensor

    @property
    def dim(self) -> int:
        return self.S.shape[0]

    @property
    def condition_number(self) -> float:
        ev = torch.linalg.eigvalsh(self.S)
        return float(ev[-1] / ev[0])


def ill_conditioned_covariance(dim: int, condition: float, seed: int = 0) -> Tensor:
    """``Q diag(lambda) Q'``: eigenvalues log-spaced from 1 down to ``1/condition``, random rotation ``Q``."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    lam = torch.logspace(0, -math.log10(condition), dim, dtype=torch.float64)
    return (q * lam) @ q.T


def least_squares(dim: int = 20, condition: float = 1e3, seed: int = 0) -> Problem:
    """Population least squares ``f(w) = E[(x'w - x'w*)^2] / 2 = (w - w*)' S (w - w*) / 2``, ``f* = 0``."""
    S = ill_conditioned_covariance(dim, condition, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    w_star = torch.randn(dim, generator=gen, dtype=torch.float64)
    w_star /= w_star.norm()

    def f(w: Tensor) -> Tensor:
        d = w - w_star
        return 0.5 * d @ S @ d

    return Problem(f"least squares (kappa={condition:g})", f, S, 0.0, w_star)


def logistic_regression(dim: int = 20, condition: float = 1e3, n: int = 2000, label_noise: float = 0.1,
                        seed: int = 0, newton_steps: int = 50) -> Problem:
    """Logistic regression on ``x ~ N(0, S)`` with labels from a random halfspace, ``label_noise`` flipped.

    Flipped labels keep the data non-separable, so the optimum is finite; it
    is found by Newton's method (``newton_steps``; the gradient norm at the
    end is far below the suboptimalities plotted).
    """
    S = ill_conditioned_covariance(dim, condition, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    L = torch.linalg.cholesky(S)
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64) @ L.T
    teacher = torch.randn(dim, generator=gen, dtype=torch.float64)
    y = torch.sign(x @ teacher)
    y[torch.rand(n, generator=gen, dtype=torch.float64) < label_noise] *= -1

    def f(w: Tensor) -> Tensor:
        return torch.nn.functional.softplus(-y * (x @ w)).mean()

    w = torch.zeros(dim, dtype=torch.float64)
    for _ in range(newton_steps):
        p = torch.sigmoid(-y * (x @ w))
        grad = -(x * (y * p)[:, None]).mean(0)
        hess = (x * (p * (1 - p))[:, None]).T @ x / n
        w = w - torch.linalg.solve(hess + 1e-12 * torch.eye(dim, dtype=torch.float64), grad)
    return Problem(f"logistic regression (kappa={condition:g})", f, S, float(f(w)), w)


def _grad(fn: Callable[..., Tensor], *args: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    args = tuple(a.detach().requires_grad_(True) for a in args)
    value = fn(*args)
    return value.detach(), torch.autograd.grad(value, args)


def gd(problem: Problem, w0: Tensor, lr: float, steps: int) -> list[float]:
    """Gradient descent on ``w``; returns the suboptimality ``f(w_t) - f*`` for t = 0..steps."""
    w, out = w0.clone(), []
    for _ in range(steps + 1):
        value, (grad,) = _grad(problem.f, w)
        out.append(float(value) - problem.f_star)
        if not math.isfinite(out[-1]):
            break
        w = w - lr * grad
    return out


def s_norm(v: Tensor, S: Tensor) -> Tensor:
    return torch.sqrt(v @ S @ v)


def compose(g: Tensor, v: Tensor, S: Tensor) -> Tensor:
    """``w = g v / ||v||_S`` (Kohler et al., eq. 3)."""
    return g * v / s_norm(v, S)


def best_length(problem: Problem, v: Tensor, g0: float = 0.0, iters: int = 50, tol: float = 1e-13) -> Tensor:
    """``argmin_g f(g v/||v||_S)``: the exact length step of Kohler et al.

    They solve this 1-D convex problem by bisection; we use Newton's method
    on the same problem (one step for least squares, where it is quadratic),
    halving a step whenever it would increase the loss.
    """
    d = (v / s_norm(v, problem.S)).detach()
    g = torch.tensor(float(g0), dtype=d.dtype)
    for _ in range(iters):
        g = g.detach().requires_grad_(True)
        phi = problem.f(g * d)
        (d1,) = torch.autograd.grad(phi, g, create_graph=True)
        (d2,) = torch.autograd.grad(d1, g)
        if not float(d2) > 0:
            break
        step = (d1 / d2).detach()
        with torch.no_grad():
            new = g - step
            while float(problem.f(new * d)) > float(phi) and abs(float(step)) > tol:
                step = step / 2
                new = g - step
        g = new
        if abs(float(step)) <= tol * (1 + abs(float(g))):
            break
    return g.detach()


def decoupled_gd(problem: Problem, v0: Tensor, lr_v: float, steps: int, g0: float | None = None,
                 lr_g: float | None = None) -> dict:
    """Gradient descent in ``(g, v)`` with ``w = g v/||v||_S``.

    With ``lr_g=None`` the length is set by :func:`best_length` at every step
    (Kohler et al.'s scheme); otherwise ``g`` takes gradient steps of size
    ``lr_g`` from ``g0``. Returns ``subopt`` (t = 0..steps) and ``v_norm``.
    """
    S = problem.S
    v = v0.clone()
    g = best_length(problem, v) if (lr_g is None or g0 is None) else torch.tensor(float(g0), dtype=v.dtype)
    subopt, v_norm = [], []
    for _ in range(steps + 1):
        if lr_g is None:
            g = best_length(problem, v, float(g))
        value, (dg, dv) = _grad(lambda a, b: problem.f(compose(a, b, S)), g, v)
        subopt.append(float(value) - problem.f_star)
        v_norm.append(float(v.norm()))
        if not math.isfinite(subopt[-1]):
            break
        v = v - lr_v * dv
        if lr_g is not None:
            g = g - lr_g * dg
    return {"subopt": subopt, "v_norm": v_norm}


def scale_invariant_gd(problem: Problem, v0: Tensor, lr: float, steps: int, g: float = 1.0) -> dict:
    """GD on the direction only (``g`` fixed): the weight norm grows, the effective learning rate falls.

    Returns per step ``v_norm_sq``, ``grad_norm_sq``, ``effective_lr`` =
    ``lr / ||v||^2`` and ``identity_gap``: the largest
    ``| ||v_{t+1}||^2 - ||v_t||^2 - lr^2 ||grad_t||^2 |`` (zero up to rounding,
    because the gradient of a scale-invariant loss is orthogonal to ``v``).
    """
    gt = torch.tensor(float(g), dtype=v0.dtype)
    v, norms, grads, gap = v0.clone(), [], [], 0.0
    for _ in range(steps):
        _, (dv,) = _grad(lambda b: problem.f(compose(gt, b, problem.S)), v)
        new = v - lr * dv
        n0, n1, gn = float(v @ v), float(new @ new), float(dv @ dv)
        gap = max(gap, abs(n1 - n0 - lr * lr * gn))
        norms.append(n0)
        grads.append(gn)
        v = new
    return {"v_norm_sq": norms, "grad_norm_sq": grads, "effective_lr": [lr / n for n in norms],
            "identity_gap": gap}


def linear_rate(subopt: list[float], floor: float = 1e-13) -> float:
    """Fitted per-step contraction factor of ``subopt`` (slope of log10 vs step, as a factor).

    Uses the points above ``floor``; a value below 1 means linear
    (exponential) convergence, e.g. 0.99 = 1% less suboptimality per step.
    """
    pts = [(t, math.log10(s)) for t, s in enumerate(subopt) if s is not None and math.isfinite(s) and s > floor]
    if len(pts) < 2:
        return math.nan
    t = torch.tensor([p[0] for p in pts], dtype=torch.float64)
    y = torch.tensor([p[1] for p in pts], dtype=torch.float64)
    slope = float(((t - t.mean()) * (y - y.mean())).sum() / ((t - t.mean()) ** 2).sum())
    return 10 ** slope
