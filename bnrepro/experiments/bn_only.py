"""Training only BatchNorm (Frankle, Schwab & Morcos 2020, arXiv 2003.00152) and the blog's recipe.

One run = one network (a CIFAR ResNet or a BN-VGG) with one freezing arm
(:data:`bnrepro.nn.freeze.FREEZINGS`), one gamma initialiser and one optimizer
recipe. Besides the training history each run stores the BN gammas before
and after training and, for arms that train gamma, what happens to the test
accuracy when the channels with |gamma| below each of ``gamma_thresholds`` are switched
off (gamma set to 0, so the channel outputs its constant beta), against
switching off as many channels chosen at random.

Recipes (the config's fields; :data:`RECIPES` names them):

* ``paper`` -- open_lth's CIFAR ResNet recipe: SGD lr 0.1, momentum 0.9,
  weight decay 1e-4, batch 128, 160 epochs with lr x0.1 at epochs 80 and 120
  (50% and 75%), random flips and 4-pixel crops, gamma ~ U[0, 1];
* ``blog`` -- the Keras reproduction: Adam lr 0.01, batch 1024, no
  augmentation, no schedule, gamma re-initialised with ``he_normal``.

Profiles: ``paper`` is CIFAR-10 at the paper's settings (for a GPU);
``cpu`` is Fashion-MNIST average-pooled to 14x14, an 8,192-image subset and
4 epochs, so the chapter's whole sweep fits about a quarter of an hour of a
shared 2-core CPU; ``smoke`` is seconds.

The chapter's tables and scored claims: :mod:`bnrepro.chapters.bn_only`.
"""

from __future__ import annotations

import dataclasses
import time

import torch
import torch.nn.functional as F

from ..core.config import ExperimentConfig, require
from ..core.device import get_device
from ..core.results import Result, make_result
from ..data import DATASETS, load_dataset, random_crop_flip, require_subset
from ..models import count_parameters
from ..models.cifar_resnet import cifar_resnet, resnet_blocks_per_stage
from ..models.vgg import VGG_PLANS, vgg_bn
from ..nn.freeze import (
    BN_INITS,
    FREEZINGS,
    apply_freezing,
    batchnorm_layers,
    batchnorm_parameter_names,
    bn_gammas,
    init_batchnorm,
)
from ..training.loop import OPTIMIZERS, SCHEDULES, evaluate, train
from . import register

ARCHS = ("resnet", "vgg")

RECIPES = {
    # open_lth cifar_resnet default_hparams: 160 epochs, milestones 80ep,120ep (= 0.5, 0.75).
    "paper": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 128,
              "schedule": "step", "milestones": (0.5, 0.75), "flip": True, "bn_init": "uniform"},
    # The blog: Adam lr 0.01, batch 1024, no augmentation, gamma he_normal ("ones" too symmetric).
    "blog": {"optimizer": "adam", "lr": 0.01, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 1024,
             "schedule": "constant", "milestones": (0.5, 0.75), "flip": False, "crop_pad": 0,
             "bn_init": "he_normal"},
}


