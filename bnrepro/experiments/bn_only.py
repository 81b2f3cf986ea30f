"""Training only BatchNorm (Frankle, Schwab & Morcos, ICLR 2021, arXiv 2003.00152).

One run = one network (a CIFAR ResNet or a BN-VGG) with one freezing arm
(:data:`bnrepro.nn.freeze.FREEZINGS`) and one gamma initialiser, trained with
open_lth's CIFAR ResNet recipe (``models/cifar_resnet.py`` ``default_hparams``):
SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch 128, lr x0.1 at 50% and 75%
of training (80 and 120 of 160 epochs), random flips and crops, gamma ~ U[0, 1].
Besides the training history each run stores the BN gammas before and after
training and, for arms that train gamma, what happens to the test accuracy
when channels are switched off (gamma set to 0, so the channel outputs its
constant beta): those with |gamma| below each of ``gamma_thresholds`` after
training, as many chosen at random, and those that were below the threshold
at initialisation (U[0, 1] puts a fraction t of them below t before any training).

The ``output`` arm (a linear classifier on the frozen random features) is
trained on cached features: the frozen network's BN statistics are
accumulated over the training set once (as its running averages would be),
the global-average-pooled features of every image are computed once in eval
mode, and only the output layer trains on them, for ``probe_epochs`` epochs
(no augmentation): cheap enough to train it to convergence.

Profiles: ``paper`` is CIFAR-10 at the paper's settings (for a GPU); ``cpu``
is Fashion-MNIST average-pooled to 14x14, a 2,048-image subset and 12 epochs,
so the chapter's whole sweep (31 runs) fits about 25 minutes of one CPU thread;
``smoke`` is seconds.

The chapter's tables and scored claims: :mod:`bnrepro.chapters.bn_only`.
"""

from __future__ import annotations

import dataclasses
import time

import torch
import torch.nn.functional as F

from ..core.claims import EMPIRICAL, ClaimSpec, at_least, at_most, between, register_claims
from ..core.config import ExperimentConfig, require
from ..core.device import get_device
from ..core.results import Result, make_result
from ..data import DATASETS, TensorData, load_dataset, random_crop_flip, require_subset
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
    # open_lth cifar_resnet default_hparams: lr 0.1, 160 epochs, milestones 80ep,120ep (= 0.5, 0.75).
    # (The blog reproduction says the authors used lr 0.01; the code's default is 0.1, used here.)
    "paper": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 128,
              "schedule": "step", "milestones": (0.5, 0.75), "flip": True},
}


