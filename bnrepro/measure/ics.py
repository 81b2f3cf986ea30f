"""Internal covariate shift measured the way Santurkar et al. (2018) define it.

Santurkar, Tsipras, Ilyas & Madry (arXiv 1805.11604, Section 2.2) replace the
vague "change in the distribution of layer inputs" by an optimisation-based
measure. For layer ``i`` at step ``t`` on the batch ``(x_t, y_t)``:

* ``G_i  = grad_{W_i} L(W_1, ..., W_k; x_t, y_t)``: the gradient every layer
  would be updated with simultaneously;
* ``G'_i = grad_{W_i} L(W_1', ..., W_{i-1}', W_i, ..., W_k; x_t, y_t)`` with
  ``W_j' = W_j - lr * G_j``: the same gradient after the layers *below* ``i``
  have taken their step.

ICS is the difference: ``||G_i - G'_i||_2`` and ``cos(G_i, G'_i)``.

The step the layers below take is the one the optimizer would actually take:
``-lr * G`` for plain SGD, but with momentum ``mu`` it is
``-lr * (mu * buf + G)`` (PyTorch's SGD, ``buf`` the momentum buffer), whose
steady-state size is about ``1/(1 - mu)`` times larger (10x at mu = 0.9).
:func:`optimizer_update` builds that step from an optimizer's state;
:class:`ICSCallback` uses it. If the
layers below changing did not matter to layer ``i``, ``G' = G`` (l2 = 0,
cos = 1). The first layer has nothing below it, so its ICS is exactly zero,
and so is that of a network with a single layer (a unit test checks this).

:func:`ics_measure` works on any model whose parameters split into layers
(:func:`bnrepro.models.vgg.layer_groups`); :class:`ICSCallback` measures it
during :func:`bnrepro.training.loop.train`. :class:`DeepLinearNet` and
:func:`gaussian_classification` are the paper's second test bed, a deep
linear network (25 layers) on synthetic Gaussian data.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.datasets import TensorData
from ..models.common import check_choice, make_norm
from ..models.noise import hold_noise
from ..models.vgg import layer_groups


@contextlib.contextmanager
def restored(model: nn.Module):
    """Run a measurement and then put every parameter and buffer (BN running stats) back."""
    saved = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=False).items()}
    try:
        yield model
    finally:
        with torch.no_grad():
            model.load_state_dict(saved)


@contextlib.contextmanager
def measuring(model: nn.Module):
    """Measure ``model`` as a training step sees it (training mode: BN uses batch
    statistics, noise held fixed), then put back its mode, parameters, running
    statistics and noise, so that measuring does not change the run."""
    was = model.training
    model.train()
    try:
        with restored(model), hold_noise(model):
            yield
    finally:
        model.train(was)


def cross_entropy_closure(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], torch.Tensor]:
    """``closure()`` = the mean cross-entropy of ``model`` on ``(x, y)`` at the current parameters."""
    return lambda: F.cross_entropy(model(x), y)


Update = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def optimizer_update(optimizer: torch.optim.Optimizer) -> Update:
    """``update(p, G)``: the step SGD ``optimizer`` would subtract from ``p`` if its gradient were ``G``.

    Follows ``torch.optim.SGD`` (weight decay, momentum with its buffer,
    dampening, Nesterov); without momentum, or before the first step (no
    buffer yet), the step is ``lr * G``.
    """
    if not isinstance(optimizer, torch.optim.SGD):
        raise ValueError(f"optimizer_update needs torch.optim.SGD, not {type(optimizer).__name__}")
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}

    def update(p: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        group = by_param[id(p)]
        d = grad + group["weight_decay"] * p.detach() if group["weight_decay"] else grad
        mu = group["momentum"]
        buf = optimizer.state.get(p, {}).get("momentum_buffer") if mu else None
        if buf is not None:
            buf = mu * buf + (1 - group["dampening"]) * d
            d = d + mu * buf if group["nesterov"] else buf
        return group["lr"] * d

    return update


def ics_from_closure(closure: Callable[[], torch.Tensor], groups: Sequence[Sequence[torch.Tensor]],
                     lr: float, update: Update | None = None) -> dict:
    """ICS per layer for a loss ``closure`` over parameter ``groups`` (one group per layer, in forward order).

    The first tensor of each group is the layer's weight ``W_i`` (the one
    measured); every tensor of the groups below ``i`` takes the step
    ``-update(p, G)`` (default: the plain gradient step ``lr * G``; see
    :func:`optimizer_update`) before ``G'_i`` is computed. Parameters are
    left as they were. Returns lists over layers: ``l2`` = ||G - G'||,
    ``cos`` = cos(G, G'), ``grad_norm`` = ||G||, ``rel`` = l2 / ||G||,
    ``step_norm`` = the norm of the step of the layer's weight.
    """
    if update is None and lr <= 0:
        raise ValueError(f"lr={lr!r}: the hypothetical update needs a positive step")
    flat = [p for g in groups for p in g]
    grads = torch.autograd.grad(closure(), flat, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(flat, grads)]
    by_param = dict(zip(map(id, flat), grads))
    weights = [g[0] for g in groups]
    step = update if update is not None else (lambda p, g: lr * g)
    steps = {id(p): step(p, by_param[id(p)]) for p in flat}
    out = {"l2": [0.0], "cos": [1.0], "grad_norm": [], "rel": [0.0],
           "step_norm": [steps[id(w)].norm().item() for w in weights]}
    saved = [p.detach().clone() for p in flat]
    try:
        for i, w in enumerate(weights):
            G = by_param[id(w)]
            out["grad_norm"].append(G.norm().item())
            if i == 0:
                continue
            with torch.no_grad():  # the layers below i take their step (cumulatively: i-1 joins now)
                for p in groups[i - 1]:
                    p.sub_(steps[id(p)])
            (Gp,) = torch.autograd.grad(closure(), [w], allow_unused=True)
            Gp = torch.zeros_like(w) if Gp is None else Gp
            diff = (G - Gp).norm().item()
            denom = G.norm().item() * Gp.norm().item()
            out["l2"].append(diff)
            out["cos"].append(float((G * Gp).sum().item() / denom) if denom > 0 else math.nan)
            out["rel"].append(diff / G.norm().item() if G.norm().item() > 0 else math.nan)
    finally:
        with torch.no_grad():
            for p, s in zip(flat, saved):
                p.copy_(s)
    return out


def ics_measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float,
                groups: Sequence[Sequence[torch.Tensor]] | None = None, update: Update | None = None) -> dict:
    """ICS of every layer of ``model`` on the batch ``(x, y)`` (cross-entropy), in training mode.

    BN uses the batch statistics, as in a training step; running statistics,
    parameters and the noise of noisy layers (held fixed during the
    measurement) are restored, so measuring does not change the run.
    """
    groups = groups if groups is not None else layer_groups(model)
    with measuring(model):
        return ics_from_closure(cross_entropy_closure(model, x, y), groups, lr, update)


class ICSCallback:
    """A :func:`bnrepro.training.loop.train` callback: ICS every ``every`` steps on that step's batch.

    The train loop calls back *after* the optimizer step, so the measure is
    taken at the new parameters with the step's batch; the layers below take
    the step the optimizer would take (:func:`optimizer_update`: with momentum,
    its buffer included). ``records`` collects ``{"step", "l2", "cos",
    "grad_norm", "rel", "step_norm"}``.
    """

    def __init__(self, every: int, max_samples: int | None = None):
        if every < 1:
            raise ValueError(f"every={every!r}: measure every >= 1 steps")
        self.every, self.max_samples, self.records = every, max_samples, []

    def __call__(self, state) -> None:
        if state.step % self.every:
            return
        x, y = state.inputs, state.targets
        if self.max_samples:
            x, y = x[:self.max_samples], y[:self.max_samples]
        lr = state.optimizer.param_groups[0]["lr"]
        self.records.append({"step": state.step, **ics_measure(state.model, x, y, lr,
                                                               update=optimizer_update(state.optimizer))})


class DeepLinearNet(nn.Sequential):
    """A deep linear network: ``depth`` bias-free linear layers, optionally BN after each but the last.

    Santurkar et al. measure ICS in a 25-layer deep linear network (DLN) on
    synthetic Gaussian data. Weights start LeCun-normal (std 1/sqrt(fan_in)),
    which keeps the signal's scale through a linear stack in expectation; with
    PyTorch's default (std 1/sqrt(3 fan_in)) a 25-layer stack shrinks its
    output by about 3^(-12.5) and does not train without BN.
    """

    def __init__(self, in_features: int = 32, width: int = 32, depth: int = 25, num_classes: int = 4,
                 norm: str = "none"):
        check_choice("norm", norm, ("bn", "bnrepro", "none"))
        if depth < 1:
            raise ValueError(f"depth={depth!r}: a network needs at least one layer")
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = in_features
        for _ in range(depth - 1):
            layers.append(nn.Linear(fan_in, width, bias=False))
            if norm != "none":
                layers.append(make_norm(norm, width, 1))
            fan_in = width
        layers.append(nn.Linear(fan_in, num_classes, bias=False))
        super().__init__(*layers)
        self.norm = norm
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=m.in_features ** -0.5)


def gaussian_classification(n_train: int = 4096, n_test: int = 1024, dim: int = 32, num_classes: int = 4,
                            seed: int = 0, label_noise: float = 0.0) -> TensorData:
    """Synthetic Gaussian data: ``x ~ N(0, I_dim)``, label = argmax of a random linear teacher ``A x``.

    ``label_noise`` replaces that fraction of labels by uniform random ones.
    Returned as a :class:`bnrepro.data.TensorData` with (N, dim) inputs, so the
    book's one training loop can train a :class:`DeepLinearNet` on it.
    """
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(num_classes, dim, generator=gen)
    x = torch.randn(n_train + n_test, dim, generator=gen)
    y = (x @ teacher.T).argmax(1)
    if label_noise > 0:
        flip = torch.rand(len(y), generator=gen) < label_noise
        y = torch.where(flip, torch.randint(0, num_classes, (len(y),), generator=gen), y)
    return TensorData("gaussian", x[:n_train], y[:n_train], x[n_train:], y[n_train:],
                      [str(c) for c in range(num_classes)], f"synthetic N(0, I_{dim}), seed {seed}",
                      (0.0,), (1.0,))


def summarize_ics(records: Sequence[dict], key: str = "l2") -> list[float]:
    """The median over measurements of ``key`` for each layer (NaNs ignored)."""
    if not records:
        return []
    table = torch.tensor([[math.nan if v is None else v for v in r[key]] for r in records], dtype=torch.float64)
    return [float(col[~torch.isnan(col)].median()) if (~torch.isnan(col)).any() else math.nan
            for col in table.T]


#: Quantile levels stored for each layer-input distribution (0.05, 0.10, ..., 0.95).
QUANTILES = tuple(round(0.05 * k, 2) for k in range(1, 20))


class ActivationProbe:
    """A :func:`bnrepro.training.loop.train` callback: the classic, distributional view of ICS.

    Every ``every`` steps, runs a fixed ``probe`` batch through the model in
    training mode (batch statistics; noise layers draw noise, as in a step),
    and stores for each ``tap`` module the :data:`QUANTILES` of its output
    (at most ``max_values`` values, a fixed random subset), its mean and std;
    and the l2 norm of each tensor in ``weights`` (for the effective learning
    rate ``lr / ||W||^2`` of the weights that BN makes scale-invariant).
    Running statistics are restored, so probing does not change the run.
    """

    def __init__(self, probe: torch.Tensor, taps: Sequence[nn.Module], every: int,
                 weights: Sequence[torch.Tensor] = (), max_values: int = 20000, seed: int = 0):
        if every < 1:
            raise ValueError(f"every={every!r}: probe every >= 1 steps")
        self.probe, self.taps, self.every, self.weights = probe, list(taps), every, list(weights)
        self.max_values, self.seed, self.records = max_values, seed, []
        self._index: dict[int, torch.Tensor] = {}

    def _subset(self, k: int, values: torch.Tensor) -> torch.Tensor:
        if values.numel() <= self.max_values:
            return values
        if k not in self._index:
            gen = torch.Generator().manual_seed(self.seed + k)
            self._index[k] = torch.randperm(values.numel(), generator=gen)[:self.max_values].to(values.device)
        return values[self._index[k]]

    def measure(self, model: nn.Module, step: int) -> dict:
        outs: dict[int, torch.Tensor] = {}
        hooks = [t.register_forward_hook(lambda m, i, o, k=k: outs.__setitem__(k, o.detach()))
                 for k, t in enumerate(self.taps)]
        was = model.training
        try:
            with restored(model), torch.no_grad():
                model.train()
                model(self.probe.to(next(model.parameters()).device))
        finally:
            model.train(was)
            for h in hooks:
                h.remove()
        q = torch.tensor(QUANTILES, dtype=torch.float64)
        layers = []
        for k in range(len(self.taps)):
            v = self._subset(k, outs[k].flatten()).double().cpu()
            layers.append({"quantiles": torch.quantile(v, q).tolist(), "mean": float(v.mean()),
                           "std": float(v.std())})
        return {"step": step, "layers": layers, "weight_norms": [float(w.detach().norm()) for w in self.weights]}

    def __call__(self, state) -> None:
        if state.step % self.every == 0:
            self.records.append(self.measure(state.model, state.step))


def distribution_drift(records: Sequence[dict]) -> list[float]:
    """Per layer, the mean step-to-step Wasserstein-1 distance between probed distributions.

    W1 between two distributions is the integral of the absolute difference
    of their quantile functions; we approximate it by the mean over the
    stored :data:`QUANTILES` of ``|Q_t(q) - Q_{t-1}(q)|`` and average over
    consecutive probes. Larger = less stable layer inputs.
    """
    if len(records) < 2:
        return []
    n_layers = len(records[0]["layers"])
    out = []
    for k in range(n_layers):
        qs = torch.tensor([r["layers"][k]["quantiles"] for r in records], dtype=torch.float64)
        out.append(float((qs[1:] - qs[:-1]).abs().mean()))
    return out
