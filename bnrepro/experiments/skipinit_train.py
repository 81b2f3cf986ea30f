"""SkipInit chapter, training side: the depth sweep and the batch-size sweep (De & Smith 2020).

* ``skipinit_depth`` (Tables 1/2 kind): one residual network per (variant,
  depth, seed), variants ``bn`` (BN, no alpha), ``skipinit`` (no norm, learnable
  alpha = 0), ``skipinit_sqrt_d`` (alpha = 1/sqrt(d)), ``alpha1`` (no norm,
  alpha = 1), ``sum_sqrt2`` (no norm, block output scaled by 1/sqrt(2)); see
  :data:`bnrepro.models.resnet.VARIANTS`. Divergence (a NaN/inf loss) is
  recorded as a result.
* ``skipinit_batch`` (Figures 5/6 kind): BN vs SkipInit over batch sizes, every
  batch size trained for the same number of epochs over the same training
  subset (so fewer steps at larger batches), each over a learning-rate grid in
  factors of 2 and several seeds; the chapter picks the best lr per arm, batch
  size and seed.

Profiles: ``paper`` is the n-2 Wide-ResNet on CIFAR-10 (200 epochs as in the
paper; batch 64, lr 0.1 and the schedule are our choices), for a GPU;
``cpu`` is a narrow ResNet (channels 8/16/32 after a stride-2 stem) on
Fashion-MNIST: 40 steps of batch 32 in the depth sweep, 4 epochs over 2,048
images in the batch sweep; ``smoke`` a few steps.
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch

from ..core.claims import EMPIRICAL, ClaimSpec, at_least, at_most, register_claims, within
from ..core.config import ExperimentConfig, require
from ..core.device import cpu_threads, get_device
from ..core.results import Result, make_result
from ..data import DATASETS, load_dataset, random_crop_flip, require_subset
from ..models import RESNET_VARIANTS, ResNet, count_parameters
from ..training.loop import SCHEDULES, train
from . import register

_PAPER = {"dataset": "cifar10", "widen": 2, "base_width": 16, "stem_stride": 1, "batch_size": 64,
          "lr": 0.1, "weight_decay": 5e-4, "epochs": 200, "train_examples": None, "augment": True,
          "schedule": "step", "n_test": None}


@dataclasses.dataclass(frozen=True)
class _TrainConfig(ExperimentConfig):
    dataset: str = "fashion-mnist"
    variant: str = "bn"               # a key of bnrepro.models.resnet.VARIANTS
    depth: int = 16                   # layers, 6n + 4 (3n residual blocks)
    widen: int = 1                    # Wide-ResNet width factor k
    base_width: int = 8               # channels after the stem (16 in WRN)
    stem_stride: int = 2              # 2 on the CPU: 28x28 -> 14x14 feature maps, 4x fewer FLOPs
    batch_size: int = 32
    lr: float = 0.05                  # SGD with momentum 0.9; one value for every arm (GPU pilot: BN and
                                      # SkipInit both train at 16-1000 layers with it; not tuned per arm)
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 0             # linear learning-rate warm-up (steps)
    epochs: int = 1                   # upper bound; train_examples usually ends the run first
    train_examples: int | None = 3200  # budget in examples: steps = ceil(train_examples / batch_size)
    augment: bool = False
    seed: int = 0                     # init and data order
    n_train: int | None = None
    n_test: int | None = 1000         # test images evaluated at the end (first n of the test set)

    def validate(self):
        require(self.dataset in DATASETS, "dataset", self.dataset, f"must be one of {', '.join(DATASETS)}")
        require(self.variant in RESNET_VARIANTS, "variant", self.variant,
                f"must be one of {', '.join(RESNET_VARIANTS)}")
        require(self.depth >= 10 and (self.depth - 4) % 6 == 0, "depth", self.depth,
                "a Wide-ResNet has depth 6n + 4 (10, 16, 22, ..., 100, ..., 1000)")
        require(self.widen >= 1 and self.base_width >= 1, "widen", self.widen, "widths must be >= 1")
        require(self.lr > 0, "lr", self.lr, "the learning rate must be > 0")
        require_subset(self.dataset, self.n_train, self.n_test)
        require(self.schedule in SCHEDULES, "schedule", self.schedule, f"must be one of {', '.join(SCHEDULES)}")
        require(self.epochs >= 1, "epochs", self.epochs, "train for at least 1 epoch")
        require(self.train_examples is None or self.train_examples >= self.batch_size, "train_examples",
                self.train_examples, "the budget must hold at least one batch")
        require(self.batch_size >= (2 if RESNET_VARIANTS[self.variant]["norm"] != "none" else 1),
                "batch_size", self.batch_size, "BN in training needs at least 2 samples per batch")

    @property
    def max_steps(self) -> int | None:
        return None if self.train_examples is None else math.ceil(self.train_examples / self.batch_size)


def build(cfg: _TrainConfig, num_classes: int = 10, in_channels: int = 1) -> ResNet:
    """The residual network of one config (seed the RNG first for a reproducible init)."""
    return ResNet(cfg.depth, cfg.widen, **RESNET_VARIANTS[cfg.variant], base_width=cfg.base_width,
                  stem_stride=cfg.stem_stride, num_classes=num_classes, in_channels=in_channels)


def run(cfg: _TrainConfig, device=None) -> Result:
    """Train one residual network (one variant, depth, batch size, lr) and record the outcome."""
    device = get_device(device)
    with cpu_threads(device):
        return _run(cfg, device)


def _run(cfg: _TrainConfig, device) -> Result:
    start = time.perf_counter()
    data = load_dataset(cfg.dataset, device=device, n_train=cfg.n_train, n_test=cfg.n_test)
    torch.manual_seed(cfg.seed)
    model = build(cfg, data.num_classes, data.in_channels)
    epochs = cfg.epochs if cfg.max_steps is None else max(1, math.ceil(cfg.train_examples / len(data.x_train)))
    hist = train(model, data, epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
                 weight_decay=cfg.weight_decay, schedule=cfg.schedule, warmup_steps=cfg.warmup_steps, seed=cfg.seed,
                 augment=random_crop_flip() if cfg.augment else None, max_steps=cfg.max_steps,
                 eval_every_epoch=cfg.max_steps is None, log_every=max(1, (cfg.max_steps or 1000) // 50),
                 device=device)
    alphas = [b.alpha.item() for b in model.modules() if getattr(b, "alpha", None) is not None]
    finite = [loss for _, loss in hist.steps if math.isfinite(loss)]
    tail = finite[-5:]
    planned = cfg.max_steps or epochs * math.ceil(len(data.x_train) / cfg.batch_size)
    data_out = {"history": hist.to_dict(), "diverged": hist.diverged, "diverged_at_step": hist.diverged_at_step,
                "steps_run": hist.total_steps, "planned_steps": planned,
                "test_acc": None if hist.diverged else hist.final("test_acc"),
                "final_train_loss": None if hist.diverged or not tail else sum(tail) / len(tail),
                "alpha_abs_mean": sum(abs(a) for a in alphas) / len(alphas) if alphas else None,
                "num_blocks": model.num_blocks, "parameters": count_parameters(model),
                "data_source": data.source}
    return make_result(cfg, data_out,
                       device=device, started=start, seeds={"init": cfg.seed, "data_order": cfg.seed})


_KEYS = ("history", "diverged", "diverged_at_step", "steps_run", "planned_steps", "test_acc",
         "final_train_loss", "alpha_abs_mean", "num_blocks", "parameters", "data_source")


@dataclasses.dataclass(frozen=True)
class SkipInitDepthConfig(_TrainConfig):
    experiment = "skipinit_depth"
    result_keys = _KEYS
    profiles = {"smoke": {"train_examples": 64, "n_train": 512, "n_test": 128},
                # 40 steps of batch 32: enough to tell "trains" from "diverges" or "stays at chance"
                "cpu": {"train_examples": 1280, "n_test": 500},
                "paper": _PAPER}


DEPTHS = {"smoke": (10, 16), "cpu": (16, 100, 1000), "paper": (16, 100, 1000)}
#: The arms whose failure or success at the deepest depth is scored, with their seeds there.
CLAIM_VARIANTS = ("alpha1", "skipinit", "sum_sqrt2")
DEPTH_VARIANTS = ("alpha1", "skipinit", "sum_sqrt2", "bn", "skipinit_sqrt_d")  # cheap and scored first
DEPTH_SEEDS = {"smoke": (0,), "cpu": (0, 1, 2), "paper": (0, 1, 2)}


def depth_seeds(profile: str, variant: str, depth: int) -> tuple[int, ...]:
    """Seeds of one arm at one depth. On the CPU only the scored arms at the deepest depth
    get every seed (a 1,000-layer run costs about a CPU minute); the rest of the figure has one,
    and alpha = 1/sqrt(d), unscored, stops short of the deepest depth."""
    seeds = DEPTH_SEEDS[profile]
    if profile != "cpu":
        return seeds
    if depth == max(DEPTHS[profile]):
        return seeds if variant in CLAIM_VARIANTS else () if variant == "skipinit_sqrt_d" else seeds[:1]
    return seeds[:1]


def sweep_depth(profile: str) -> list[SkipInitDepthConfig]:
    """Every variant at every depth (Tables 1 and 2 kind), the cheap runs first."""
    return [SkipInitDepthConfig.for_profile(profile, variant=v, depth=d, seed=s)
            for d in DEPTHS[profile] for v in DEPTH_VARIANTS for s in depth_seeds(profile, v, d)]


@dataclasses.dataclass(frozen=True)
class SkipInitBatchConfig(_TrainConfig):
    experiment = "skipinit_batch"
    result_keys = _KEYS
    profiles = {"smoke": {"train_examples": None, "epochs": 1, "n_train": 64, "n_test": 128},
                # every batch size: 4 epochs over the same 2,048 images (512 steps at batch 16, 8 at 1024)
                "cpu": {"train_examples": None, "epochs": 4, "n_train": 2048, "n_test": 1000},
                "paper": {**_PAPER, "widen": 4, "epochs": 50}}  # WRN-16-4; epochs: ours


BATCH_SIZES = {"smoke": (16, 32), "cpu": (16, 128, 1024), "paper": (16, 64, 256, 1024, 4096)}
#: Learning rates in factors of 2 per batch size, wide enough that each arm's best lies inside
#: (the chapter checks it): SkipInit's optimum is lower than BN's, and both grow with the batch.
LR_GRID = {"smoke": {16: (0.025, 0.05), 32: (0.025, 0.05)},
           "cpu": {16: tuple(2.0 ** k for k in range(-7, 0)), 128: tuple(2.0 ** k for k in range(-5, 2)),
                   1024: tuple(2.0 ** k for k in range(-3, 4))},
           "paper": {b: tuple(2.0 ** k for k in range(-8, 4)) for b in BATCH_SIZES["paper"]}}
BATCH_SEEDS = {"smoke": (0,), "cpu": (0, 1, 2), "paper": (0, 1, 2)}
BATCH_VARIANTS = ("bn", "skipinit")


def sweep_batch(profile: str) -> list[SkipInitBatchConfig]:
    """BN vs SkipInit at depth 16 over batch sizes, each over its lr grid and seeds (Figures 5/6 kind)."""
    return [SkipInitBatchConfig.for_profile(profile, variant=v, batch_size=b, lr=lr, seed=s)
            for b in BATCH_SIZES[profile] for v in BATCH_VARIANTS for lr in LR_GRID[profile][b]
            for s in BATCH_SEEDS[profile]]


register(SkipInitDepthConfig, run, sweep_depth, data_parallel=True)
register(SkipInitBatchConfig, run, sweep_batch, data_parallel=True)

#: The claims these runs are scored by, fixed before the runs (their hash is stored with each run).
#: The chapter (:mod:`bnrepro.chapters.skipinit`) computes one value per seed.
_CHANCE_NOTE = "a diverged run counts as chance (0.1)"
DEPTH_CLAIMS = register_claims("skipinit_depth", [
    ClaimSpec("skipinit-trains-1000", EMPIRICAL, "SkipInit (no normalization, alpha = 0) trains at 1,000 "
              "layers: test accuracy after a short run", "trains", at_least(0.15),
              "chance is 0.1; above 0.15 the network has learned, not merely survived; " + _CHANCE_NOTE,
              source="de2020batch", where="Table 1"),
    ClaimSpec("skipinit-comparable-1000", EMPIRICAL, "SkipInit at 1,000 layers is comparable to BN once both "
              "are trained: test accuracy SkipInit - BN, paired by seed", "comparable", at_least(-0.01),
              "'comparable' read as within one point of BN's test accuracy; only runs trained for at least "
              "10 epochs are scored (shorter runs measure the speed of the first steps)",
              source="de2020batch", where="Table 1"),
    ClaimSpec("alpha1-fails", EMPIRICAL, "no normalization, alpha = 1 fails at 1,000 layers: test accuracy",
              "fails", at_most(0.15), "0.15 is the line between learning and chance (0.1); " + _CHANCE_NOTE,
              source="de2020batch", where="Table 2"),
    ClaimSpec("sqrt2-fails", EMPIRICAL, "no normalization, each block's sum scaled by 1/sqrt(2), fails at "
              "1,000 layers: test accuracy", "fails", at_most(0.15),
              "0.15 is the line between learning and chance (0.1); " + _CHANCE_NOTE,
              source="de2020batch", where="Table 2"),
])
_LR_STEP = "one step of the grid (a factor of 2)"
BATCH_CLAIMS = register_claims("skipinit_batch", [
    ClaimSpec("small-batch-lr-similar", EMPIRICAL, "at the smallest batch the best learning rates of BN and "
              "SkipInit are similar: log2(best lr BN / best lr SkipInit)", "similar", within(0.0, 1.0),
              "similar read as within " + _LR_STEP, source="de2020batch", where="Figs. 5-6"),
    ClaimSpec("bn-lr-ratio-grows", EMPIRICAL, "BN's best learning rate grows relative to SkipInit's with the "
              "batch size: log2 of the ratio at the largest batch minus at the smallest", "grows",
              at_least(1.0, null=0.0), "at least " + _LR_STEP + "; a smaller positive growth is partly",
              source="de2020batch", where="Figs. 5-6"),
    ClaimSpec("small-batch-similar", EMPIRICAL, "at the smallest batch BN and SkipInit reach similar test "
              "accuracy at their best learning rates: BN - SkipInit", "minimal benefit of BN", within(0.0, 0.02),
              "two points of test accuracy, about the spread between seeds of one arm",
              source="de2020batch", where="Figs. 5-6"),
    ClaimSpec("bn-advantage-grows", EMPIRICAL, "BN's test-accuracy advantage over SkipInit grows with the "
              "batch size: advantage at the largest batch minus at the smallest", "appears at large batch",
              at_least(0.05, null=0.0), "five points; a smaller positive growth is partly",
              source="de2020batch", where="Figs. 5-6"),
])
