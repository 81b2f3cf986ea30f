"""Running averages vs population statistics at inference (Ioffe & Szegedy, Algorithm 2).

Algorithm 2 replaces each BN layer's batch statistics at inference by
population statistics averaged over training mini-batches, with the unbiased
variance ``m/(m-1) E_B[sigma_B^2]``. Frameworks instead keep exponential
running averages during training (PyTorch momentum 0.1: roughly the last ten
batches, computed with ten different sets of weights). This experiment trains
d2l's BN-LeNet on Fashion-MNIST and, at a list of checkpoints, measures the
test accuracy three ways: with the running averages (``model.eval()``), with
population statistics recomputed over the whole training set
(:func:`bnrepro.measure.population_stats.recalibrate_bn`), and with each test batch's own
statistics (the model left in training mode).

The chapter "BN from first principles" tabulates and scores the runs
(:mod:`bnrepro.chapters.bn_first_principles`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time

import torch

from ..core.claims import EMPIRICAL, ClaimSpec, at_least, register_claims, within
from ..core.config import ExperimentConfig, require
from ..core.device import get_device
from ..core.results import Result, make_result
from ..data.datasets import DATASETS, load_dataset, require_subset
from ..measure.population_stats import bn_layers, bn_statistics, recalibrate_bn
from ..models import INITS
from ..training.loop import evaluate, train
from . import register
from .lenet import build_lenet


@dataclasses.dataclass(frozen=True)
class BNInferenceConfig(ExperimentConfig):
    experiment = "bn_inference"
    result_keys = ("checkpoints", "history", "bn_layers", "steps_per_epoch", "data_source")
    profiles = {
        "smoke": {"epochs": 1, "n_train": 2048, "n_test": 512, "checkpoints": (1, 2, 5)},
        "cpu": {},      # 2 of d2l's 10 epochs: the effects show within the first few hundred steps
        "paper": {"epochs": 10},
    }

    dataset: str = "fashion-mnist"
    norm: str = "bn"                  # "bn" | "bnrepro": a LeNet with BN layers
    activation: str = "sigmoid"       # d2l's BN-LeNet
    init: str = "xavier"
    lr: float = 1.0                   # d2l-zh's learning rate (plain SGD)
    epochs: int = 2
    batch_size: int = 256
    bn_momentum: float = 0.1          # PyTorch convention: weight of the newest batch
    # Steps (1-based, after that many updates) at which inference is measured;
    # the last step of the run is always added. Dense early (the running averages
    # warm up over ~1/momentum steps), then every 50 steps.
    checkpoints: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100, 150, 200, 250, 300, 350, 400, 450)
    calib_batch_size: int = 256       # Algorithm 2's training mini-batches of size m
    # Algorithm 2 averages over "multiple training mini-batches": 40 batches of 256 (a random
    # subset drawn once per run from ``seed``) estimate each channel's mean to ~1% of its std.
    calib_images: int | None = 10240  # None = the whole training set
    # d2l's input pipeline: pixels in [0, 1], no standardization (as the LeNet chapter's d2l arms).
    standardize_inputs: bool = False
    seed: int = 0                     # model init and data order
    n_train: int | None = None        # None = the whole training set
    n_test: int | None = None

    def validate(self):
        require(self.dataset in DATASETS, "dataset", self.dataset, f"must be one of {', '.join(DATASETS)}")
        require(self.norm in ("bn", "bnrepro"), "norm", self.norm,
                "this experiment compares BN statistics: use 'bn' or 'bnrepro'")
        require(self.init in INITS, "init", self.init, f"must be one of {', '.join(INITS)}")
        require(self.lr > 0, "lr", self.lr, "the learning rate must be > 0")
        require(self.epochs >= 1, "epochs", self.epochs, "train for at least 1 epoch")
        require(self.batch_size >= 2, "batch_size", self.batch_size,
                "BN in training needs at least 2 samples per batch")
        require(0 < self.bn_momentum <= 1, "bn_momentum", self.bn_momentum, "must be in (0, 1]")
        require(all(isinstance(c, int) and c >= 1 for c in self.checkpoints), "checkpoints",
                self.checkpoints, "steps are integers >= 1")
        require(self.calib_batch_size >= 2, "calib_batch_size", self.calib_batch_size,
                "population statistics need at least 2 samples per batch")
        require(self.calib_images is None or self.calib_images >= self.calib_batch_size, "calib_images",
                self.calib_images, "must be None (all) or at least one calibration batch")
        for name in ("n_train", "n_test"):
            value = getattr(self, name)
            require(value is None or value >= 1, name, value, "must be None (all) or >= 1")
        require_subset(self.dataset, self.n_train, self.n_test)


@torch.no_grad()
def _batch_stats_accuracy(model, x, y, batch_size: int) -> float:
    """Test accuracy with each test batch normalized by its own statistics (on a copy)."""
    m = copy.deepcopy(model).train()
    correct = sum((m(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
                  for i in range(0, len(x), batch_size))
    return correct / len(x)


def _discrepancy(running: dict, population: dict) -> dict:
    """Per BN layer: mean over channels of |running mean - E[x]| / sqrt(Var[x]) and of
    |log(running var / Var[x])| (0 = identical)."""
    out = {}
    for name, (rm, rv) in running.items():
        pm, pv = population[name]
        out[name] = {"mean_shift": ((rm - pm).abs() / pv.clamp_min(1e-12).sqrt()).mean().item(),
                     "log_var_ratio": (rv.clamp_min(1e-12) / pv.clamp_min(1e-12)).log().abs().mean().item()}
    return out


def run(cfg: BNInferenceConfig, device=None) -> Result:
    """Train BN-LeNet; at checkpoints, test accuracy with running vs population vs batch statistics."""
    device = get_device(device)
    start = time.perf_counter()
    data = load_dataset(cfg.dataset, device=device, n_train=cfg.n_train, n_test=cfg.n_test,
                        normalize=cfg.standardize_inputs)
    model = build_lenet(cfg, data)
    calib_x = data.x_train
    if cfg.calib_images is not None and cfg.calib_images < len(calib_x):
        pick = torch.randperm(len(calib_x), generator=torch.Generator().manual_seed(cfg.seed))
        calib_x = calib_x[pick[:cfg.calib_images].to(calib_x.device)]
    for _, bn in bn_layers(model):
        bn.momentum = cfg.bn_momentum
    checkpoints: list[dict] = []
    wanted = set(cfg.checkpoints)

    def measure(step: int, mdl) -> None:
        calibrated = recalibrate_bn(copy.deepcopy(mdl), calib_x, cfg.calib_batch_size)
        run_ev = evaluate(mdl, data.x_test, data.y_test)
        pop_ev = evaluate(calibrated, data.x_test, data.y_test)
        checkpoints.append({
            "step": step,
            "acc_running": run_ev["acc"], "loss_running": run_ev["loss"],
            "acc_population": pop_ev["acc"], "loss_population": pop_ev["loss"],
            "acc_batch_stats": _batch_stats_accuracy(mdl, data.x_test, data.y_test, cfg.batch_size),
            "layers": _discrepancy(bn_statistics(mdl), bn_statistics(calibrated)),
        })

    def callback(state) -> None:
        if state.step + 1 in wanted:
            measure(state.step + 1, state.model)

    hist = train(model, data, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                 seed=cfg.seed, callbacks=[callback], eval_every_epoch=False, device=device)
    if not hist.diverged and (not checkpoints or checkpoints[-1]["step"] != hist.total_steps):
        measure(hist.total_steps, model)
    return make_result(cfg, {"checkpoints": checkpoints, "history": hist.to_dict(),
                   "bn_layers": [name for name, _ in bn_layers(model)],
                   "steps_per_epoch": math.ceil(len(data.x_train) / cfg.batch_size),
                   "data_source": data.source},
                       device=device, started=start, seeds={"init": cfg.seed, "data_order": cfg.seed})


LRS = (0.1, 1.0)  # d2l-en's and d2l-zh's learning rates for BN-LeNet
#: 5 seeds per learning rate: the late gaps are a few thousandths, about their seed spread.
SEEDS = {"smoke": (0,), "cpu": (0, 1, 2, 3, 4), "paper": (0, 1, 2, 3, 4)}
EARLY_STEPS = 10        # "early": the running averages still remember their (0, 1) start
LATE_FRACTION = 0.2     # "late": checkpoints from 20% of the run on


def sweep(profile: str) -> list[BNInferenceConfig]:
    """d2l-en's lr 0.1 and d2l-zh's lr 1.0, a few seeds: what the first-principles chapter reads."""
    return [BNInferenceConfig.for_profile(profile, lr=lr, seed=seed)
            for lr in LRS for seed in SEEDS[profile]]


register(BNInferenceConfig, run, sweep, data_parallel=True)

#: The claims the bn_inference runs are scored by (per run: the mean gap = accuracy with population
#: statistics minus with running averages, over its early or late checkpoints), fixed before the runs.
CLAIMS = register_claims("bn_inference", [
    ClaimSpec("running-stats-warm-up", EMPIRICAL, f"in the first {EARLY_STEPS} steps, population statistics "
              "beat the running averages, which start at (0, 1) (accuracy gap, per run, both lrs)", "> 0",
              at_least(0.05, null=0.0), f"after t <= {EARLY_STEPS} steps the start values still weigh "
              "(1-0.1)^t >= 0.35 in the average, so the gap should be large: 0.05 at least; partly if positive",
              source="pytorch_batchnorm", where="running_mean/running_var start at 0/1, momentum 0.1", n=5),
    ClaimSpec("running-stats-trail-at-lr-1", EMPIRICAL, "at lr 1.0 (d2l-zh's), population statistics "
              "(Algorithm 2) give higher test accuracy than the running averages after the warm-up "
              f"(mean gap over the checkpoints from {LATE_FRACTION:.0%} of the run, per seed)", "> 0",
              at_least(0.005, null=0.0), "0.005 is about the standard error of an accuracy on 10,000 test "
              "images; a positive gap below it is partly", source="ioffe2015batch", where="Sec. 3.1, Alg. 2",
              n=5),
    ClaimSpec("running-stats-fine-at-lr-0.1", EMPIRICAL, "at lr 0.1 (d2l-en's), moving averages track the "
              "accuracy of the model as it trains: late gap, per seed", "≈ 0", within(0.0, 0.005),
              "within ±0.005, about the standard error of an accuracy on 10,000 test images",
              source="ioffe2015batch", where="Sec. 3.1 (moving averages to track accuracy)", n=5),
])