@dataclasses.dataclass(frozen=True)
class BNOnlyConfig(ExperimentConfig):
    experiment = "bn_only"
    result_keys = ("history", "trainable", "arm", "bn_params", "total_params", "recipe", "image_size",
                   "data_source", "test_acc", "train_acc", "bn_layer_sizes", "gammas_init", "gammas")
    profiles = {
        "smoke": {"dataset": "fashion-mnist", "image_pool": 2, "n_train": 512, "n_test": 256,
                  "epochs": 1, "depth": 8, "crop_pad": 2},
        # 14x14 images, 8,192 training images, 4 epochs: see the module docstring.
        "cpu": {"dataset": "fashion-mnist", "image_pool": 2, "n_train": 8192, "n_test": 2000,
                "epochs": 4, "depth": 14, "crop_pad": 2},
        "paper": {},
    }

    dataset: str = "cifar10"
    image_pool: int = 1              # average-pool images by this factor (cpu: 28x28 -> 14x14)
    n_train: int | None = None       # None = the whole training set
    n_test: int | None = None
    arch: str = "resnet"             # "resnet" (open_lth cifar_resnet) | "vgg" (open_lth cifar_vgg)
    depth: int = 110                 # ResNet depth 6D+2
    width: int = 16                  # ResNet W (stages W, 2W, 4W); VGG first-stage width (64 = open_lth)
    vgg_plan: str = "vgg16"
    trainable: str = "bn"            # key of bnrepro.nn.freeze.FREEZINGS
    bn_init: str = "uniform"         # key of bnrepro.nn.freeze.BN_INITS; open_lth default
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4       # applied to trainable parameters only
    batch_size: int = 128
    epochs: int = 160
    schedule: str = "step"
    milestones: tuple[float, ...] = (0.5, 0.75)
    crop_pad: int = 4                # random crops of up to this many pixels (0 = none); 4 px at 32x32
    flip: bool = True                # random horizontal flips
    # |gamma| below these counts as "disabled" (switched off in the ablation); the paper's own
    # cut-off could not be checked (see the chapter), so two are measured.
    gamma_thresholds: tuple[float, ...] = (0.01, 0.1)
    seed: int = 0                    # model init, BN init, random-weight choice and data order

    def validate(self):
        require(self.dataset in DATASETS, "dataset", self.dataset, f"must be one of {', '.join(DATASETS)}")
        require(self.image_pool >= 1, "image_pool", self.image_pool, "must be >= 1 (1 = full resolution)")
        require(self.arch in ARCHS, "arch", self.arch, f"must be one of {', '.join(ARCHS)}")
        if self.arch == "resnet":
            try:
                resnet_blocks_per_stage(self.depth)
            except ValueError as exc:
                require(False, "depth", self.depth, str(exc).split(": ", 1)[1])
        require(self.vgg_plan in VGG_PLANS, "vgg_plan", self.vgg_plan, f"must be one of {', '.join(VGG_PLANS)}")
        require(self.width >= 1, "width", self.width, "must be >= 1")
        require(self.trainable in FREEZINGS, "trainable", self.trainable,
                f"must be one of {', '.join(FREEZINGS)}")
        require(self.bn_init in BN_INITS, "bn_init", self.bn_init, f"must be one of {', '.join(BN_INITS)}")
        require(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"must be one of {', '.join(OPTIMIZERS)}")
        require(self.schedule in SCHEDULES, "schedule", self.schedule, f"must be one of {', '.join(SCHEDULES)}")
        require(self.lr > 0, "lr", self.lr, "the learning rate must be > 0")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        require(0 <= self.momentum < 1, "momentum", self.momentum, "must be in [0, 1)")
        require(self.batch_size >= 2, "batch_size", self.batch_size,
                "BN in training needs at least 2 samples per batch")
        require(self.epochs >= 1, "epochs", self.epochs, "train for at least 1 epoch")
        require(all(0 < m < 1 for m in self.milestones), "milestones", self.milestones,
                "fractions of the run, each in (0, 1)")
        require(self.crop_pad >= 0, "crop_pad", self.crop_pad, "must be >= 0")
        require(len(self.gamma_thresholds) >= 1 and all(t > 0 for t in self.gamma_thresholds),
                "gamma_thresholds", self.gamma_thresholds, "one or more thresholds, each > 0")
        for name in ("n_train", "n_test"):
            value = getattr(self, name)
            require(value is None or value >= 2, name, value, "must be None (all) or >= 2")
        require_subset(self.dataset, self.n_train, self.n_test)

    @property
    def recipe(self) -> str:
        """``"paper"`` or ``"blog"`` when the optimizer fields match that recipe, else ``"custom"``."""
        for name, fields in RECIPES.items():
            if all(getattr(self, k) == v for k, v in fields.items() if k not in ("bn_init", "crop_pad")):
                return name
        return "custom"


