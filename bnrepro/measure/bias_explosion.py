"""Ioffe & Szegedy, Section 2: why the normalization must be inside the gradient step.

Reference: S. Ioffe and C. Szegedy, "Batch Normalization", arXiv:1502.03167.

:func:`bias_explosion` trains a bias followed by mean subtraction, with the
mean inside or outside the gradient. The toy model has its own loss on the
normalized activations, which the book's classification loop
(:func:`bnrepro.training.loop.train`) does not cover; it is a few lines of
plain gradient descent.
"""

from __future__ import annotations

import torch

__all__ = ["BIAS_STEPS", "bias_explosion", "bias_numbers"]

#: Full-batch GD steps of the chapter's bias explosion (Section 2).
BIAS_STEPS = 200


def bias_explosion(in_gradient: bool, steps: int = 200, lr: float = 0.1, n: int = 256,
                   d_in: int = 5, d_out: int = 3, target_mean: float = 1.0, seed: int = 0) -> dict:
    """Ioffe & Szegedy, Section 2: ``x_hat = u + b - E[u + b]`` trained by gradient descent.

    A linear layer ``u = W x`` plus a bias ``b`` is centred over the batch
    (the whole synthetic training set, ``n`` samples) and trained on
    ``l = mean ||x_hat - y||^2`` towards targets ``y = A x + target_mean``
    whose non-zero mean a centred ``x_hat`` can never reach. With
    ``in_gradient=False`` the mean ``E[u + b]`` is treated as a constant in
    the gradient step (detached), so ``dl/db = sum dl/dx_hat`` never
    vanishes; with ``in_gradient=True`` the gradient sees that ``x_hat`` does
    not depend on ``b`` at all. Full-batch gradient descent, float64.

    Returns per-step lists: ``b_norm`` (``||b||`` before the step), ``loss``,
    and ``loss_change_from_b``: how much the loss moves when only ``b`` takes
    its step (the normalization recomputed): the paper says zero.
    """
    g = torch.Generator().manual_seed(seed)
    kw = {"dtype": torch.float64}
    x = torch.randn(n, d_in, generator=g, **kw)
    a = torch.randn(d_out, d_in, generator=g, **kw)
    y = x @ a.T + target_mean
    w = (0.1 * torch.randn(d_out, d_in, generator=g, **kw)).requires_grad_()
    b = (0.1 * torch.randn(d_out, generator=g, **kw)).requires_grad_()

    def forward(w_, b_):
        v = x @ w_.T + b_
        mean = v.mean(0) if in_gradient else v.mean(0).detach()
        return ((v - mean - y) ** 2).mean()

    out = {"step": [], "b_norm": [], "loss": [], "loss_change_from_b": []}
    for t in range(steps):
        loss = forward(w, b)
        w.grad = b.grad = None
        loss.backward()
        with torch.no_grad():
            b_new = b - lr * b.grad
            change = forward(w, b_new).item() - loss.item()
            out["step"].append(t)
            out["b_norm"].append(b.norm().item())
            out["loss"].append(loss.item())
            out["loss_change_from_b"].append(change)
            w -= lr * w.grad
            b.copy_(b_new)
    out["b_norm_final"] = b.detach().norm().item()
    return out


def bias_numbers(steps: int = BIAS_STEPS, seed: int = 0) -> dict[str, float]:
    """Section 2 (:func:`bias_explosion`): ``growth`` = ||b_T|| / ||b_T/2|| with
    the mean outside the gradient, ``loss_move_from_b`` = the largest loss change a bias step
    causes there, ``b_change_inside`` = the range of ||b|| with the mean inside the gradient."""
    outside = bias_explosion(in_gradient=False, steps=steps, seed=seed)
    inside = bias_explosion(in_gradient=True, steps=steps, seed=seed)
    return {"growth": outside["b_norm"][-1] / outside["b_norm"][steps // 2],
            "loss_move_from_b": max(abs(v) for v in outside["loss_change_from_b"]),
            "b_change_inside": max(inside["b_norm"]) - min(inside["b_norm"])}
