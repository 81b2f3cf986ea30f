"""BN in training: Ioffe & Szegedy's MNIST experiment and learning-rate claims, d2l's exercises.

One experiment, ``bn_training``: train one network, by default the fully
connected sigmoid network of Ioffe & Szegedy Section 4.1, Figure 1
(784-100-100-100-10, small random Gaussian weights, batch 60, plain SGD),
and record

* the test accuracy every ``eval_every`` steps (Figure 1a plots it against
  steps, so :func:`bnrepro.training.loop.train` evaluates by steps here);
* the 15th/50th/85th percentiles of the input to the first ``probe_units``
  sigmoids of the last hidden layer on a fixed probe batch, every
  ``probe_every`` steps (Figure 1b, c), via a training callback.

Every variant the chapter ``book/bn_training.ipynb`` reads is a field:
the model (``"mlp"``, or ``"vgg"``: the small ReLU VGG of
:class:`bnrepro.models.vgg.NoisyVGG`, for Table 2's learning-rate claims),
learning-rate multiplier (BN-x5 / BN-x30), depth and initialisation (deep
sigmoid networks), which hidden layers keep BN, the bias before BN,
mean-only / variance-only BN, frozen gamma/beta, dropout.

The paper gives no learning rate for Figure 1; a known reproduction used
plain SGD with lr 0.5, which is our base lr (the "x1") of the MLPs. "Small
random Gaussian" weights are N(0, 0.01^2) here (the Caffe/AlexNet-era
convention). The VGG's base lr is VGG's own (Simonyan & Zisserman: SGD,
lr 0.01, momentum 0.9).

The claims the runs are scored by are registered here (:data:`CLAIMS`),
before the runs; the chapter's tables and scoring:
:mod:`bnrepro.chapters.bn_training`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Sequence

import torch
from torch import nn

from ..core.claims import EMPIRICAL, EXACT, ClaimSpec, at_least, at_most, register_claims
from ..core.config import ExperimentConfig, require
from ..core.device import cpu_threads, get_device
from ..core.results import Result, make_result
from ..data.datasets import DATASETS, DataNotFoundError, load_dataset, require_subset
from ..models import ACTIVATIONS, MLP, NORMS, count_parameters
from ..models.vgg import NoisyVGG
from ..training.loop import StepState, train
from . import register

PERCENTILES = (0.15, 0.50, 0.85)  # Figure 1(b, c)


@dataclasses.dataclass(frozen=True)
class BNTrainingConfig(ExperimentConfig):
    experiment = "bn_training"
    result_keys = ("history", "probe", "final_test_acc", "best_test_acc", "parameters", "data_source",
                   "n_train", "n_test")
    profiles = {
        # 100 steps on a 6,000-image subset: the whole chapter in seconds.
        "smoke": {"steps": 100, "eval_every": 25, "probe_every": 25, "probe_size": 200,
                  "n_train": 6000, "n_test": 500},
        # 8,000 steps = 8 epochs at batch 60: a sixth of the paper's 50,000,
        # enough for the plain network of Figure 1 to pass the target accuracy
        # (it starts slowly from its small weights); the chapter's whole sweep
        # stays under 20 single-thread CPU minutes.
        "cpu": {"steps": 8_000, "eval_every": 250, "probe_every": 200},
        "paper": {"dataset": "mnist", "steps": 50_000, "eval_every": 500, "probe_every": 250},
    }

    dataset: str = "fashion-mnist"    # sweeps use MNIST when its files are present
    model: str = "mlp"                # "mlp" (Figure 1's) | "vgg" (NoisyVGG "tiny", ReLU, no noise)
    depth: int = 3                    # hidden layers (Figure 1: 3)
    width: int = 100                  # units per hidden layer (Figure 1: 100)
    activation: str = "sigmoid"
    init: str = "normal"              # MLP: "normal" = N(0, init_std^2); "xavier" = Xavier-uniform (Glorot)
    init_std: float = 0.01            # N(0, init_std^2) weights, zero biases
    norm: str = "bn"                  # "bn" | "none" | "bn_mean_only" | "bn_var_only" | "bnrepro"
    bn_layers: tuple | None = None    # hidden layers (0-based) that keep BN; None = all
    bias_before_bn: bool = True       # False: drop the Linear bias where BN follows
    frozen_affine: bool = False       # True: gamma = 1, beta = 0, not trained
    dropout: float = 0.0              # dropout after every hidden activation
    lr: float = 0.5                   # base lr ("x1"): plain SGD, as a known reproduction
    lr_mult: float = 1.0              # Table 2's x5, x30
    momentum: float = 0.0             # SGD momentum (0: plain SGD, Figure 1)
    batch_size: int = 60              # Section 4.1
    steps: int = 50_000               # Section 4.1
    eval_every: int = 500             # steps between test evaluations
    probe_every: int = 250            # steps between percentile probes
    probe_size: int = 1000            # the fixed probe batch: the first test images
    probe_units: int = 10             # sigmoids of the last hidden layer recorded
    seed: int = 0                     # model init and data order
    n_train: int | None = None        # None = the whole training set
    n_test: int | None = None

    @property
    def effective_lr(self) -> float:
        return self.lr * self.lr_mult

    def validate(self):
        require(self.dataset in DATASETS, "dataset", self.dataset, f"must be one of {', '.join(DATASETS)}")
        require(self.norm in NORMS, "norm", self.norm, f"must be one of {', '.join(NORMS)}")
        require(self.activation in ACTIVATIONS, "activation", self.activation,
                f"must be one of {', '.join(ACTIVATIONS)}")
        require(self.depth >= 1, "depth", self.depth, "needs at least one hidden layer")
        require(self.width >= 1, "width", self.width, "needs at least one unit per layer")
        require(self.init_std > 0, "init_std", self.init_std, "the weights' std must be > 0")
        require(self.model in MODELS, "model", self.model, f"must be one of {', '.join(MODELS)}")
        require(self.init in INITS, "init", self.init, f"must be one of {', '.join(INITS)}")
        require(0.0 <= self.momentum < 1.0, "momentum", self.momentum, "must be in [0, 1)")
        has_bn = self.norm != "none"
        if self.model == "vgg":
            require(self.norm in VGG_NORMS, "norm", self.norm,
                    f"the VGG takes one of {', '.join(VGG_NORMS)}")
            require(self.bn_layers is None and self.bias_before_bn and not self.frozen_affine
                    and self.dropout == 0.0, "model", self.model,
                    "the VGG has none of the MLP's variants (bn_layers, bias_before_bn, frozen_affine, dropout)")
        if self.bn_layers is not None:
            require(has_bn, "bn_layers", self.bn_layers, "only means something with a BN norm")
            require(len(self.bn_layers) > 0 and len(set(self.bn_layers)) == len(self.bn_layers)
                    and all(isinstance(i, int) and 0 <= i < self.depth for i in self.bn_layers),
                    "bn_layers", self.bn_layers, f"must be distinct layer indices in 0..{self.depth - 1}")
        require(has_bn or self.bias_before_bn, "bias_before_bn", self.bias_before_bn,
                "only means something with a BN norm (the bias is dropped where BN follows)")
        require(has_bn or not self.frozen_affine, "frozen_affine", self.frozen_affine,
                "only means something with a BN norm")
        require(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "must be in [0, 1)")
        require(self.lr > 0 and math.isfinite(self.lr), "lr", self.lr, "must be a positive number")
        require(self.lr_mult > 0 and math.isfinite(self.lr_mult), "lr_mult", self.lr_mult,
                "must be a positive number")
        require(self.batch_size >= (2 if has_bn else 1), "batch_size", self.batch_size,
                "BN in training needs at least 2 samples per batch")
        for name in ("steps", "eval_every", "probe_every"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        require(self.probe_size >= 2, "probe_size", self.probe_size, "percentiles need >= 2 samples")
        if self.model == "mlp":
            require(1 <= self.probe_units <= self.width, "probe_units", self.probe_units,
                    f"must be between 1 and width={self.width}")
        for name in ("n_train", "n_test"):
            value = getattr(self, name)
            require(value is None or value >= 1, name, value, "must be None (all) or >= 1")
        require_subset(self.dataset, self.n_train, self.n_test)


MODELS = ("mlp", "vgg")
INITS = ("normal", "xavier")
VGG_NORMS = ("bn", "bnrepro", "none")
VGG_LAYOUT = "tiny"  # NoisyVGG's 8-16-32-32 conv layout: ~17 ms a step of 64 on one CPU thread


# --------------------------------------------------------------------------- the network

def hidden_blocks(model: nn.Sequential) -> list[tuple[int, int, int]]:
    """Indices ``(linear, norm, activation)`` of each hidden layer of an :class:`MLP`."""
    kids = list(model)
    return [(i, i + 1, i + 2) for i in range(len(kids) - 1)
            if isinstance(kids[i], nn.Linear) and i + 2 < len(kids)
            and isinstance(kids[i + 2], tuple(ACTIVATIONS.values()))]


def build_network(cfg: BNTrainingConfig, in_features: int = 784, num_classes: int = 10) -> nn.Sequential:
    """The Figure 1 MLP with the config's variant applied (seed torch before calling).

    BN sits between each Linear and its sigmoid, as in the paper (BN(Wu), the
    bias dropped or kept); layers not in ``bn_layers`` get ``nn.Identity``.
    """
    model = MLP(in_features, (cfg.width,) * cfg.depth, num_classes, norm=cfg.norm,
                activation=cfg.activation, init_std=cfg.init_std)
    if cfg.init == "xavier":  # Glorot & Bengio's normalized init (uniform), zero biases
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
    layers = list(model)
    for k, (lin, norm, _) in enumerate(hidden_blocks(model)):
        if cfg.bn_layers is not None and k not in cfg.bn_layers:
            layers[norm] = nn.Identity()
        if isinstance(layers[norm], nn.Identity):
            continue
        if not cfg.bias_before_bn:
            # Section 3.2: "the bias b can be ignored since its effect will be
            # canceled by the subsequent mean subtraction".
            layers[lin].register_parameter("bias", None)
        if cfg.frozen_affine:  # gamma = 1, beta = 0 (their initial values), never updated
            for p in layers[norm].parameters():
                p.requires_grad_(False)
    if cfg.dropout > 0:
        acts = {a for _, _, a in hidden_blocks(model)}
        with_dropout: list[nn.Module] = []
        for i, layer in enumerate(layers):
            with_dropout.append(layer)
            if i in acts:
                with_dropout.append(nn.Dropout(cfg.dropout))
        layers = with_dropout
    return nn.Sequential(*layers)


def last_sigmoid(model: nn.Sequential) -> nn.Module:
    """The activation module of the last hidden layer (its input is what Figure 1b, c shows)."""
    acts = [m for m in model if isinstance(m, tuple(ACTIVATIONS.values()))]
    return acts[-1]


class SigmoidInputProbe:
    """Training callback: percentiles of the input to the last hidden layer's sigmoids.

    Every ``every`` steps it runs the fixed ``probe_x`` through the model in
    eval mode (BN with its running statistics, dropout off, so probing does
    not touch the running averages) and stores, for the first ``units``
    units, the 15th/50th/85th percentiles over the probe batch.
    """

    def __init__(self, model: nn.Module, probe_x: torch.Tensor, every: int, units: int,
                 percentiles: Sequence[float] = PERCENTILES):
        self.model, self.x, self.every, self.units = model, probe_x, every, units
        self.q = torch.tensor(percentiles, device=probe_x.device)
        self.steps: list[int] = []
        self.values: list[list[list[float]]] = []  # [probe][unit][percentile]

    @torch.no_grad()
    def record(self, step: int) -> None:
        captured = []
        handle = last_sigmoid(self.model).register_forward_pre_hook(
            lambda mod, inputs: captured.append(inputs[0][:, :self.units].float()))
        was_training = self.model.training
        self.model.eval()
        try:
            self.model(self.x)
        finally:
            handle.remove()
            self.model.train(was_training)
        pct = torch.quantile(captured[0], self.q, dim=0)  # (percentiles, units)
        self.steps.append(step)
        # 4 decimals: the stored files stay small, and the plots need no more
        self.values.append([[round(v, 4) for v in unit] for unit in pct.T.tolist()])

    def __call__(self, state: StepState) -> None:
        if (state.step + 1) % self.every == 0:
            self.record(state.step + 1)

    def to_dict(self) -> dict:
        return {"steps": self.steps, "percentiles": list(PERCENTILES), "values": self.values}


@functools.lru_cache(maxsize=2)
def _load(name: str, device: str, n_train: int | None, n_test: int | None):
    """One load per process: a sweep trains ~40 networks on the same tensors (train() never
    writes to them), and each load recomputes the normalization statistics."""
    return load_dataset(name, device=device, n_train=n_train, n_test=n_test)


def _epochs_for(steps: int, n: int, batch_size: int) -> int:
    per_epoch = n // batch_size if n % batch_size == 1 else -(-n // batch_size)  # train() drops a batch of 1
    return max(1, -(-steps // per_epoch))


def build_vgg(cfg: BNTrainingConfig, in_channels: int = 1, image_size: int = 28,
              num_classes: int = 10) -> nn.Module:
    """The small ReLU VGG of the learning-rate claims (Kaiming-normal init; seed torch before calling)."""
    return NoisyVGG(VGG_LAYOUT, norm=cfg.norm, noise=False, num_classes=num_classes,
                    in_channels=in_channels, image_size=image_size)


def run(cfg: BNTrainingConfig, device=None) -> Result:
    """Train one Figure-1-style MLP variant (or the small VGG), recording test accuracy and
    sigmoid-input percentiles (MLPs only)."""
    device = get_device(device)
    with cpu_threads(device):
        return _run(cfg, device)


def _run(cfg: BNTrainingConfig, device: torch.device) -> Result:
    start = time.perf_counter()
    data = _load(cfg.dataset, str(device), cfg.n_train, cfg.n_test)
    torch.manual_seed(cfg.seed)
    callbacks = []
    if cfg.model == "mlp":
        in_features = data.in_channels * data.image_size ** 2
        model = build_network(cfg, in_features, data.num_classes).to(device)
        probe = SigmoidInputProbe(model, data.x_test[:cfg.probe_size], cfg.probe_every, cfg.probe_units)
        probe.record(0)
        callbacks.append(probe)
        probed = probe.to_dict
    else:  # no sigmoids to probe
        model = build_vgg(cfg, data.in_channels, data.image_size, data.num_classes).to(device)

        def probed():
            return {"steps": [], "percentiles": list(PERCENTILES), "values": []}
    hist = train(model, data, epochs=_epochs_for(cfg.steps, len(data.x_train), cfg.batch_size),
                 batch_size=cfg.batch_size, lr=cfg.effective_lr, momentum=cfg.momentum, seed=cfg.seed,
                 max_steps=cfg.steps, log_every=cfg.probe_every, eval_every_epoch=False,
                 eval_every_steps=cfg.eval_every, callbacks=callbacks, device=device)
    evals = hist.evals
    return make_result(cfg, {"history": hist.to_dict(), "probe": probed(),
                   "final_test_acc": evals[-1]["test_acc"] if evals and not hist.diverged else math.nan,
                   "best_test_acc": max((e["test_acc"] for e in evals), default=math.nan),
                   "parameters": count_parameters(model), "data_source": data.source,
                   "n_train": len(data.x_train), "n_test": len(data.x_test)},
                       device=device, started=start, seeds={"init": cfg.seed, "data_order": cfg.seed})


# --------------------------------------------------------------------------- the sweep

#: Seeds of every scored arm (n >= 3: the claims' intervals are over seeds).
SEEDS = {"smoke": (0,), "cpu": (0, 1, 2), "paper": (0, 1, 2, 3, 4)}
#: Figure 1, the deep nets and the small VGG: 5 seeds at the cpu profile (effects there may be near the
#: seed spread; the deep nets' went from 3 to 5 seeds when the tiny-init effect proved to be).
SEEDS_5 = {"smoke": (0,), "cpu": (0, 1, 2, 3, 4), "paper": (0, 1, 2, 3, 4)}
LR_MULTS = (1.0, 5.0, 30.0)                          # Table 2: x1, BN-x5, BN-x30
DEEP_DEPTH = 10                                      # deep sigmoid net (Sec. 4.2.2's BN-x5-Sigmoid, small)
DEEP_MULTS = (1.0, 5.0)
#: Test accuracy X of "steps to reach X", per dataset, for the MLPs and for the VGG. Fixed before
#: the runs to sit below every compared arm's plateau (checked: :data:`PLATEAU_MARGIN`).
TARGET_ACC = {"fashion-mnist": 0.80, "mnist": 0.95, "cifar10": 0.45}
VGG_TARGET_ACC = {"fashion-mnist": 0.84, "mnist": 0.97, "cifar10": 0.50}
#: A steps-to-X claim is scored only if every compared run settles at least this far above X.
PLATEAU_MARGIN = 0.01
#: Final test accuracy below this counts as "did not learn" (chance is 0.10).
NO_LEARNING_ACC = 0.20
#: The VGG runs of the learning-rate claims: VGG's own base lr and momentum, batch 64, a subset.
VGG_RUN = {
    "smoke": {"steps": 40, "eval_every": 10, "n_train": 2000, "n_test": 500},
    "cpu": {"steps": 800, "eval_every": 25, "n_train": 10_000, "n_test": 2000},
    "paper": {"steps": 5000, "eval_every": 100},
}
ABLATIONS = {                                        # d2l exercises, against "bn" at x1
    "no bias before BN": {"bias_before_bn": False},
    "mean-only BN": {"norm": "bn_mean_only"},
    "variance-only BN": {"norm": "bn_var_only"},
    "BN in first layer only": {"bn_layers": (0,)},
    "BN in last layer only": {"bn_layers": (2,)},
    "frozen gamma=1, beta=0": {"frozen_affine": True},
    "dropout 0.2, no BN": {"norm": "none", "dropout": 0.2},
    "BN + dropout 0.2": {"dropout": 0.2},
}
#: The ablations that are scored claims run every seed of :data:`SEEDS`; the others seed 0 only.
SCORED_ABLATIONS = ("no bias before BN", "BN + dropout 0.2")


def mnist_available() -> bool:
    """Whether MNIST's files are present locally (no download attempted)."""
    try:
        load_dataset("mnist", n_train=1, n_test=1, download=False)
    except DataNotFoundError:
        return False
    return True