def build_network(cfg: BNOnlyConfig, in_channels: int, num_classes: int):
    if cfg.arch == "resnet":
        return cifar_resnet(cfg.depth, cfg.width, num_classes, in_channels)
    return vgg_bn(cfg.vgg_plan, cfg.width, num_classes, in_channels)


def _channels(model) -> list[tuple[torch.nn.Module, int]]:
    """(BN module, channel) for every entry of :func:`bn_gammas`, in the same order."""
    return [(m, c) for _, m in batchnorm_layers(model) for c in range(m.weight.numel())]


@torch.no_grad()
def _accuracy_without(model, channels, x, y) -> float:
    """Test accuracy with the gamma of ``channels`` set to 0 (restored afterwards)."""
    saved = [(m, c, m.weight[c].clone()) for m, c in channels]
    for m, c in channels:
        m.weight[c] = 0.0
    acc = evaluate(model, x, y)["acc"]
    for m, c, value in saved:
        m.weight[c] = value
    return acc


def gamma_analysis(model, x, y, thresholds, seed: int) -> list[dict]:
    """For each threshold: the fraction of channels with |gamma| < threshold, and the test
    accuracy when those channels are switched off vs when as many random channels are."""
    gammas = bn_gammas(model)
    channels = _channels(model)
    acc = evaluate(model, x, y)["acc"]
    out = []
    for threshold in thresholds:
        small = [channels[i] for i in torch.nonzero(gammas.abs() < threshold).flatten().tolist()]
        gen = torch.Generator().manual_seed(10_000 + seed)
        random_idx = torch.randperm(len(channels), generator=gen)[:len(small)].tolist()
        out.append({"threshold": threshold, "n_channels": len(channels), "n_small": len(small),
                    "frac_small": len(small) / max(1, len(channels)), "acc": acc,
                    "acc_small_off": _accuracy_without(model, small, x, y) if small else acc,
                    "acc_random_off": (_accuracy_without(model, [channels[i] for i in random_idx], x, y)
                                       if small else acc)})
    return out


def run(cfg: BNOnlyConfig, device=None) -> Result:
    """Train one network with one freezing arm; record accuracy and the BN gammas."""
    device = get_device(device)
    start = time.perf_counter()
    data = load_dataset(cfg.dataset, device=device, n_train=cfg.n_train, n_test=cfg.n_test)
    if cfg.image_pool > 1:  # cpu profile: 4x fewer pixels, 4x cheaper convolutions
        data = dataclasses.replace(data, x_train=F.avg_pool2d(data.x_train, cfg.image_pool),
                                   x_test=F.avg_pool2d(data.x_test, cfg.image_pool))
    torch.manual_seed(cfg.seed)
    model = build_network(cfg, data.in_channels, data.num_classes)
    init_batchnorm(model, cfg.bn_init, seed=cfg.seed)
    gammas_init = bn_gammas(model)
    bn_names = set(batchnorm_parameter_names(model))
    bn_params = sum(p.numel() for n, p in model.named_parameters() if n in bn_names)
    total_params = count_parameters(model, trainable_only=False)
    trainable = apply_freezing(model, cfg.trainable, seed=cfg.seed)
    augment = random_crop_flip(cfg.crop_pad, cfg.flip) if (cfg.crop_pad or cfg.flip) else None
    hist = train(model, data, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                 optimizer=cfg.optimizer, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                 schedule=cfg.schedule, milestones=cfg.milestones, seed=cfg.seed, augment=augment,
                 eval_every_epoch=True, device=device)
    out = {"history": hist.to_dict(), "trainable": trainable.count, "arm": trainable.arm,
           "bn_params": bn_params, "total_params": total_params, "recipe": cfg.recipe,
           "image_size": data.image_size, "data_source": data.source,
           "test_acc": hist.final("test_acc"), "train_acc": hist.final("train_acc"),
           "bn_layer_sizes": [m.weight.numel() for _, m in batchnorm_layers(model)],
           "gammas_init": [round(v, 5) for v in gammas_init.tolist()],
           "gammas": [round(v, 5) for v in bn_gammas(model).tolist()]}
    if cfg.trainable in ("all", "bn", "bn_output") and not hist.diverged:
        out["gamma_analysis"] = gamma_analysis(model, data.x_test, data.y_test, cfg.gamma_thresholds, cfg.seed)
    return make_result(cfg, out, device=device, started=start,
                       seeds={"init": cfg.seed, "bn_init": cfg.seed, "random_weights": cfg.seed,
                              "data_order": cfg.seed})