@dataclasses.dataclass(frozen=True)
class BNOnlyConfig(ExperimentConfig):
    experiment = "bn_only"
    result_keys = ("history", "trainable", "arm", "bn_params", "total_params", "recipe", "image_size",
                   "data_source", "test_acc", "train_acc", "bn_layer_sizes", "gammas_init", "gammas")
    profiles = {
        "smoke": {"dataset": "fashion-mnist", "image_pool": 2, "n_train": 512, "n_test": 256,
                  "epochs": 1, "depth": 8, "crop_pad": 2},
        # 14x14 images, 2,048 training images, 12 epochs: see the module docstring.
        "cpu": {"dataset": "fashion-mnist", "image_pool": 2, "n_train": 2048, "n_test": 2000,
                "epochs": 12, "depth": 14, "crop_pad": 2},
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
    # cut-off is not checked against its text (see the chapter), so two are measured.
    gamma_thresholds: tuple[float, ...] = (0.01, 0.1)
    probe_epochs: int = 100          # output arm: epochs of the output layer on cached features
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
        require(self.arch == "resnet" or self.bn_init != "zero_residual", "bn_init", self.bn_init,
                "zeroes the end of every residual branch: only for arch='resnet'")
        require(self.arch == "resnet" or self.trainable != "bn_shortcut", "trainable", self.trainable,
                "trains the 1x1 shortcut convolutions: only for arch='resnet'")
        require(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"must be one of {', '.join(OPTIMIZERS)}")
        require(self.schedule in SCHEDULES, "schedule", self.schedule, f"must be one of {', '.join(SCHEDULES)}")
        require(self.lr > 0, "lr", self.lr, "the learning rate must be > 0")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        require(0 <= self.momentum < 1, "momentum", self.momentum, "must be in [0, 1)")
        require(self.batch_size >= 2, "batch_size", self.batch_size,
                "BN in training needs at least 2 samples per batch")
        require(self.epochs >= 1, "epochs", self.epochs, "train for at least 1 epoch")
        require(self.probe_epochs >= 1, "probe_epochs", self.probe_epochs, "train for at least 1 epoch")
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
        """``"paper"`` when the optimizer fields match open_lth's recipe, else ``"custom"``."""
        for name, fields in RECIPES.items():
            if all(getattr(self, k) == v for k, v in fields.items()):
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


def gamma_analysis(model, x, y, thresholds, seed: int, gammas_init: torch.Tensor) -> list[dict]:
    """For each threshold: the fraction of channels with |gamma| < threshold (after training and
    at initialisation), and the test accuracy when those channels are switched off, against
    switching off as many random channels and the channels that were below it at initialisation."""
    gammas = bn_gammas(model)
    channels = _channels(model)
    acc = evaluate(model, x, y)["acc"]
    out = []
    for threshold in thresholds:
        small = [channels[i] for i in torch.nonzero(gammas.abs() < threshold).flatten().tolist()]
        small_init = [channels[i] for i in torch.nonzero(gammas_init.abs() < threshold).flatten().tolist()]
        gen = torch.Generator().manual_seed(10_000 + seed)
        random_idx = torch.randperm(len(channels), generator=gen)[:len(small)].tolist()
        out.append({"threshold": threshold, "n_channels": len(channels), "n_small": len(small),
                    "frac_small": len(small) / max(1, len(channels)),
                    "frac_small_init": len(small_init) / max(1, len(channels)), "acc": acc,
                    "acc_small_off": _accuracy_without(model, small, x, y) if small else acc,
                    "acc_random_off": (_accuracy_without(model, [channels[i] for i in random_idx], x, y)
                                       if small else acc),
                    "acc_init_small_off": _accuracy_without(model, small_init, x, y) if small_init else acc})
    return out


@torch.no_grad()
def _features(model, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """The global-average-pooled features that feed ``model.fc`` (eval mode)."""
    fc, model.fc = model.fc, torch.nn.Identity()
    model.eval()
    try:
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    finally:
        model.fc = fc


@torch.no_grad()
def _population_statistics(model, x: torch.Tensor, batch_size: int) -> None:
    """Every BN's running statistics as the cumulative average over the batches of ``x`` (training
    mode, batch statistics in the forward pass: what the running averages estimate)."""
    layers = [m for _, m in batchnorm_layers(model)]
    saved = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for i in range(0, len(x), batch_size):
        model(x[i:i + batch_size])
    for m, momentum in zip(layers, saved):
        m.momentum = momentum


def train_output_probe(model, data: TensorData, cfg: "BNOnlyConfig", device):
    """The ``output`` arm on cached features: only ``model.fc`` trains, ``cfg.probe_epochs`` epochs."""
    _population_statistics(model, data.x_train, cfg.batch_size)
    feats = dataclasses.replace(data, x_train=_features(model, data.x_train), x_test=_features(model, data.x_test))
    return train(model.fc, feats, epochs=cfg.probe_epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                 optimizer=cfg.optimizer, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                 schedule=cfg.schedule, milestones=cfg.milestones, seed=cfg.seed, eval_every_epoch=True,
                 device=device)


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
    if cfg.trainable == "output" and cfg.arch == "resnet":
        model.to(device)
        hist = train_output_probe(model, data, cfg, device)
    else:
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
        out["gamma_analysis"] = gamma_analysis(model, data.x_test, data.y_test, cfg.gamma_thresholds, cfg.seed,
                                               gammas_init)
    return make_result(cfg, out, device=device, started=start,
                       seeds={"init": cfg.seed, "bn_init": cfg.seed, "random_weights": cfg.seed,
                              "data_order": cfg.seed})


# --------------------------------------------------------------------------- sweeps
INIT_ARMS = ("uniform", "fixed", "he_normal")
# What each profile sweeps: the four arms at the base depth, BN-only at a few depths and BN-only
# from three gamma initialisers (at ``init_depth``), every point with the same seeds. Paper-profile
# depths are open_lth's ResNets of the paper's depth series (14 ... 866).
PLAN = {
    "smoke": {"base_depth": 8, "arms": ("bn", "random", "all", "output"), "depths": (8, 14),
              "init_depth": 8, "seeds": (0,), "more_seeds": (0,), "more_seed_arms": ()},
    # cpu: 3 seeds everywhere; 5 where the effects are within twice the seed spread (depth, the
    # initialisers, BN-only against the probe, whose extra probe runs cost seconds); ResNet-8 and -14,
    # the initialisers at ResNet-8, to fit about 25 CPU minutes.
    "cpu": {"base_depth": 14, "arms": ("bn", "random", "all", "output"), "depths": (8, 14),
            "init_depth": 8, "seeds": (0, 1, 2), "more_seeds": (0, 1, 2, 3, 4), "more_seed_arms": ("bn", "output")},
    "paper": {"base_depth": 110, "arms": ("bn", "random", "all", "output"),
              "depths": (14, 32, 56, 110, 218, 434, 866), "init_depth": 110, "seeds": (0, 1, 2),
              "more_seeds": (0, 1, 2), "more_seed_arms": ()},
}


def sweep_groups(profile: str) -> dict[str, list[BNOnlyConfig]]:
    """The configs of each of the chapter's experiments (a config may serve several)."""
    plan = PLAN[profile]
    base = BNOnlyConfig.for_profile(profile, depth=plan["base_depth"])
    seeds, more = plan["seeds"], plan["more_seeds"]
    return {
        "arms": [base.replace(trainable=a, seed=s) for a in plan["arms"]
                 for s in (more if a in plan["more_seed_arms"] else seeds)],
        "depth": [base.replace(depth=d, trainable="bn", seed=s) for d in plan["depths"] for s in more],
        "init": [base.replace(depth=plan["init_depth"], trainable="bn", bn_init=i, seed=s)
                 for i in INIT_ARMS for s in more],
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

# --------------------------------------------------------------------------- claims
#: The claims the bn_only runs are scored by, fixed before the runs (their hash is stored with each run).
#: The threshold t = 0.1 for "disabled" is ours: the paper's cut-off is not checked against its text.
_PAPER, _BLOG = "frankle2021training", "seed_bnonly_blog"
_BLOG_WHERE = "What If Only Batch Normalization Layers Were Trained?, notes on the code (item 2)"
CLAIMS = register_claims("bn_only", [
    ClaimSpec("bn-beats-random", EMPIRICAL, "BN-only minus training 2 random conv weights per channel "
              "(as many scalars, BN frozen): test accuracy, same seed", "far higher",
              at_least(0.10, null=0.0), "'far higher' read as at least 10 points of accuracy; a smaller "
              "positive gap is partly", source=_PAPER, where="Abstract"),
    ClaimSpec("bn-beats-output", EMPIRICAL, "BN-only minus a linear classifier trained to convergence on the "
              "same frozen random features: test accuracy, same seed", "higher",
              at_least(0.05, null=0.0), "BN-only moves every layer's features, the probe none: a gain of "
              "5 points; a smaller positive gain is partly", source=_PAPER,
              where="the baselines (output layer only)", unverified=True),
    ClaimSpec("depth-helps", EMPIRICAL, "BN-only test accuracy: the deepest minus the shallowest network "
              "of the sweep (cpu: ResNet-14 minus ResNet-8), same seed", "deeper is better",
              at_least(0.02, null=0.0), "the TF port gains 4.6 points from ResNet-14 to ResNet-32 on "
              "CIFAR-10; half of that over a smaller depth ratio", source=_PAPER,
              where="Abstract; depth series ResNet-14 to ResNet-866"),
    ClaimSpec("third-disabled", EMPIRICAL, "fraction of BN-only channels with |γ| < 0.1 after training",
              "a quarter to a third", between(0.25, 0.35),
              "the paper's 'a quarter to a third', read as [0.25, 0.35]; t = 0.1 is ours", source=_PAPER,
              where="Abstract; the analysis of the learned γ", unverified=True),
    ClaimSpec("disabling-is-learned", EMPIRICAL, "fraction of BN-only channels with |γ| < 0.1: after "
              "training minus at initialisation (U[0, 1] puts 10% there)", "learned: about a third",
              at_least(0.10, null=0.0), "a third after training against 10% at initialisation: an excess "
              "of at least 10 points; a smaller positive excess is partly", source=_PAPER,
              where="Abstract ('naturally learning to disable')", unverified=True),
    ClaimSpec("small-gamma-dispensable", EMPIRICAL, "test accuracy lost when the BN-only channels with "
              "|γ| < 0.1 are switched off (γ = 0)", "~0 (disabled)", at_most(0.01),
              "'disabled' features carry nothing: at most 1 point; the controls (as many random channels, "
              "the channels small at initialisation) are shown beside it", source=_PAPER,
              where="the analysis of the learned γ", unverified=True),
    ClaimSpec("ones-too-symmetric", EMPIRICAL, "BN-only ResNet-8: he_normal γ minus all-ones γ, test "
              "accuracy, same seed", "ones too symmetric to train", at_least(0.05, null=0.0),
              "'too symmetric to be trained' read as a gap of at least 5 points; a smaller positive gap "
              "is partly", source=_BLOG, where=_BLOG_WHERE),
])