def chapter_dataset(profile: str) -> str:
    """MNIST (the paper's) at the paper profile, else MNIST when present, else Fashion-MNIST."""
    if profile == "paper":
        return "mnist"
    return "mnist" if mnist_available() else "fashion-mnist"


def groups(profile: str, dataset: str | None = None) -> dict[str, list[BNTrainingConfig]]:
    """The configs of each part of the chapter, by name."""
    ds = dataset or chapter_dataset(profile)
    base = BNTrainingConfig.for_profile(profile, dataset=ds)
    seeds5 = SEEDS_5[profile]
    deep = base.replace(depth=DEEP_DEPTH, steps=max(1, base.steps * 3 // 8))  # 3,000 of 8,000 at cpu
    vgg = base.replace(model="vgg", activation="relu", lr=0.01, momentum=0.9, batch_size=64,
                       **VGG_RUN[profile])
    return {
        # Figure 1 itself (lr x1, small init), 5 seeds at the cpu profile.
        "fig1": [base.replace(norm=n, seed=s) for n in ("bn", "none") for s in seeds5],
        # deep sigmoid nets from a sensible init (Xavier), x1 and x5
        "deep": [deep.replace(norm=n, init="xavier", lr_mult=m, seed=s)
                 for m in DEEP_MULTS for n in ("bn", "none") for s in seeds5],
        # the same deep nets from Figure 1's tiny init (x1): "less careful about initialization"
        "deep_tiny": [deep.replace(norm=n, seed=s) for n in ("bn", "none") for s in seeds5],
        # Table 2's learning-rate multipliers on a small ReLU VGG, with and without BN
        "vgg_lr": [vgg.replace(norm=n, lr_mult=m, seed=s) for m in LR_MULTS for n in ("bn", "none")
                   for s in seeds5],
        "ablations": [base.replace(seed=s, **ABLATIONS[name]) for name, s in ablation_runs(profile)],
    }


def ablation_runs(profile: str) -> list[tuple[str, int]]:
    """(ablation name, seed) of each config of ``groups(profile)["ablations"]``, in order."""
    return [(name, s) for name in ABLATIONS for s in (SEEDS[profile] if name in SCORED_ABLATIONS else (0,))]


def sweep(profile: str) -> list[BNTrainingConfig]:
    """Every config the chapter reads (each once)."""
    seen, out = set(), []
    for cfgs in groups(profile).values():
        for cfg in cfgs:
            if cfg.hash() not in seen:
                seen.add(cfg.hash())
                out.append(cfg)
    return out


register(BNTrainingConfig, run, sweep, data_parallel=True)

#: The claims the runs are scored by, fixed before the runs (their hash is stored with each run).
#: Per-seed values; "steps to X" claims are scored only where every compared run settles above X.
_IS = "ioffe2015batch"
CLAIMS = register_claims("bn_training", [
    ClaimSpec("bn-fewer-steps", EMPIRICAL,
              "Figure 1 network: steps to reach X without BN / with BN", "31.0M / 13.3M = 2.3 (Table 2)",
              at_least(2.0, null=1.0),
              "BN-Baseline needs 2.3 times fewer steps than Inception; we ask for 2, and call a ratio above 1 "
              "(BN faster) but below 2 partly", source=_IS, where="Fig. 1a; Table 2", n=5, post_hoc=True,
              fmt="{:.2f}"),
    ClaimSpec("bn-higher-accuracy", EMPIRICAL,
              "Figure 1 network: final test accuracy with BN minus without",
              "higher; BN-Baseline 72.7% vs Inception 72.2% (+0.5 points)", at_least(0.005, null=0.0),
              "the paper's gain is half a point; a smaller positive gain is partly", source=_IS,
              where="Fig. 1a; Table 2", n=5, fmt="{:+.4f}"),
    ClaimSpec("bn-stable-inputs", EMPIRICAL,
              "Figure 1 network: late drift of the last layer's sigmoid inputs, without BN / with BN",
              "much more stable with BN", at_least(2.0, null=1.0),
              "'much more stable' read as at most half the drift; a ratio above 1 but below 2 is partly",
              source=_IS, where="Fig. 1b, c", n=5, fmt="{:.2f}"),
    ClaimSpec("sigmoid-without-bn-fails", EMPIRICAL,
              "10 hidden sigmoid layers, Xavier init, no BN: final test accuracy (the better of x1 and x5)",
              "Inception with sigmoids: never better than chance", at_most(0.15),
              "chance is 0.10 on ten classes; 0.05 above it allows for test-set noise", source=_IS,
              where="Sec. 4.2.2", fmt="{:.3f}"),
    ClaimSpec("sigmoid-with-bn-trains", EMPIRICAL,
              "10 hidden sigmoid layers, Xavier init, BN at x5: final test accuracy / X",
              "BN-x5-Sigmoid: 69.8% / 72.2% = 0.967", at_least(0.95, null=0.25),
              "BN-x5-Sigmoid reaches 0.967 of the target; a network that learns (above 0.20, a quarter of X) "
              "but ends below 0.95 of X is partly", source=_IS, where="Sec. 4.2.2; Table 2", fmt="{:.3f}"),
    ClaimSpec("bn-less-careful-init", EMPIRICAL,
              "10 hidden sigmoid layers with BN, x1: final test accuracy from N(0, 0.01²) weights minus "
              "from Xavier", "BN lets us be less careful about initialization", at_least(-0.02),
              "weights about ten times smaller than Xavier's (which leave the plain network at chance) may "
              "cost the BN network at most two points", source=_IS, where="Abstract", fmt="{:+.4f}"),
    ClaimSpec("bn-x5-faster", EMPIRICAL,
              "small ReLU VGG with BN: steps to reach X at x1 / at x5", "13.3M / 2.1M = 6.3 (Table 2)",
              at_least(2.0, null=1.0),
              "BN-x5 is 6.3 times faster than BN-Baseline; we ask for 2, and call a ratio above 1 but below "
              "2 partly", source=_IS, where="Table 2", n=5, post_hoc=True, fmt="{:.2f}"),
    ClaimSpec("bn-x30-faster", EMPIRICAL,
              "small ReLU VGG with BN: steps to reach X at x1 / at x30", "13.3M / 2.7M = 4.9 (Table 2)",
              at_least(2.0, null=1.0),
              "BN-x30 is 4.9 times faster than BN-Baseline; we ask for 2, and call a ratio above 1 but below "
              "2 partly", source=_IS, where="Table 2", n=5, post_hoc=True, fmt="{:.2f}"),
    ClaimSpec("bn-x30-slower-than-x5", EMPIRICAL,
              "small ReLU VGG with BN: steps to reach X at x30 / at x5", "2.7M / 2.1M = 1.3 (Table 2)",
              at_least(1.1, null=1.0),
              "BN-x30 needs 1.3 times the steps of BN-x5; we ask for 1.1, and call a ratio above 1 but "
              "below 1.1 partly", source=_IS, where="Table 2", n=5, post_hoc=True, fmt="{:.2f}"),
    ClaimSpec("bn-x30-ends-higher", EMPIRICAL,
              "small ReLU VGG with BN: final test accuracy at x30 minus at x5", "74.8% - 73.0% = +1.8 points",
              at_least(0.01, null=0.0),
              "the paper's gain is 1.8 points; we ask for one point, and call a smaller positive gain partly",
              source=_IS, where="Table 2", n=5, fmt="{:+.4f}"),
    ClaimSpec("no-bn-fails-at-x5", EMPIRICAL,
              "small ReLU VGG without BN at x5 fails (NaN loss or final accuracy below 0.20): 1 per seed "
              "that fails, 0 per seed that trains",
              "Inception at x5: the model parameters reach machine infinity", at_least(1.0),
              "every seed must fail, as the paper's one run did", source=_IS, where="Sec. 4.2.2", n=5,
              fmt="{:.2f}"),
    ClaimSpec("bias-gradient-zero", EXACT,
              "gradient reaching the bias before BN, max |dL/db| in float64", "0: the bias can be ignored",
              at_most(1e-12), "float64 rounding of a sum that is exactly zero", source=_IS, where="Sec. 3.2",
              fmt="{:.1e}"),
    ClaimSpec("bias-redundant", EMPIRICAL,
              "Figure 1 BN network with vs without the bias before BN: |final test accuracy difference|",
              "0: its effect is canceled by the mean subtraction", at_most(0.005),
              "the two runs differ by float32 rounding only; half a point is far above that", source=_IS,
              where="Sec. 3.2", fmt="{:.4f}"),
    ClaimSpec("bn-remove-dropout", EMPIRICAL,
              "Figure 1 BN network: final test accuracy without dropout minus with dropout 0.2",
              "dropout removed from BN-Inception without increasing overfitting", at_least(-0.005),
              "removing dropout may cost at most half a point", source=_IS, where="Sec. 4.2.1",
              fmt="{:+.4f}"),
])
