"""Ioffe & Szegedy's recipe for accelerating BN networks (Sec. 4.2.1), one change at a time.

Adding BN to Inception was not all: to get BN-Inception's 14x speed-up the
authors also raised the learning rate, removed dropout, cut the L2 weight
regularization 5x, decayed the learning rate 6x faster, removed local response
normalization (LRN), shuffled the training examples more thoroughly and
reduced the photometric distortions (Sec. 4.2.1 of ``ioffe2015batch``).

One experiment, ``bn_recipe``: a BN conv net (:class:`bnrepro.models.NormConvNet`
with dropout before the output layer and LRN) on a Fashion-MNIST subset,
SGD + momentum, a fixed budget of steps. The *baseline* is the network and
training of before the recipe (:data:`BASELINE`); each arm of :data:`CHANGES`
applies one of the recipe's changes to it, and ``full recipe`` applies all of
them. Every run records the test accuracy every ``eval_every_steps`` steps, so
the chapter (``book/bn_recipe.ipynb``; tables and claims in
:mod:`bnrepro.chapters.bn_recipe`) measures both the speed (steps to a target)
and the final test accuracy.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from ..core.claims import EMPIRICAL, ClaimSpec, at_least, register_claims
from ..core.config import ExperimentConfig, require
from ..core.device import get_device
from ..core.results import Result, make_result
from ..data import compose, photometric_jitter, random_crop_flip
from ..data.datasets import DATASETS, load_dataset, require_subset
from ..models import NormConvNet, count_parameters
from ..training.loop import SHUFFLES, evaluate, train
from . import register


@dataclasses.dataclass(frozen=True)
class RecipeConfig(ExperimentConfig):
    experiment = "bn_recipe"
    result_keys = ("history", "eval_acc", "parameters", "data_source")
    profiles = {
        "smoke": {"n_train": 512, "n_test": 256, "epochs": 1, "eval_every_steps": 4},
        "cpu": {},
        "paper": {"dataset": "cifar10", "n_train": None, "n_test": None, "width": 32, "epochs": 30,
                  "eval_every_steps": 390},
    }

    dataset: str = "fashion-mnist"
    width: int = 16                   # channels of the first block (then 2x, 4x)
    batch_size: int = 32              # Inception's batch (Sec. 4.2)
    momentum: float = 0.9
    epochs: int = 8                   # the fixed budget: epochs x (n_train / batch_size) steps
    eval_every_steps: int = 64        # test accuracy along training (steps to the target)
    seed: int = 0                     # init, data order, dropout, distortions
    n_train: int | None = 4096
    n_test: int | None = 2048
    # --- the settings the recipe changes; defaults = the baseline (before the recipe) ---
    lr: float = 0.01                  # SGD, mean loss per batch; the recipe: 5x (BN-x5)
    dropout: float = 0.4              # before the output layer (Inception's 40%); the recipe: none
    weight_decay: float = 5e-4        # L2 on every parameter; the recipe: 5x less
    lr_decay: float = 0.5             # exponential: the lr's multiplier over the run at decay_speed 1
    decay_speed: float = 1.0          # the recipe: 6 (the lr falls 6x faster: lr_decay ** 6 over the run)
    lrn: bool = True                  # local response normalization; the recipe: none
    shuffle: str = "fixed_batches"    # the same images always share a batch; the recipe: "epoch"
    jitter: float = 1.0               # photometric distortion strength; the recipe: 0.25
    crop_pad: int = 2                 # random shifts (and flips), in every arm

    def validate(self):
        require(self.dataset in DATASETS, "dataset", self.dataset, f"must be one of {', '.join(DATASETS)}")
        require(self.width >= 1, "width", self.width, "must be >= 1")
        require(self.batch_size >= 2, "batch_size", self.batch_size, "BN in training needs at least 2 samples")
        require(self.lr > 0, "lr", self.lr, "the learning rate must be > 0")
        require(0 <= self.dropout < 1, "dropout", self.dropout, "must be in [0, 1)")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        require(0 < self.lr_decay <= 1, "lr_decay", self.lr_decay, "must be in (0, 1]")
        require(self.decay_speed > 0, "decay_speed", self.decay_speed, "must be > 0")
        require(self.shuffle in SHUFFLES, "shuffle", self.shuffle, f"must be one of {', '.join(SHUFFLES)}")
        require(0 <= self.jitter <= 2, "jitter", self.jitter, "must be in [0, 2]")
        require(self.crop_pad >= 0, "crop_pad", self.crop_pad, "must be >= 0")
        require(self.epochs >= 1, "epochs", self.epochs, "train for at least 1 epoch")
        require(self.eval_every_steps >= 1, "eval_every_steps", self.eval_every_steps, "must be >= 1")
        require_subset(self.dataset, self.n_train, self.n_test)


def run(cfg: RecipeConfig, device=None) -> Result:
    """Train one BN conv net with one arm's settings (one seed) for the fixed budget."""
    device = get_device(device)
    start = time.perf_counter()
    data = load_dataset(cfg.dataset, device=device, n_train=cfg.n_train, n_test=cfg.n_test)
    torch.manual_seed(cfg.seed)
    model = NormConvNet("bn", width=cfg.width, num_classes=data.num_classes, in_channels=data.in_channels,
                        dropout=cfg.dropout, lrn=cfg.lrn).to(device)
    augment = compose(random_crop_flip(cfg.crop_pad, flip=True), photometric_jitter(cfg.jitter))
    hist = train(model, data, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
                 weight_decay=cfg.weight_decay, schedule="exp", gamma=cfg.lr_decay ** cfg.decay_speed,
                 seed=cfg.seed, augment=augment, shuffle=cfg.shuffle, eval_every_steps=cfg.eval_every_steps,
                 eval_every_epoch=False, device=device)
    final = evaluate(model, data.x_test, data.y_test)
    return make_result(cfg, {"history": hist.to_dict(), "eval_acc": final["acc"],
                             "parameters": count_parameters(model), "data_source": data.source},
                       device=device, started=start,
                       seeds={"init": cfg.seed, "data_order": cfg.seed, "dropout": cfg.seed})


