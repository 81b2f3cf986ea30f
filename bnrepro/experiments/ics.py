"""Is it internal covariate shift? Santurkar et al. 2018, Kohler et al. 2018, BN as noise.

Four experiments, one config class each (chapter ``book/ics.ipynb``):

* ``noisy_bn`` -- a VGG with BN, without, with "noisy BN" (time-varying
  noise after every BN layer: the paper's i.i.d. noise per activation, and a
  per-channel affine shift shared by the batch, which moves the distribution
  without burying sample information) and the standard VGG with the i.i.d.
  noise; accuracy, probed layer-input distributions, weight norms; in the
  arms without noise also the ICS measure (with the optimizer's actual
  momentum step) and the landscape measures at equal distances moved.
* ``ics_dln`` -- ICS in a deep linear network on synthetic Gaussian data
  (plain SGD, so the step ``-lr G`` of the measure is the actual update).
* ``ghost_bn`` -- test accuracy and test loss as the BN statistics get
  noisier (ghost batches of 4 samples vs the whole SGD batch of 128).
* ``decoupling`` -- GD on ``w`` vs GD on ``(g, v)`` with ``w = g v/||v||_S``,
  over a grid of step sizes, on random ill-conditioned problems.

Each experiment registers the claims its runs are scored by (``CLAIMS_*``),
written before the runs; the chapter's tables and scoring:
:mod:`bnrepro.chapters.ics`.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from ..core.config import ExperimentConfig, require
from ..core.device import get_device
from ..core.results import Result, make_result
from ..data.datasets import load_dataset, require_subset
from ..measure.decoupling import decoupled_gd, gd, least_squares, linear_rate, logistic_regression, scale_invariant_gd
from ..measure.ics import ActivationProbe, DeepLinearNet, ICSCallback, gaussian_classification
from ..measure.landscape import DEFAULT_STEP_SIZES, LandscapeCallback
from ..models import NoisyVGG, count_parameters
from ..models.noise import NOISE_KINDS
from ..models.vgg import VGG_CONFIGS
from ..training.loop import evaluate, train
from . import register
from .ics_claims import CLAIMS_DECOUPLING, CLAIMS_DLN, CLAIMS_GHOST, CLAIMS_NOISY  # noqa: F401 (registers them)


# --------------------------------------------------------------------------- noisy BN / ICS / landscape (VGG)
@dataclasses.dataclass(frozen=True)
class NoisyBNConfig(ExperimentConfig):
    experiment = "noisy_bn"
    result_keys = ("history", "probes", "ics", "landscape", "parameters", "data_source")
    profiles = {
        "smoke": {"n_train": 768, "n_test": 256, "epochs": 1, "probe_every": 3, "eval_every_steps": 3},
        "cpu": {"epochs": 2},
        "paper": {"dataset": "cifar10", "vgg": "vgg11", "hidden": 512, "n_train": None, "n_test": None,
                  "epochs": 30, "lr": 0.05, "probe_every": 200, "eval_every_steps": 390},
    }

    dataset: str = "fashion-mnist"
    vgg: str = "tiny"                 # cpu: 8-16-32-32 channels on 28x28 (VGG_CONFIGS)
    hidden: int = 64
    norm: str = "bn"                  # "bn" | "none"
    noise: bool = False               # DistributionNoise after every norm layer
    noise_kind: str = "iid"           # "iid" (per activation, the paper's) | "affine" (per channel, whole batch)
    noise_mean_max: float = 1.0       # per step mu ~ U(-1, 1): our choice, see the chapter
    noise_std_min: float = 0.5        # per step sigma ~ U(0.5, 1.5): variance 0.25 .. 2.25
    noise_std_max: float = 1.5
    lr: float = 0.02                  # SGD, per batch (mean loss)
    momentum: float = 0.9
    batch_size: int = 128
    epochs: int = 3
    n_train: int | None = 10000       # 79 steps per epoch at batch 128
    n_test: int | None = 2000
    seed: int = 0
    probe_every: int = 20             # steps between layer-input probes
    probe_size: int = 256
    eval_every_steps: int = 20        # test accuracy every k steps
    ics_every: int = 0                # 0 = do not measure ICS
    landscape_every: int = 0          # 0 = do not measure the landscape
    step_sizes: tuple = DEFAULT_STEP_SIZES  # distances moved along the gradient (landscape_by_distance)
    landscape_by_distance: bool = True

    def validate(self):
        require(self.norm in ("bn", "bnrepro", "none"), "norm", self.norm, "must be bn, bnrepro or none")
        require(self.vgg in VGG_CONFIGS, "vgg", self.vgg, f"must be one of {', '.join(VGG_CONFIGS)}")
        require(self.noise_kind in NOISE_KINDS, "noise_kind", self.noise_kind,
                f"must be one of {', '.join(NOISE_KINDS)}")
        require(self.lr > 0, "lr", self.lr, "the learning rate must be > 0")
        require_subset(self.dataset, self.n_train, self.n_test)
        require(self.noise_std_max >= self.noise_std_min >= 0, "noise_std_min", self.noise_std_min,
                "need 0 <= noise_std_min <= noise_std_max")
        require(self.batch_size >= 2, "batch_size", self.batch_size, "BN needs >= 2 samples per batch")
        for name in ("probe_every", "eval_every_steps"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        for name in ("ics_every", "landscape_every"):
            require(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0 (0 = off)")


def run_noisy_bn(cfg: NoisyBNConfig, device=None) -> Result:
    """Train one VGG arm (norm x noise) and probe its layer inputs, ICS and landscape."""
    device = get_device(device)
    start = time.perf_counter()
    data = load_dataset(cfg.dataset, device=device, n_train=cfg.n_train, n_test=cfg.n_test)
    torch.manual_seed(cfg.seed)
    model = NoisyVGG(cfg.vgg, norm=cfg.norm, noise=cfg.noise, num_classes=data.num_classes,
                     in_channels=data.in_channels, image_size=data.image_size, hidden=cfg.hidden,
                     noise_mean_max=cfg.noise_mean_max, noise_std_min=cfg.noise_std_min,
                     noise_std_max=cfg.noise_std_max, noise_kind=cfg.noise_kind).to(device)
    probe = ActivationProbe(data.x_train[:cfg.probe_size], model.taps(), cfg.probe_every,
                             weights=[m.weight for m in model.weight_layers()], seed=cfg.seed)
    callbacks = [probe]
    ics = ICSCallback(cfg.ics_every) if cfg.ics_every else None
    land = (LandscapeCallback(cfg.landscape_every, cfg.step_sizes, cfg.landscape_by_distance)
            if cfg.landscape_every else None)
    callbacks += [c for c in (ics, land) if c is not None]
    hist = train(model, data, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
                 seed=cfg.seed, eval_every_steps=cfg.eval_every_steps, callbacks=callbacks, device=device)
    return make_result(cfg, {"history": hist.to_dict(), "probes": probe.records,
                   "ics": ics.records if ics else [], "landscape": land.records if land else [],
                   "parameters": count_parameters(model), "data_source": data.source},
                       device=device, started=start, seeds={"init": cfg.seed, "data_order": cfg.seed})


#: Seeds of the cpu-profile sweeps (init and data order; for decoupling, the random problem).
NOISY_SEEDS = {"smoke": (0,), "cpu": (0, 1, 2, 3, 4), "paper": (0, 1, 2, 3, 4)}
DLN_SEEDS = {"smoke": (0,), "cpu": (0, 1, 2, 3, 4), "paper": (0, 1, 2, 3, 4)}
GHOST_SEEDS = {"smoke": (0,), "cpu": (0, 1, 2, 3, 4), "paper": (0, 1, 2, 3, 4)}
DECOUPLING_SEEDS = {"smoke": (0,), "cpu": (0, 1, 2, 3, 4), "paper": (0, 1, 2, 3, 4)}

#: The noise level s of the noisy arms: mu ~ U(-s, s), sigma ~ U(s/2, 3s/2) (i.i.d.), or
#: a ~ U(1 - s/2, 1 + s/2), b ~ U(-s, s) (affine). s = 1: noise as large as the normalised signal.
NOISE_LEVEL = 1.0

#: The arms: (norm, noise kind or None); the arms without noise also measure ICS and the landscape.
NOISY_ARMS = (("bn", None), ("none", None), ("bn", "iid"), ("none", "iid"), ("bn", "affine"))


def sweep_noisy_bn(profile: str) -> list[NoisyBNConfig]:
    """Five arms x seeds: BN, standard, noisy BN (i.i.d. and affine) and the standard VGG with i.i.d. noise."""
    every = {"smoke": 3, "cpu": 20, "paper": 200}[profile]
    s = NOISE_LEVEL
    out = []
    for seed in NOISY_SEEDS[profile]:
        for norm, kind in NOISY_ARMS:
            if kind is None:
                out.append(NoisyBNConfig.for_profile(profile, norm=norm, seed=seed, ics_every=every,
                                                     landscape_every=every))
            else:
                out.append(NoisyBNConfig.for_profile(profile, norm=norm, noise=True, noise_kind=kind, seed=seed,
                                                     noise_mean_max=s, noise_std_min=s / 2, noise_std_max=1.5 * s))
    return out


register(NoisyBNConfig, run_noisy_bn, sweep_noisy_bn, data_parallel=True)


# --------------------------------------------------------------------------- ICS in a deep linear network
@dataclasses.dataclass(frozen=True)
class DLNConfig(ExperimentConfig):
    experiment = "ics_dln"
    result_keys = ("history", "ics")
    profiles = {"smoke": {"epochs": 1, "n_train": 512, "ics_every": 2},
                "cpu": {}, "paper": {"epochs": 20, "n_train": 16384}}

    depth: int = 25                   # Santurkar et al.'s DLN has 25 layers
    width: int = 32
    dim: int = 32
    num_classes: int = 4
    norm: str = "none"
    lr: float = 0.01                  # plain SGD
    batch_size: int = 128
    epochs: int = 5
    n_train: int = 4096
    n_test: int = 1024
    ics_every: int = 8
    seed: int = 0

    def validate(self):
        require(self.depth >= 1, "depth", self.depth, "needs at least one layer")
        require(self.norm in ("bn", "bnrepro", "none"), "norm", self.norm, "must be bn, bnrepro or none")
        require(self.lr > 0, "lr", self.lr, "the learning rate must be > 0")
        require(self.ics_every >= 1, "ics_every", self.ics_every, "must be >= 1")


def run_dln(cfg: DLNConfig, device=None) -> Result:
    """Train a deep linear network on Gaussian data, measuring ICS along the way."""
    device = get_device(device)
    start = time.perf_counter()
    data = gaussian_classification(cfg.n_train, cfg.n_test, cfg.dim, cfg.num_classes, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    model = DeepLinearNet(cfg.dim, cfg.width, cfg.depth, cfg.num_classes, norm=cfg.norm)
    ics = ICSCallback(cfg.ics_every)
    hist = train(model, data, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
                 eval_every_steps=cfg.ics_every * 4, callbacks=[ics], device=device)
    return make_result(cfg, {"history": hist.to_dict(), "ics": ics.records},
                       device=device, started=start, seeds={"init": cfg.seed, "data": cfg.seed})


def sweep_dln(profile: str) -> list[DLNConfig]:
    return [DLNConfig.for_profile(profile, norm=n, seed=s) for s in DLN_SEEDS[profile] for n in ("bn", "none")]


register(DLNConfig, run_dln, sweep_dln, data_parallel=True)


# --------------------------------------------------------------------------- BN noise as a regulariser
@dataclasses.dataclass(frozen=True)
class GhostConfig(ExperimentConfig):
    experiment = "ghost_bn"
    result_keys = ("history", "train_eval", "test_eval", "gap", "loss_gap")
    profiles = {"smoke": {"n_train": 384, "n_test": 256, "epochs": 2},
                "cpu": {},
                "paper": {"dataset": "cifar10", "vgg": "vgg11", "hidden": 512, "n_train": 10000,
                          "n_test": None, "epochs": 60}}

    dataset: str = "fashion-mnist"
    vgg: str = "tiny"
    hidden: int = 64
    norm: str = "ghost"               # "ghost" (BN over sub-batches) | "none"
    ghost_batch_size: int = 128       # = batch_size: ordinary BN
    batch_size: int = 128
    lr: float = 0.02
    momentum: float = 0.9
    epochs: int = 15
    n_train: int | None = 2000        # a small training set, so that the network can overfit it
    n_test: int | None = 2000
    seed: int = 0

    def validate(self):
        require(self.norm in ("ghost", "none"), "norm", self.norm, "must be ghost or none")
        require(2 <= self.ghost_batch_size, "ghost_batch_size", self.ghost_batch_size,
                "a ghost batch needs >= 2 samples")
        require(self.lr > 0, "lr", self.lr, "the learning rate must be > 0")
        require_subset(self.dataset, self.n_train, self.n_test)


def run_ghost(cfg: GhostConfig, device=None) -> Result:
    """Train one VGG with ghost BN of a given size; report train/test accuracy and their gap."""
    device = get_device(device)
    start = time.perf_counter()
    data = load_dataset(cfg.dataset, device=device, n_train=cfg.n_train, n_test=cfg.n_test)
    torch.manual_seed(cfg.seed)
    model = NoisyVGG(cfg.vgg, norm=cfg.norm, num_classes=data.num_classes, in_channels=data.in_channels,
                     image_size=data.image_size, hidden=cfg.hidden, ghost_batch_size=cfg.ghost_batch_size)
    hist = train(model, data, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
                 seed=cfg.seed, device=device)
    tr = evaluate(model, data.x_train, data.y_train)
    te = evaluate(model, data.x_test, data.y_test)
    return make_result(cfg, {"history": hist.to_dict(), "train_eval": tr, "test_eval": te,
                   "gap": tr["acc"] - te["acc"], "loss_gap": te["loss"] - tr["loss"]},
                       device=device, started=start, seeds={"init": cfg.seed, "data_order": cfg.seed})


#: Ghost batch sizes: the noisiest statistics (4 samples) and ordinary BN over the SGD batch (128).
GHOST_SIZES = (4, 128)


def sweep_ghost(profile: str) -> list[GhostConfig]:
    return [GhostConfig.for_profile(profile, ghost_batch_size=g, seed=s) for s in GHOST_SEEDS[profile]
            for g in GHOST_SIZES]


register(GhostConfig, run_ghost, sweep_ghost, data_parallel=True)


# --------------------------------------------------------------------------- length-direction decoupling
@dataclasses.dataclass(frozen=True)
class DecouplingConfig(ExperimentConfig):
    experiment = "decoupling"
    result_keys = ("problem", "f_star", "condition_number", "lambda_max", "runs", "scale_invariant")
    profiles = {"smoke": {"steps": 60}, "cpu": {}, "paper": {"dim": 100, "condition": 1e4, "steps": 3000}}

    problem: str = "least_squares"    # "least_squares" | "logistic"
    dim: int = 20
    condition: float = 1000.0         # condition number of the input covariance S
    steps: int = 500
    lrs: tuple = (0.01, 0.1, 0.3, 1.0, 1.9, 3.0, 10.0, 100.0)  # the same grid for w and for v
    effective_lr: float = 1.0         # step size of the scale-invariant GD trace
    seed: int = 0

    def validate(self):
        require(self.problem in ("least_squares", "logistic"), "problem", self.problem,
                "must be least_squares or logistic")
        require(self.condition >= 1, "condition", self.condition, "a condition number is >= 1")
        require(self.steps >= 1 and all(lr > 0 for lr in self.lrs), "lrs", self.lrs, "positive step sizes")


def run_decoupling(cfg: DecouplingConfig, device=None) -> Result:
    """GD on w vs GD on (g, v) over a grid of step sizes; the effective learning rate trace."""
    start = time.perf_counter()
    make = least_squares if cfg.problem == "least_squares" else logistic_regression
    prob = make(cfg.dim, cfg.condition, seed=cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    w0 = 0.1 * torch.randn(cfg.dim, generator=gen, dtype=torch.float64)
    runs = []
    for lr in cfg.lrs:
        s = gd(prob, w0, lr, cfg.steps)
        runs.append({"method": "GD on w", "lr": lr, "subopt": s, "rate": linear_rate(s)})
        d = decoupled_gd(prob, w0, lr, cfg.steps)
        runs.append({"method": "GD on (g, v)", "lr": lr, "subopt": d["subopt"], "rate": linear_rate(d["subopt"]),
                     "v_norm": d["v_norm"]})
    trace = scale_invariant_gd(prob, w0, cfg.effective_lr, cfg.steps)
    return make_result(cfg, {"problem": prob.name, "f_star": prob.f_star, "condition_number": prob.condition_number,
                   "lambda_max": float(torch.linalg.eigvalsh(prob.S)[-1]), "runs": runs, "scale_invariant": trace},
                       device=get_device(device), started=start, seeds={"problem": cfg.seed})


def sweep_decoupling(profile: str) -> list[DecouplingConfig]:
    """Least squares on a few random problems (the scored claims); logistic regression on one (a figure)."""
    return ([DecouplingConfig.for_profile(profile, problem="least_squares", seed=s) for s in DECOUPLING_SEEDS[profile]]
            + [DecouplingConfig.for_profile(profile, problem="logistic", seed=0)])


register(DecouplingConfig, run_decoupling, sweep_decoupling)
