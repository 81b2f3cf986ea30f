"""The one training loop of the book.

Data stays on the device as whole tensors (:class:`bnrepro.data.Batches`);
the loop is SGD or Adam with an optional learning-rate schedule (constant,
step, cosine, exponential), evaluates on
the test set each epoch (and, with ``eval_every_steps``, every k steps), keeps
a per-step and per-epoch history, and treats
divergence as a result: a NaN/inf loss stops the run and sets
``history.diverged`` instead of raising. Chapters extend it through
``callbacks`` (called after every step) rather than copying it; code that
wraps a whole experiment, whose own callbacks it cannot reach, adds its own
with :func:`observe`. A data-parallel run plugs in the same way, through a
:class:`bnrepro.training.hooks.DataParallelHook`: the loop itself knows
nothing of processes or experiments.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.device import get_device, synchronize
from ..data import Batches, TensorData
from .hooks import active_hook

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "cosine", "exp")
#: How the training set is cut into batches each epoch: "epoch" draws a new permutation every epoch;
#: "fixed_batches" keeps the batches of epoch 0 (the same images always share a batch) and only
#: shuffles their order (the "less thorough shuffling" of Ioffe & Szegedy's Sec. 4.2.1).
SHUFFLES = ("epoch", "fixed_batches")


@dataclasses.dataclass
class History:
    """What a training run measured.

    ``epochs``: one dict per epoch with ``train_loss``/``train_acc`` (running
    means over that epoch's batches, in training mode, as d2l reports them)
    and ``test_loss``/``test_acc`` (eval mode). ``steps``: ``[step, loss]``
    every ``log_every`` steps. ``evals``: with ``eval_every_steps=k``, one
    dict ``{"step", "test_loss", "test_acc"}`` before training (step 0), after
    every k optimizer steps and after the last step (Ioffe & Szegedy's
    Figure 1 plots test accuracy against steps, not epochs).
    ``images_per_s`` counts training steps only (evaluation time excluded).
    """

    epochs: list[dict] = dataclasses.field(default_factory=list)
    steps: list[list[float]] = dataclasses.field(default_factory=list)
    evals: list[dict] = dataclasses.field(default_factory=list)
    diverged: bool = False
    diverged_at_step: int | None = None
    images_per_s: float = 0.0
    train_time_s: float = 0.0
    total_steps: int = 0

    def final(self, key: str) -> float:
        """The last epoch's value of ``key`` (NaN when there is none)."""
        return self.epochs[-1][key] if self.epochs else math.nan

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class StepState:
    """Passed to callbacks after each optimizer step."""

    step: int
    epoch: int
    loss: float
    model: nn.Module
    optimizer: torch.optim.Optimizer
    inputs: torch.Tensor
    targets: torch.Tensor
    total: int = 0  # the optimizer steps this train() call plans (epochs x batches, or max_steps)


_OBSERVERS: list[Callable[[StepState], None]] = []


@contextlib.contextmanager
def observe(*callbacks: Callable[[StepState], None]):
    """Call ``callbacks`` after every step of every :func:`train` run inside the block.

    They run after the run's own callbacks. This is for code that wraps a whole
    experiment, e.g. a time box that stops it after N steps by raising
    (:mod:`bnrepro.gpu.timebox`); an experiment's own observers go in ``callbacks``.
    """
    _OBSERVERS.extend(callbacks)
    try:
        yield
    finally:
        for cb in callbacks:
            _OBSERVERS.remove(cb)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> dict:
    """Mean cross-entropy and accuracy of ``model`` in eval mode; restores its mode."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size])
        loss_sum += F.cross_entropy(out, y[i:i + batch_size], reduction="sum").item()
        correct += (out.argmax(1) == y[i:i + batch_size]).sum().item()
    model.train(was_training)
    return {"loss": loss_sum / len(x), "acc": correct / len(x)}


def make_optimizer(params, name: str, lr: float, momentum: float = 0.0,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer={name!r} is not one of {', '.join(OPTIMIZERS)}")


def lr_factor(schedule: str, step: int, total_steps: int, milestones: Sequence[float] = (0.5, 0.75),
              gamma: float = 0.1, warmup_steps: int = 0) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based).

    ``step``: times ``gamma`` at each milestone, given as fractions of the run
    (0.5, 0.75 = the paper recipes' drops at 50% and 75% of training);
    ``cosine``: half a cosine from 1 to 0; ``exp``: exponential decay,
    ``gamma ** (step / total_steps)`` (``gamma`` is the multiplier over the
    whole run; a decay k times faster is ``gamma ** k``). A linear warm-up over
    ``warmup_steps`` multiplies either.
    """
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule == "constant":
        return warm
    if schedule == "step":
        return warm * gamma ** sum(step >= m * total_steps for m in milestones)
    if schedule == "cosine":
        return warm * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    if schedule == "exp":
        return warm * gamma ** (min(step, total_steps) / max(total_steps, 1))
    raise ValueError(f"schedule={schedule!r} is not one of {', '.join(SCHEDULES)}")


def _progress_bar(total: int, enabled: bool | None):
    if enabled is None:  # interactive terminals only; quiet in notebooks and the built book
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", leave=False)


def train(model: nn.Module, data: TensorData, *, epochs: int = 1, batch_size: int = 128,
          lr: float = 0.1, optimizer: str = "sgd", momentum: float = 0.0,
          weight_decay: float = 0.0, schedule: str = "constant",
          milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1, warmup_steps: int = 0,
          seed: int = 0, augment: Callable | None = None, shuffle: str = "epoch", max_steps: int | None = None,
          log_every: int = 10, eval_every_epoch: bool = True, eval_batch_size: int = 1024,
          eval_every_steps: int | None = None,
          callbacks: Sequence[Callable[[StepState], None]] = (), progress: bool | None = None,
          device=None) -> History:
    """Train ``model`` on ``data`` with cross-entropy; returns a :class:`History`.

    ``seed`` fixes the data order (the model's initialisation is the caller's:
    seed before building it); ``shuffle`` is one of :data:`SHUFFLES`. ``max_steps`` stops early (smoke runs). Only
    parameters with ``requires_grad`` are optimized, so freezing is done on
    the model before calling this. ``eval_every_steps=k`` also evaluates on
    the test set at step 0, every k steps and at the end, into ``history.evals``.

    Inside a data-parallel run (a :class:`bnrepro.training.hooks.DataParallelHook` installed
    with :func:`bnrepro.training.hooks.data_parallel`, as :mod:`bnrepro.distributed.parallel`
    does) ``batch_size`` is the global batch: each process trains on its slice of every batch under DDP,
    with BN converted for the run's BN mode, and the history holds the global
    batches' losses and accuracies. Callbacks then see this process's slice.
    """
    if eval_every_steps is not None and (isinstance(eval_every_steps, bool) or
                                         not isinstance(eval_every_steps, int) or eval_every_steps < 1):
        raise ValueError(f"eval_every_steps={eval_every_steps!r}: must be None or an int >= 1")
    if lr <= 0 or not math.isfinite(lr):
        raise ValueError(f"lr={lr!r}: the learning rate must be a positive number")
    if epochs < 1:
        raise ValueError(f"epochs={epochs!r}: train for at least one epoch")
    if shuffle not in SHUFFLES:
        raise ValueError(f"shuffle={shuffle!r} is not one of {', '.join(SHUFFLES)}")
    callbacks = (*callbacks, *_OBSERVERS)
    device = get_device(device)
    model.to(device)
    data = data.to(device)
    par = active_hook()  # a data-parallel run (training.hooks): BN mode, DDP, batch shards
    forward = model
    world = 1
    per_device_bn = par is not None and par.per_device_bn
    if par is not None:
        world = par.world_size
        if per_device_bn and batch_size < 2 * world:
            raise ValueError(f"batch_size={batch_size} over {world} processes leaves fewer than 2 samples "
                             "per process for per-device BN; use a global batch of at least 2 per process "
                             "(or bn_mode='sync')")
        model, forward = par.prepare(model)
    # Keep the last, smaller batch (as d2l's DataLoader does) unless its batch
    # statistics would come from a single sample (variance zero). Per-device BN
    # needs 2 samples on every process, so it also drops a last batch of fewer
    # than 2 per process; synchronized BN takes the same steps as one process.
    last = len(data.x_train) % batch_size
    batches = Batches(data.x_train, data.y_train, batch_size, shuffle=True, seed=seed,
                      drop_last=0 < last < 2 * world if per_device_bn else last == 1, augment=augment,
                      fixed_batches=shuffle == "fixed_batches")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, optimizer, lr, momentum, weight_decay)
    total = epochs * len(batches) if max_steps is None else min(max_steps, epochs * len(batches))
    hist = History()
    bar = _progress_bar(total, progress)
    step, train_time, images = 0, 0.0, 0

    def eval_at(at_step: int) -> float:
        """Record a step-indexed test evaluation; returns the seconds it took."""
        t_eval = time.perf_counter()
        ev = evaluate(model, data.x_test, data.y_test, eval_batch_size)
        hist.evals.append({"step": at_step, "test_loss": ev["loss"], "test_acc": ev["acc"]})
        return time.perf_counter() - t_eval

    if eval_every_steps is not None:
        eval_at(0)
    model.train()
    try:
        for epoch in range(epochs):
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen, eval_time = 0, 0.0
            synchronize(device)
            t0 = time.perf_counter()
            for xb, yb in batches.epoch(epoch):
                if step >= total:
                    break
                for group in opt.param_groups:
                    group["lr"] = lr * lr_factor(schedule, step, total, milestones, gamma, warmup_steps)
                if world == 1:
                    out = forward(xb)
                    loss = F.cross_entropy(out, yb)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                else:  # this rank's slice of the global batch; DDP averages the gradients
                    n_global, rows = len(yb), par.shard(len(yb))
                    xb, yb = xb[rows], yb[rows]
                    out = forward(xb)
                    local_sum = F.cross_entropy(out, yb, reduction="sum")
                    opt.zero_grad(set_to_none=True)
                    # world * (sum over my rows) / N: the average over ranks is the global mean's gradient
                    (local_sum * (world / n_global)).backward()
                    loss = par.all_sum(local_sum)[0] / n_global  # the global batch's mean loss, on every rank
                opt.step()
                loss_value = loss.item()  # one sync per step: the price of catching divergence at once
                if not math.isfinite(loss_value):
                    hist.diverged, hist.diverged_at_step = True, step
                    break
                with torch.no_grad():
                    loss_sum += loss.detach() * len(yb) if world == 1 else local_sum.detach()
                    correct += (out.argmax(1) == yb).sum()
                seen += len(yb)
                if step % log_every == 0:
                    hist.steps.append([step, loss_value])
                for cb in callbacks:
                    cb(StepState(step, epoch, loss_value, model, opt, xb, yb, total))
                step += 1
                if eval_every_steps is not None and step % eval_every_steps == 0:
                    eval_time += eval_at(step)
                if bar is not None:
                    bar.update(1)
            synchronize(device)
            train_time += time.perf_counter() - t0 - eval_time
            if world > 1:  # the epoch's loss and accuracy over the global batches
                loss_sum, correct, n = par.all_sum(loss_sum, correct, torch.tensor(float(seen), device=device))
                seen = int(n.item())
            images += seen
            if hist.diverged or seen == 0:
                break
            record = {"epoch": epoch + 1, "step": step,
                      "train_loss": loss_sum.item() / seen, "train_acc": correct.item() / seen,
                      "lr": opt.param_groups[0]["lr"]}
            if eval_every_epoch or epoch == epochs - 1 or step >= total:
                ev = evaluate(model, data.x_test, data.y_test, eval_batch_size)
                record.update(test_loss=ev["loss"], test_acc=ev["acc"])
            hist.epochs.append(record)
            if step >= total:
                break
    finally:
        if bar is not None:
            bar.close()
    if (eval_every_steps is not None and not hist.diverged
            and (not hist.evals or hist.evals[-1]["step"] != step)):
        eval_at(step)  # the last step, when it is not a multiple of eval_every_steps
    hist.total_steps = step
    hist.train_time_s = train_time
    hist.images_per_s = images / train_time if train_time > 0 else 0.0
    return hist


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    **extra) -> Path:
    """Save model (and optimizer) state with plain tensors and numbers only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"model": model.state_dict(), "extra": extra}
    if optimizer is not None:
        blob["optimizer"] = optimizer.state_dict()
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Load a checkpoint made by :func:`save_checkpoint` (``weights_only=True``: no pickled code)."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    model.load_state_dict(blob["model"])
    if optimizer is not None and "optimizer" in blob:
        optimizer.load_state_dict(blob["optimizer"])
    return blob.get("extra", {})