#: The network and training before the recipe (the config's defaults), spelled out.
BASELINE = {"lr": 0.01, "dropout": 0.4, "weight_decay": 5e-4, "decay_speed": 1.0, "lrn": True,
            "shuffle": "fixed_batches", "jitter": 1.0}
#: Each change of Sec. 4.2.1: the arm's name -> the settings it changes.
CHANGES = {
    "5x higher lr": {"lr": 0.05},
    "no dropout": {"dropout": 0.0},
    "5x less L2": {"weight_decay": 1e-4},
    "6x faster lr decay": {"decay_speed": 6.0},
    "no LRN": {"lrn": False},
    "thorough shuffling": {"shuffle": "epoch"},
    "fewer distortions": {"jitter": 0.25},
}
FULL = "full recipe"
#: The arms in table order: the baseline, each change alone, all of them.
ARMS = ("baseline", *CHANGES, FULL)
SEEDS = {"smoke": (0,), "cpu": (0, 1, 2), "paper": (0, 1, 2, 3, 4)}


def arm_settings(arm: str) -> dict:
    """The settings of ``arm`` (one of :data:`ARMS`)."""
    if arm == "baseline":
        return dict(BASELINE)
    if arm == FULL:
        return {**BASELINE, **{k: v for change in CHANGES.values() for k, v in change.items()}}
    return {**BASELINE, **CHANGES[arm]}


def arm_of(config: dict) -> str:
    """The arm a stored run's config belongs to (by its recipe settings)."""
    settings = {k: config[k] for k in BASELINE}
    for arm in ARMS:
        if arm_settings(arm) == settings:
            return arm
    raise ValueError(f"config {settings} is no arm of the recipe ablation")


