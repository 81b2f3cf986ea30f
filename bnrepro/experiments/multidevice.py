"""Batch statistics across devices: per-device vs synchronized BN (chapter ``book/multidevice_bn``).

Two experiments, each launched over real processes (gloo on the CPU) with
:func:`bnrepro.distributed.launch.launch`:

* ``bn_equivalence`` -- a few SGD steps of a tiny float64 BN network under DDP
  (the bench of :mod:`bnrepro.measure.equivalence`):
  per-device BN against one process with ghost BN (one ghost batch per
  rank), synchronized BN against one process with full-batch BN; the largest
  differences of outputs, gradients and running statistics.
* ``sync_bn_cost`` -- per-step time of DDP training of d2l's BN-LeNet with
  per-device BN and with synchronized BN, steps of the two interleaved, plus
  the latency of one all-reduce of a BN layer's statistics.

The ghost-batch-size sweep the chapter reads is the ``ghost_bn`` experiment
of the ICS chapter (:mod:`bnrepro.experiments.ics`): same fixed SGD batch,
ghost batches of 4, 16 and 128 samples. The chapter's tables and scored
claims: :mod:`bnrepro.chapters.multidevice_bn`.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from ..core.claims import CHECK, ClaimSpec, at_least, at_most, register_claims
from ..core.config import ExperimentConfig, require
from ..core.results import Result, make_result
from ..data.datasets import load_dataset
from ..distributed.launch import launch
from ..measure.equivalence import bn_steps, reference_bn_steps
from ..models import LeNet, init_weights
from ..nn.modes import apply_bn_mode
from ..nn.sync_bn import Communication, convert_sync_batchnorm
from . import register


# --------------------------------------------------------------------------- equivalence over processes
@dataclasses.dataclass(frozen=True)
class EquivalenceConfig(ExperimentConfig):
    experiment = "bn_equivalence"
    result_keys = ("local_vs_ghost", "sync_vs_full", "local_vs_full", "dtype")
    profiles = {"smoke": {}, "cpu": {}, "paper": {}}  # seconds at every profile

    nproc: int = 2
    batch_size: int = 8               # global batch (N, 2, 4, 4), float64
    sync_shards: tuple = (5, 3)       # unequal local batches for synchronized BN
    steps: int = 3                    # SGD steps, lr 0.1
    seed: int = 0

    def validate(self):
        require(self.nproc == 2, "nproc", self.nproc, "the check is written for 2 processes")
        require(sum(self.sync_shards) == self.batch_size and min(self.sync_shards) >= 1, "sync_shards",
                self.sync_shards, "must be positive and add up to batch_size")
        require(self.batch_size % self.nproc == 0, "batch_size", self.batch_size, "must split evenly")


def _max_diff(ranks, ref, shards, x_grad_factor, running_ranks):
    worst = {"out": 0.0, "x_grad": 0.0, "grads": 0.0, "running": 0.0}
    for s, rec in enumerate(ref):
        start = 0
        for r, n in enumerate(shards):
            got, rows = ranks[r][s], slice(start, start + n)
            start += n
            worst["out"] = max(worst["out"], (got["out"] - rec["out"][rows]).abs().max().item())
            worst["x_grad"] = max(worst["x_grad"],
                                  (got["x_grad"] - x_grad_factor * rec["x_grad"][rows]).abs().max().item())
            worst["grads"] = max([worst["grads"]] + [(a - b).abs().max().item()
                                                     for a, b in zip(got["grads"], rec["grads"])])
            if r in running_ranks:
                worst["running"] = max([worst["running"]] + [
                    (a - b).abs().max().item() for ga, gb in zip(got["running"], rec["running"])
                    for a, b in zip(ga, gb)])
    return worst


def run_equivalence(cfg: EquivalenceConfig, device=None) -> Result:
    """DDP per-device BN vs one-process ghost BN, and synchronized BN vs full-batch BN."""
    start = time.perf_counter()
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(cfg.batch_size, 2, 4, 4, generator=g, dtype=torch.float64) * 2 + 0.5
    y = torch.randint(0, 3, (cfg.batch_size,), generator=g)
    even = [cfg.batch_size // cfg.nproc] * cfg.nproc
    local = launch(bn_steps, cfg.nproc, (x, y, "local", even, cfg.steps))
    sync = launch(bn_steps, cfg.nproc, (x, y, "sync", list(cfg.sync_shards), cfg.steps))
    ghost_ref = reference_bn_steps(x, y, "ghost", even[0], cfg.steps)
    full_ref = reference_bn_steps(x, y, "full", steps=cfg.steps)
    # Input gradients on a rank are those of the sum of the ranks' losses: nproc x the mean loss.
    data = {"local_vs_ghost": _max_diff(local, ghost_ref, even, cfg.nproc, {0}),
            "sync_vs_full": _max_diff(sync, full_ref, cfg.sync_shards, cfg.nproc, set(range(cfg.nproc))),
            "local_vs_full": _max_diff(local, full_ref, even, cfg.nproc, {0}),
            "dtype": "float64"}
    return make_result(cfg, data,
                       device="cpu", started=start, seeds={"data": cfg.seed, "init": 0},
                       extra={"world_size": cfg.nproc, "backend": "gloo"})


register(EquivalenceConfig, run_equivalence)

#: Checks of our code (no paper claim): exact in exact arithmetic, so judged at float64 rounding.
EQUIVALENCE_CLAIMS = register_claims("bn_equivalence", [
    ClaimSpec("per-device-bn-is-ghost-bn", CHECK, "DDP with per-device BN computes ghost BN with one ghost "
              "batch per device: max |diff| of outputs, gradients, running stats (float64)", "0 (exact)",
              at_most(1e-9), "an identity: float64 rounding after a few steps is far below 1e-9", fmt="{:.1e}"),
    ClaimSpec("sync-bn-is-full-batch-bn", CHECK, "synchronized BN over devices = BN on the global batch, "
              "unequal shards: max |diff| (float64)", "0 (exact)", at_most(1e-9),
              "an identity: float64 rounding after a few steps is far below 1e-9", fmt="{:.1e}"),
])


# --------------------------------------------------------------------------- the cost of synchronizing
#: Timed arms: per-device BN (PyTorch's kernels), synchronized BN, and synchronized BN's code
#: with its all-reduces switched off.
MODES = ("local", "sync", "sync_nocomm")

@dataclasses.dataclass(frozen=True)
class SyncCostConfig(ExperimentConfig):
    experiment = "sync_bn_cost"
    result_keys = ("step_ms", "step_ms_all", "ratio", "extra_ms", "comm_ms", "compute_overhead_ms", "bn_layers",
                   "bn_widths", "allreduces_per_step", "allreduce_ms", "predicted_extra_ms", "local_batch")
    profiles = {"smoke": {"steps": 8, "warmup": 2, "n_batches": 4},
                "cpu": {}, "paper": {"steps": 200, "warmup": 20}}

    nproc: int = 2
    batch_size: int = 256             # global (d2l's BN-LeNet batch): 128 images per process
    steps: int = 200                  # timed steps per BN mode, the arms interleaved step by step
    warmup: int = 5
    n_batches: int = 8                # distinct batches cycled through (Fashion-MNIST train images)
    latency_repeats: int = 200        # all-reduces timed for the latency estimate
    seed: int = 0

    def validate(self):
        require(self.nproc >= 2, "nproc", self.nproc, "synchronization needs >= 2 processes")
        require(self.batch_size % self.nproc == 0 and self.batch_size // self.nproc >= 2, "batch_size",
                self.batch_size, "must split into >= 2 images per process")
        require(self.steps >= 1 and self.warmup >= 0, "steps", self.steps, "need >= 1 timed step")


class _NoComm(Communication):
    """Synchronized BN's all-reduces switched off: its own compute without its communication
    (wrong numbers, right cost), to split the extra time in two."""

    def all_reduce(self, tensor, group=None) -> None:
        return None

    def all_reduce_differentiable(self, tensor, group=None):
        return tensor


def _time_worker(rank: int, world: int, x: torch.Tensor, y: torch.Tensor, cfg: dict) -> dict:
    local_bs = cfg["batch_size"] // world
    models = {}
    for mode in MODES:
        torch.manual_seed(cfg["seed"])
        net = init_weights(LeNet(norm="bn"), "xavier")
        # The no-communication arm is synchronized BN whose layers talk through _NoComm.
        net = convert_sync_batchnorm(net, comm=_NoComm()) if mode == "sync_nocomm" else apply_bn_mode(net, mode)
        ddp = DDP(net)
        models[mode] = (ddp, torch.optim.SGD(ddp.parameters(), lr=0.1))
    times = {m: [] for m in MODES}
    for i in range(cfg["warmup"] + cfg["steps"]):
        b = i % cfg["n_batches"]
        xb = x[b * cfg["batch_size"] + rank * local_bs:][:local_bs]
        yb = y[b * cfg["batch_size"] + rank * local_bs:][:local_bs]
        order = MODES if i % 2 == 0 else MODES[::-1]  # drift hits every arm alike
        for mode in order:
            ddp, opt = models[mode]
            dist.barrier()
            t0 = time.perf_counter()
            loss = F.cross_entropy(ddp(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= cfg["warmup"]:
                times[mode].append(time.perf_counter() - t0)
    n_bn = sum(1 for m in models["sync"][0].modules() if type(m).__name__ == "SyncBatchNorm")
    widths = [m.num_features for m in models["sync"][0].modules() if type(m).__name__ == "SyncBatchNorm"]
    lat = []
    buf = torch.zeros(2 * max(widths) + 1, dtype=torch.float64)
    for _ in range(cfg["latency_repeats"]):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(buf)
        lat.append(time.perf_counter() - t0)
    return {"times": times, "bn_layers": n_bn, "bn_widths": widths, "allreduce_s": statistics.median(lat)}


def _paired(times: dict, a: str, b: str) -> float:
    return statistics.median(ta - tb for ta, tb in zip(times[a], times[b]))


def run_sync_cost(cfg: SyncCostConfig, device=None) -> Result:
    """Per-step time of DDP BN-LeNet with per-device vs synchronized BN (gloo processes on this CPU)."""
    start = time.perf_counter()
    data = load_dataset("fashion-mnist", device="cpu", n_train=cfg.batch_size * cfg.n_batches, n_test=1)
    ranks = launch(_time_worker, cfg.nproc, (data.x_train, data.y_train, cfg.to_dict()), timeout=600)
    r0 = ranks[0]
    med = {m: statistics.median(t) for m, t in r0["times"].items()}
    data_out = {"step_ms": {m: 1e3 * v for m, v in med.items()},
                "step_ms_all": {m: [1e3 * t for t in ts] for m, ts in r0["times"].items()},
                "ratio": med["sync"] / med["local"],
                # Medians of step-by-step paired differences: robust to the load drifting.
                "extra_ms": 1e3 * _paired(r0["times"], "sync", "local"),
                "comm_ms": 1e3 * _paired(r0["times"], "sync", "sync_nocomm"),
                "compute_overhead_ms": 1e3 * _paired(r0["times"], "sync_nocomm", "local"),
                "bn_layers": r0["bn_layers"], "bn_widths": r0["bn_widths"],
                "allreduces_per_step": 2 * r0["bn_layers"],  # one in forward + one in backward per layer
                "allreduce_ms": 1e3 * r0["allreduce_s"],
                "predicted_extra_ms": 1e3 * r0["allreduce_s"] * 2 * r0["bn_layers"],
                "local_batch": cfg.batch_size // cfg.nproc}
    return make_result(cfg, data_out,
                       device="cpu", started=start, seeds={"init": cfg.seed},
                       extra={"world_size": cfg.nproc, "backend": "gloo", "threads_per_process": 1,
                              "bn_modes": list(MODES)})


register(SyncCostConfig, run_sync_cost)

COST_CLAIMS = register_claims("sync_bn_cost", [
    ClaimSpec("sync-bn-costs-time", CHECK, "synchronized BN is slower per step than per-device BN "
              "(ratio of median step times, 2 processes)", "> 1", at_least(1.0),
              "synchronizing adds two all-reduces per BN layer per step, so any ratio above 1 shows the cost",
              fmt="{:.2f}"),
])
