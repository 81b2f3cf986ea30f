"""LeNet with and without BN on Fashion-MNIST: the d2l batch-norm anchor.

d2l-zh's BN chapter trains its BN-LeNet (sigmoid, average pooling) with plain
SGD, lr 1.0, batch 256, 10 epochs, and prints train acc 0.899-0.902 and test
acc 0.708-0.853 (three printed runs). The test accuracy swings mostly because
of the weights at lr 1.0, not because eval mode uses running statistics that
lag the model: with population statistics recomputed over the training set
(Algorithm 2) it swings nearly as much (``bn_inference`` experiment, chapter
"BN from first principles").

The chapter's tables and scored claims: :mod:`bnrepro.chapters.lenet`.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from ..core.claims import EMPIRICAL, ClaimSpec, at_least, between, register_claims, within
from ..core.config import ExperimentConfig, require
from ..core.device import get_device
from ..core.results import Result, make_result
from ..data.datasets import DATASETS, load_dataset, require_subset
from ..models import INITS, NORMS, LeNet, count_parameters, init_weights
from ..training.loop import train
from . import register


@dataclasses.dataclass(frozen=True)
class LeNetConfig(ExperimentConfig):
    experiment = "lenet"
    result_keys = ("history", "parameters", "data_source")
    profiles = {
        "smoke": {"epochs": 2, "n_train": 2048, "n_test": 512},
        "cpu": {},  # d2l's own settings fit a laptop CPU (about a minute a run)
        "paper": {},
    }

    dataset: str = "fashion-mnist"
    norm: str = "bn"                  # "bn" | "bnrepro" | "none"
    activation: str = "sigmoid"       # d2l keeps LeNet's sigmoids
    init: str = "xavier"              # d2l's train_ch6 re-initialises with Xavier-uniform
    lr: float = 1.0                   # d2l-zh BN chapter; plain SGD, no momentum
    epochs: int = 10
    batch_size: int = 256
    seed: int = 0                     # model init and data order
    n_train: int | None = None        # None = the whole training set
    n_test: int | None = None

    def validate(self):
        require(self.dataset in DATASETS, "dataset", self.dataset, f"must be one of {', '.join(DATASETS)}")
        require(self.norm in NORMS, "norm", self.norm, f"must be one of {', '.join(NORMS)}")
        require(self.init in INITS, "init", self.init, f"must be one of {', '.join(INITS)}")
        require(self.lr > 0, "lr", self.lr, "the learning rate must be > 0")
        require(self.epochs >= 1, "epochs", self.epochs, "train for at least 1 epoch")
        require(self.batch_size >= (2 if self.norm != "none" else 1), "batch_size", self.batch_size,
                "BN in training needs at least 2 samples per batch (its variance of one sample is 0)")
        for name in ("n_train", "n_test"):
            value = getattr(self, name)
            require(value is None or value >= 1, name, value, "must be None (all) or >= 1")
        require_subset(self.dataset, self.n_train, self.n_test)


def build_lenet(cfg, data) -> LeNet:
    """The LeNet that ``cfg`` describes (its ``norm``, ``activation``, ``init``),
    initialised from ``cfg.seed`` and shaped for ``data``."""
    torch.manual_seed(cfg.seed)
    model = LeNet(norm=cfg.norm, activation=cfg.activation, num_classes=data.num_classes,
                  in_channels=data.in_channels, image_size=data.image_size)
    return init_weights(model, cfg.init)


def run(cfg: LeNetConfig, device=None) -> Result:
    """Train one LeNet (one arm, one seed) and record its history."""
    device = get_device(device)
    start = time.perf_counter()
    data = load_dataset(cfg.dataset, device=device, n_train=cfg.n_train, n_test=cfg.n_test)
    model = build_lenet(cfg, data)
    hist = train(model, data, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                 seed=cfg.seed, device=device)
    return make_result(cfg, {"history": hist.to_dict(), "parameters": count_parameters(model),
                   "data_source": data.source},
                       device=device, started=start, seeds={"init": cfg.seed, "data_order": cfg.seed})


SEEDS = {"smoke": (0,), "cpu": (0, 1, 2), "paper": (0, 1, 2, 3, 4)}


def sweep(profile: str) -> list[LeNetConfig]:
    """With and without BN, several seeds: what the LeNet chapter reads."""
    return [LeNetConfig.for_profile(profile, norm=norm, seed=seed)
            for norm in ("bn", "none") for seed in SEEDS[profile]]


register(LeNetConfig, run, sweep, data_parallel=True)

#: The claims the LeNet runs are scored by, fixed before the runs (their hash is stored with each run).
_WHERE = "Sec. 8.5 (batch normalization), printed runs of the from-scratch and concise LeNet"
CLAIMS = register_claims("lenet", [
    ClaimSpec("bn-lenet-train-acc", EMPIRICAL, "BN-LeNet train accuracy after 10 epochs", "0.899-0.902",
              within(0.90, 0.02), "d2l prints 0.899-0.902; 0.02 is about the spread of train accuracy "
              "between seeds at the last epoch", source="d2l_zh", where=_WHERE),
    ClaimSpec("bn-lenet-train-loss", EMPIRICAL, "BN-LeNet train loss after 10 epochs", "0.266-0.273",
              within(0.27, 0.03), "d2l prints 0.266-0.273; 0.03 allows the same relative spread as accuracy",
              source="d2l_zh", where=_WHERE),
    ClaimSpec("bn-lenet-test-acc", EMPIRICAL, "BN-LeNet test accuracy after 10 epochs", "0.708-0.853",
              between(0.708, 0.853), "the range of d2l's three printed runs", source="d2l_zh", where=_WHERE),
    ClaimSpec("bn-trains-faster", EMPIRICAL, "BN speeds up training: train-accuracy gain over plain LeNet "
              "after the same budget", "> 0", at_least(0.01, null=0.0),
              "a gain of at least one point of train accuracy; a smaller positive gain is partly",
              source="d2l_zh", where="Sec. 8.5, discussion"),
])