# --------------------------------------------------------------------------- sweeps
ARMS = ("all", "bn", "bn_output", "output", "random", "random_output")
INIT_ARMS = ("uniform", "fixed", "he_normal", "positivenegative")
# What each profile sweeps. Paper-profile depths are open_lth's ResNets of the paper's Figure 2
# (14 ... 866); its widths (ResNet-14 at W = 16 ... 512) and the VGG (VGG-16) are our reading of
# the paper's width and VGG experiments, which we could not check against the text (see chapter).
PLAN = {
    "smoke": {"base_depth": 8, "arms": ARMS, "extra_seed_arms": (), "depths": (8, 14),
              "depth_arms": ("bn", "all"), "width_depth": 8, "widths": (8, 16), "seeds": (0,),
              "vgg": ("small", 16)},
    # cpu: no random+output arm, full training only at the base depth and one extra seed for
    # BN-only: the whole sweep has to fit about 15 minutes of a shared 2-core CPU.
    "cpu": {"base_depth": 14, "arms": ARMS[:5], "extra_seed_arms": ("bn",), "depths": (8, 14, 20, 32),
            "depth_arms": ("bn",), "width_depth": 8, "widths": (8, 16, 32), "seeds": (0,),
            "vgg": ("small", 16)},
    "paper": {"base_depth": 110, "arms": ARMS, "extra_seed_arms": (), "depths": (14, 32, 56, 110, 218, 434, 866),
              "depth_arms": ("bn", "all"), "width_depth": 14, "widths": (16, 32, 64, 128, 256, 512),
              "seeds": (0, 1, 2), "vgg": ("vgg16", 64)},
}


def sweep_groups(profile: str) -> dict[str, list[BNOnlyConfig]]:
    """The configs of each of the chapter's experiments (a config may serve several)."""
    plan = PLAN[profile]
    base = BNOnlyConfig.for_profile(profile, depth=plan["base_depth"])
    seeds = plan["seeds"]
    more = tuple(sorted(set(seeds) | {max(seeds) + 1}))  # one more seed for extra_seed_arms
    blog = RECIPES["blog"]
    vgg_plan, vgg_width = plan["vgg"]
    return {
        "arms": [base.replace(trainable=a, seed=s) for a in plan["arms"]
                 for s in (more if a in plan["extra_seed_arms"] else seeds)],
        "depth": [base.replace(depth=d, trainable=a, seed=s) for d in plan["depths"]
                  for a in plan["depth_arms"] for s in seeds],
        "width": [base.replace(depth=plan["width_depth"], width=w, trainable="bn", seed=s)
                  for w in plan["widths"] for s in seeds],
        "init": [base.replace(bn_init=i, seed=s) for i in INIT_ARMS for s in seeds],
        "recipe": [base.replace(trainable=a, seed=s, **r) for a in ("bn", "all")
                   for r in ({}, blog) for s in seeds],
        "vgg": [base.replace(arch="vgg", vgg_plan=vgg_plan, width=vgg_width, trainable=a, seed=s)
                for a in ("bn", "all", "random") for s in seeds],
    }


def sweep(profile: str) -> list[BNOnlyConfig]:
    """Every config the chapter reads, each once, in the order of :func:`sweep_groups`."""
    seen, out = set(), []
    for cfgs in sweep_groups(profile).values():
        for cfg in cfgs:
            if cfg.hash() not in seen:
                seen.add(cfg.hash())
                out.append(cfg)
    return out


register(BNOnlyConfig, run, sweep, data_parallel=True)
