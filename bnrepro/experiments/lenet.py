"""LeNet with and without BN on Fashion-MNIST: the d2l batch-norm anchor.

d2l-zh's BN chapter trains its BN-LeNet (sigmoid, average pooling) with plain
SGD, lr 1.0, batch 256, 10 epochs, on pixels scaled to [0, 1] (``ToTensor``,
no standardization), and prints train acc 0.899-0.902 and test acc
0.708-0.853 (three printed runs). ``standardize_inputs=False`` is that input
pipeline; the default (``True``) standardizes with the training set's mean
and std, as the book's other experiments do. How much of the test accuracy's
swings comes from eval mode's running averages is measured by the
``bn_inference`` experiment (chapter "BN from first principles").

The chapter's tables and scored claims: :mod:`bnrepro.chapters.lenet`.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from ..core.claims import CHECK, EMPIRICAL, ClaimSpec, at_least, at_most, register_claims, within
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
    # True: standardize pixels with the training set's mean/std (the book's default pipeline);
    # False: pixels in [0, 1], as d2l's load_data_fashion_mnist feeds them (ToTensor only).
    standardize_inputs: bool = True

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
    data = load_dataset(cfg.dataset, device=device, n_train=cfg.n_train, n_test=cfg.n_test,
                        normalize=cfg.standardize_inputs)
    model = build_lenet(cfg, data)
    hist = train(model, data, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                 seed=cfg.seed, device=device)
    return make_result(cfg, {"history": hist.to_dict(), "parameters": count_parameters(model),
                   "data_source": data.source},
                       device=device, started=start, seeds={"init": cfg.seed, "data_order": cfg.seed})


#: Seeds per arm. The d2l arms need >= 5: the claims compare distributions of final
#: test accuracies that swing by several points from run to run.
SEEDS = {"smoke": (0,), "cpu": (0, 1, 2, 3, 4), "paper": (0, 1, 2, 3, 4)}
#: The plain arm again with standardized inputs (our other chapters' pipeline): how much the
#: input pipeline matters without BN. Fewer seeds: context for the text, not a scored claim.
CONTEXT_SEEDS = {"smoke": (0,), "cpu": (0, 1, 2), "paper": (0, 1, 2)}


def sweep(profile: str) -> list[LeNetConfig]:
    """d2l's input pipeline (pixels in [0, 1]) with and without BN, >= 5 seeds each; then the
    plain arm with standardized inputs: what the LeNet chapter reads."""
    d2l = [LeNetConfig.for_profile(profile, norm=norm, seed=seed, standardize_inputs=False)
           for norm in ("bn", "none") for seed in SEEDS[profile]]
    return d2l + [LeNetConfig.for_profile(profile, norm="none", seed=seed, standardize_inputs=True)
                  for seed in CONTEXT_SEEDS[profile]]


#: Data-parallel runs of the chapter "Batch statistics across devices": the d2l BN arm, 2 of
#: its 10 epochs (the check needs the same run in 1 and 2 processes, not a converged one).
PARALLEL_EPOCHS = {"smoke": 1, "cpu": 2, "paper": 10}


def parallel_sweep(profile: str) -> list[LeNetConfig]:
    """The BN arm (d2l's pipeline), shortened, 3 seeds: trained in 1 process and over 2."""
    return [LeNetConfig.for_profile(profile, norm="bn", seed=seed, standardize_inputs=False,
                                    epochs=PARALLEL_EPOCHS[profile])
            for seed in CONTEXT_SEEDS[profile]]


register(LeNetConfig, run, sweep, data_parallel=True)

#: The claims the LeNet runs are scored by, fixed before the runs (their hash is stored with each run).
_WHERE = "Sec. 8.5 (batch normalization), printed runs of the from-scratch and concise BN-LeNet"
_D2L_TEST = (0.807, 0.708, 0.853)   # d2l-zh's three printed final test accuracies
CLAIMS = register_claims("lenet", [
    ClaimSpec("bn-lenet-train-acc", EMPIRICAL, "BN-LeNet train accuracy after 10 epochs (d2l's inputs)",
              "0.899-0.902", within(0.90, 0.02), "d2l prints 0.899-0.902; 0.02 is about the spread of "
              "train accuracy between seeds at the last epoch", source="d2l_zh", where=_WHERE, n=5),
    ClaimSpec("bn-lenet-train-loss", EMPIRICAL, "BN-LeNet train loss after 10 epochs (d2l's inputs)",
              "0.266-0.273", within(0.27, 0.03), "d2l prints 0.266-0.273; 0.03 allows the same relative "
              "spread as accuracy", source="d2l_zh", where=_WHERE, n=5),
    ClaimSpec("bn-lenet-test-acc", EMPIRICAL, "BN-LeNet final test accuracy, mean over runs (d2l's "
              "inputs); d2l's runs: 0.807, 0.708, 0.853", "0.789 ± 0.074 (mean ± sd of 3 runs)",
              within(0.789, 0.074), "the mean and standard deviation of d2l's three printed runs: our "
              "mean further from theirs than one printed-run spread would be another distribution",
              source="d2l_zh", where=_WHERE, n=5),
    ClaimSpec("bn-lenet-test-swings", EMPIRICAL, "BN-LeNet test accuracy swings over the last epochs of a "
              "run: std over epochs 6-10 of one run", "0.074 (sd between d2l's 3 printed runs)",
              at_least(0.037, null=0.005), "half the spread between d2l's printed runs; partly above 0.005, "
              "the sampling noise of an accuracy on 10,000 test images", source="d2l_zh", where=_WHERE, n=5),
    ClaimSpec("bn-trains-faster", EMPIRICAL, "BN speeds up training: train-accuracy gain over plain LeNet "
              "after the same budget (d2l's inputs, paired by seed)", "> 0", at_least(0.01, null=0.0),
              "a gain of at least one point of train accuracy; a smaller positive gain is partly",
              source="d2l_zh", where="Sec. 8.5, discussion", n=5),
    # Scored by the chapter "Batch statistics across devices" (runs of parallel_sweep).
    ClaimSpec("sync-bn-hides-device-count", CHECK, "BN-LeNet over 2 processes with synchronized BN trains "
              "as in one process: |relative difference| of the epoch-1 train loss, per seed",
              "0 (float rounding only)", at_most(0.01), "synchronized BN computes the one-process "
              "statistics; 1% leaves room for rounding differences that grow over an epoch at lr 1.0",
              fmt="{:.1e}"),
    ClaimSpec("sync-bn-same-accuracy", CHECK, "... and ends at the same test accuracy: |difference| of the "
              "final test accuracy, per seed", "0", at_most(0.01), "two points less than d2l's between-run "
              "spread; rounding differences can still move a run at lr 1.0 by some tenths of a point"),
])
