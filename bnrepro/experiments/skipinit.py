"""SkipInit chapter, theory side: path-depth Monte Carlo and Figure 4 (De & Smith 2020).

Two measurements at initialisation, no training:

* ``skipinit_paths``: the share of the output variance carried by paths
  through k residual branches in explicit random deep linear residual
  networks (BN, the fixed 1/sqrt(i) scaling, or no normalization), against
  the exact distribution of :func:`bnrepro.measure.path_depth.path_depth_distribution`.
* ``skipinit_variance``: Figure 4, per residual block, the variance of the skip
  path, of the residual branch and BN's moving statistics, (a) ``kind="linear"``:
  a deep linear ResNet on Gaussian inputs, (b) ``kind="conv"``: a ReLU conv
  ResNet with BN on real images (Fashion-MNIST here; CIFAR-10 in the paper).

The chapter's tables and scored claims: :mod:`bnrepro.chapters.skipinit`.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from ..core.claims import CHECK, EMPIRICAL, ClaimSpec, at_most, register_claims, within
from ..core.config import ExperimentConfig, require
from ..core.device import cpu_threads, get_device
from ..core.results import Result, make_result
from ..data.datasets import DATASETS, load_dataset
from ..measure.path_depth import path_depth_distribution
from ..measure.resnet_variance import MC_MODES, block_variances, path_variance_mc
from ..models import LinearResNet, ResNet
from . import register


@dataclasses.dataclass(frozen=True)
class SkipInitPathsConfig(ExperimentConfig):
    experiment = "skipinit_paths"
    profiles = {
        "smoke": {"num_blocks": 6, "width": 32, "batch": 128, "n_networks": 8},
        "cpu": {},
        "paper": {"num_blocks": 32, "width": 256, "batch": 1024, "n_networks": 100},
    }

    num_blocks: int = 12          # residual blocks (the exact curve is plotted for 10,000 in the chapter)
    width: int = 128              # features per layer (BN's per-feature statistics: O(k/width) effects)
    batch: int = 256              # BN statistics are over this many Gaussian samples
    n_networks: int = 30          # independent random networks: the error bars
    modes: tuple[str, ...] = MC_MODES
    seed: int = 0

    def validate(self):
        require(self.num_blocks >= 1, "num_blocks", self.num_blocks, "need at least one residual block")
        require(self.num_blocks <= 64, "num_blocks", self.num_blocks,
                "the path split keeps d+1 copies of the activations per block (cost ~ d^2); use <= 64")
        require(self.width >= 1, "width", self.width, "must be >= 1")
        require(self.batch >= 2, "batch", self.batch, "BN needs at least 2 samples")
        require(self.n_networks >= 2, "n_networks", self.n_networks, "error bars need >= 2 networks")
        require(all(m in MC_MODES for m in self.modes), "modes", self.modes, f"each one of {MC_MODES}")


def run_paths(cfg: SkipInitPathsConfig, device=None) -> Result:
    """Monte Carlo of the variance share per path depth in random linear ResNets."""
    with cpu_threads("cpu"):  # float64 on the CPU whatever the device: small, exact bookkeeping
        return _run_paths(cfg)


def _run_paths(cfg: SkipInitPathsConfig) -> Result:
    start = time.perf_counter()
    data = {}
    for j, mode in enumerate(cfg.modes):
        mc = path_variance_mc(cfg.num_blocks, cfg.width, cfg.batch, mode, cfg.n_networks, cfg.seed + 1000 * j)
        exact = path_depth_distribution(cfg.num_blocks, normalized=mode != "none")
        data[mode] = {"mean": mc["mean"].tolist(), "sem": mc["sem"].tolist(), "exact": exact.tolist(),
                      "cov": mc["cov"].tolist(), "block_var_mean": mc["block_var"].mean(0).tolist(),
                      "block_var_sem": (mc["block_var"].std(0, ddof=1) / cfg.n_networks ** 0.5).tolist()}
    return make_result(cfg, data,
                       device="cpu", started=start, seeds={"weights_and_inputs": cfg.seed})


KINDS = ("linear", "conv")


@dataclasses.dataclass(frozen=True)
class SkipInitVarianceConfig(ExperimentConfig):
    experiment = "skipinit_variance"
    result_keys = ("skip", "branch", "num_blocks", "inputs")
    profiles = {
        "smoke": {"num_blocks": 20, "width": 32, "depth": 16, "batch": 32, "n_batches": 1},
        "cpu": {},
        # Figure 4(a): width-1000 linear layers, LeCun normal; (b) CIFAR-10 WRN (block count: ours).
        "paper": {"num_blocks": 500, "width": 1000, "dataset": "cifar10", "depth": 100, "widen": 2,
                  "base_width": 16, "stem_stride": 1, "batch": 256, "n_batches": 10},
    }

    kind: str = "linear"          # "linear": Figure 4(a); "conv": Figure 4(b)
    # (a) deep linear ResNet on N(0, 1) inputs
    num_blocks: int = 200
    width: int = 256
    in_features: int = 100
    # (b) ReLU conv ResNet with BN (bnrepro.models.ResNet) on real images
    dataset: str = "fashion-mnist"
    depth: int = 100              # 6n + 4 layers: 3n residual blocks
    widen: int = 1
    base_width: int = 8
    stem_stride: int = 2
    # both
    batch: int = 256
    n_batches: int = 4            # BN moving statistics: cumulative mean over these batches
    seed: int = 0

    def validate(self):
        require(self.kind in KINDS, "kind", self.kind, f"must be one of {', '.join(KINDS)}")
        require(self.dataset in DATASETS, "dataset", self.dataset, f"must be one of {', '.join(DATASETS)}")
        require(self.num_blocks >= 1, "num_blocks", self.num_blocks, "need at least one block")
        require(self.depth >= 10 and (self.depth - 4) % 6 == 0, "depth", self.depth,
                "a Wide-ResNet has depth 6n + 4 (10, 16, 22, ..., 100, ...)")
        require(self.batch >= 2, "batch", self.batch, "BN needs at least 2 samples per batch")
        require(self.n_batches >= 1, "n_batches", self.n_batches, "need at least one batch")


def run_variance(cfg: SkipInitVarianceConfig, device=None) -> Result:
    """Per-block variances of skip path, residual branch and BN moving statistics at init (Figure 4)."""
    device = get_device(device)
    with cpu_threads(device):
        return _run_variance(cfg, device)


def _run_variance(cfg: SkipInitVarianceConfig, device) -> Result:
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    source = "N(0, 1) Gaussian inputs"
    if cfg.kind == "linear":
        model = LinearResNet(cfg.in_features, cfg.width, cfg.num_blocks, norm="bn").to(device)
        batches = [torch.randn(cfg.batch, cfg.in_features, generator=gen).to(device) for _ in range(cfg.n_batches)]
    else:
        n = cfg.batch * cfg.n_batches
        data = load_dataset(cfg.dataset, device=device, n_train=n, n_test=1)
        model = ResNet(cfg.depth, cfg.widen, norm="bn", base_width=cfg.base_width, stem_stride=cfg.stem_stride,
                       num_classes=data.num_classes, in_channels=data.in_channels).to(device)
        x = data.x_train[torch.randperm(len(data.x_train), generator=gen).to(device)]
        batches = [x[i:i + cfg.batch] for i in range(0, n, cfg.batch)]
        source = data.source
    stats = block_variances(model, batches)
    return make_result(cfg, {**stats, "num_blocks": len(stats["skip"]), "inputs": source},
                       device=device, started=start, seeds={"init": cfg.seed, "inputs": cfg.seed + 1})


#: Independent random networks (init and inputs) per kind: the claims' seeds.
VARIANCE_SEEDS = {"smoke": (0,), "cpu": (0, 1, 2), "paper": (0, 1, 2)}


def sweep_variance(profile: str) -> list[SkipInitVarianceConfig]:
    """Figure 4 (a) and (b), each over independent random networks (seeds)."""
    return [SkipInitVarianceConfig.for_profile(profile, kind=k, seed=s)
            for k in KINDS for s in VARIANCE_SEEDS[profile]]


register(SkipInitPathsConfig, run_paths)
register(SkipInitVarianceConfig, run_variance, sweep_variance)

#: The claims these measurements are scored by, fixed before the runs (their hash is stored with each run).
#: Values: one per random network (seed); the chapter :mod:`bnrepro.chapters.skipinit` computes them.
_FIG4 = "Fig. 4"
_ADD = ("paths are uncorrelated at initialisation, so variances add: each block adds its branch's "
        "variance to the skip path; ")
PATHS_CLAIMS = register_claims("skipinit_paths", [
    ClaimSpec("paths-mc-agrees", CHECK, "explicit random linear ResNets (fixed 1/sqrt(i) scaling, and no "
              "normalization) match the exact path-depth distribution: largest deviation in standard errors",
              "exact", at_most(4.5), "jackknife standard errors over the random networks; 4.5 of them at "
              "one of a dozen depths is beyond what chance gives"),
])
VARIANCE_CLAIMS = register_claims("skipinit_variance", [
    ClaimSpec("fig4a-skip-slope", EMPIRICAL, "deep linear ResNet with BN: the skip-path variance grows "
              "linearly, by the unit branch variance per block (least-squares slope per block)", "~1 per block",
              within(1.0, 0.1), _ADD + "BN makes the branch variance 1; 0.1 allows the finite width",
              source="de2020batch", where=f"{_FIG4}(a)"),
    *[ClaimSpec(f"fig4b-stage{k}-slope", EMPIRICAL, f"ReLU conv ResNet with BN, stage {k}: the skip-path "
                "variance grows linearly within the stage, by the branch variance per block (slope per block "
                "/ mean branch variance)", "linear within each stage", within(1.0, 0.2),
                _ADD + "so the ratio is 1; 0.2 allows the narrow stages (8-32 channels)",
                source="de2020batch", where=f"{_FIG4}(b)") for k in (1, 2, 3)],
])
