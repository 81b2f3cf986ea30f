"""The equivalence bench of data-parallel BN: what per-device and synchronized BN compute.

:func:`bn_steps` / :func:`reference_bn_steps` are the two sides of the
equivalence checks of the chapter "Batch statistics across devices"
(:mod:`bnrepro.experiments.multidevice`) and of
``tests/test_distributed_bn.py``: a few SGD steps of a tiny float64 BN network
under DDP (per-device or synchronized BN; run it in processes started by
:func:`bnrepro.distributed.launch.launch`) and in one process (ghost BN or
plain full-batch BN). Per-device BN should equal ghost BN with one ghost batch
per process, synchronized BN should equal BN on the whole batch -- in float64,
to rounding.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..nn.ghost import convert_ghost_batchnorm
from ..nn.modes import apply_bn_mode

__all__ = ["tiny_bn_net", "bn_steps", "reference_bn_steps"]


def tiny_bn_net(seed: int = 0, dtype=torch.float64) -> nn.Sequential:
    """Conv -> BN2d -> ReLU -> Linear -> BN1d -> ReLU -> Linear on (N, 2, 4, 4) inputs, 3 classes."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(64, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).to(dtype)


def _record(model, out, x, steps):
    bns = [m for m in model.modules() if hasattr(m, "running_mean") and m.running_mean is not None]
    steps.append({"out": out.detach().clone(), "x_grad": x.grad.detach().clone(),
                  "grads": [p.grad.detach().clone() for p in model.parameters()],
                  "running": [(m.running_mean.clone(), m.running_var.clone()) for m in bns]})


def bn_steps(rank: int, world: int, x: torch.Tensor, y: torch.Tensor, mode: str, sizes: list[int],
             steps: int = 3, lr: float = 0.1, seed: int = 0) -> list[dict]:
    """SGD on :func:`tiny_bn_net` under DDP; rank ``r`` trains on its slice of ``sizes`` of (x, y).

    The loss of rank ``r`` is ``world * sum(its per-sample losses) / len(x)``, so that DDP's
    average of the parameter gradients is the gradient of the full-batch mean loss even for
    unequal slices. Returns, per step, this rank's output, input gradient (that of the sum of
    all ranks' losses), the DDP-averaged parameter gradients and the running statistics
    (recorded after the step's forward and backward, before the optimizer step).
    """
    model = apply_bn_mode(tiny_bn_net(seed, x.dtype), mode)
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=lr)
    start = sum(sizes[:rank])
    xs, ys = x[start:start + sizes[rank]], y[start:start + sizes[rank]]
    records: list[dict] = []
    for _ in range(steps):
        xr = xs.clone().requires_grad_()
        out = ddp(xr)
        loss = nn.functional.cross_entropy(out, ys, reduction="sum") * (world / len(x))
        opt.zero_grad()
        loss.backward()
        _record(model, out, xr, records)
        opt.step()
    return records


def reference_bn_steps(x: torch.Tensor, y: torch.Tensor, mode: str, ghost_batch_size: int | None = None,
                       steps: int = 3, lr: float = 0.1, seed: int = 0) -> list[dict]:
    """The one-process counterpart of :func:`bn_steps` on the full batch with mean loss.

    ``mode="full"``: plain BN over the whole batch (what synchronized BN should equal);
    ``mode="ghost"``: ghost BN of ``ghost_batch_size`` whose running statistics follow the
    first ghost batch (``stats_update="first"``: what DDP keeps from rank 0).
    """
    model = tiny_bn_net(seed, x.dtype)
    if mode == "ghost":
        model = convert_ghost_batchnorm(model, ghost_batch_size, stats_update="first")
    elif mode != "full":
        raise ValueError(f"mode={mode!r}: use 'full' or 'ghost'")
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    records: list[dict] = []
    for _ in range(steps):
        xr = x.clone().requires_grad_()
        out = model(xr)
        loss = nn.functional.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        _record(model, out, xr, records)
        opt.step()
    return records