def sweep(profile: str) -> list[RecipeConfig]:
    """Every arm x every seed of ``profile``, seed by seed (an interrupted sweep leaves whole seeds)."""
    return [RecipeConfig.for_profile(profile, seed=s, **arm_settings(arm)) for s in SEEDS[profile] for arm in ARMS]


register(RecipeConfig, run, sweep, data_parallel=False)

#: The speed target: this fraction of the lowest arm's mean final test accuracy (below every arm's plateau).
TARGET_FRACTION = 0.97

# --- the claims these runs are scored by (fixed before the runs) -----------------------------
_SEC = "Sec. 4.2.1"
_FIG3 = "Sec. 4.2.2, Fig. 3"
_STEPS = (f"steps to the target ({TARGET_FRACTION:g} x the lowest arm's mean final test accuracy), baseline / arm, "
          "paired by seed; a run that never reaches it counts one evaluation after its last step")
CLAIMS = register_claims("bn_recipe", [
    ClaimSpec("recipe-reaches-target-sooner", EMPIRICAL,
              f"The whole recipe speeds up a BN network: {_STEPS}",
              "6.3x (BN-x5 vs BN-Baseline: 2.1M vs 13.3M steps to 72.2%); 14x vs Inception without BN",
              at_least(2.0, null=1.0), "'significantly increase the training speed' read as at least 2x fewer "
              "steps; faster but less is partly. The 6.3x and 14x are Inception-on-ImageNet numbers",
              source="ioffe2015batch", where=_FIG3, fmt="{:.2f}"),
    ClaimSpec("recipe-final-accuracy-not-lower", EMPIRICAL,
              "... and ends at least as accurate: final test accuracy, full recipe minus baseline, paired by seed",
              "+0.3 points (maximum 73.0% vs 72.7%)", at_least(0.0),
              "the direction is the claim: 0.3 points is within our seed noise",
              source="ioffe2015batch", where=_FIG3),
    ClaimSpec("higher-lr-reaches-target-sooner", EMPIRICAL,
              f"A 5x higher learning rate alone speeds up training: {_STEPS}",
              "a training speedup, with no ill side effects", at_least(1.25, null=1.0),
              "at least 1.25x fewer steps (more than one 64-step evaluation at the baseline's few hundred "
              "steps); faster but less is partly", source="ioffe2015batch", where=_SEC, fmt="{:.2f}"),
    ClaimSpec("no-dropout-reaches-target-sooner", EMPIRICAL,
              f"Removing dropout alone speeds up training: {_STEPS}", "speeds up training",
              at_least(1.25, null=1.0), "at least 1.25x fewer steps, as for the learning rate; faster but "
              "less is partly", source="ioffe2015batch", where=_SEC, fmt="{:.2f}"),
    ClaimSpec("no-dropout-no-more-overfitting", EMPIRICAL,
              "... without increasing overfitting: final test accuracy without dropout minus with it",
              "not lower (no more overfitting)", at_least(-0.01),
              "'without increasing overfitting' read as losing at most one point of test accuracy",
              source="ioffe2015batch", where=_SEC),
    ClaimSpec("less-l2-more-accurate", EMPIRICAL,
              "5x less L2 weight regularization improves held-out accuracy: final test accuracy, arm minus "
              "baseline", "improves validation accuracy", at_least(0.0),
              "the paper claims the direction", source="ioffe2015batch", where=_SEC),
    ClaimSpec("no-lrn-not-needed", EMPIRICAL,
              "With BN, LRN is not necessary: final test accuracy without LRN minus with it",
              "not necessary", at_least(-0.01), "'not necessary' read as losing at most one point of test "
              "accuracy without it", source="ioffe2015batch", where=_SEC),
    ClaimSpec("thorough-shuffling-more-accurate", EMPIRICAL,
              "Shuffling more thoroughly (new batches every epoch instead of the same batches in a new order) "
              "improves held-out accuracy: final test accuracy, arm minus baseline", "about +1 point (ImageNet)",
              at_least(0.005, null=0.0), "'about 1%' read as at least half a point; a smaller gain of the "
              "right sign is partly", source="ioffe2015batch", where=_SEC),
])
