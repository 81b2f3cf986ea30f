"""Questions readers ask about BN, settled by runs: BN in shallow and deep MLPs, BN vs the same
affine parameters without the normalization, how far a careful initialisation's scale drifts, and
what plain SGD does to the norm of weights that feed a BN layer.

One experiment, ``reader_questions``: a ReLU MLP on a Fashion-MNIST subset, He-initialised
(PyTorch's ``kaiming_normal_``, fan-in), trained with plain SGD (no momentum, no weight decay: so
that the weight-norm identity below holds step by step). Configs differ in

* ``depth``: hidden layers (1: the shallow MLP of the question; 6: a deep one);
* ``norm``: ``"bn"`` (BatchNorm1d after every hidden Linear, before the ReLU), ``"affine"``
  (a learned per-unit scale and shift in BN's place, initialised as BN's γ = 1, β = 0, with no
  normalization: the same parameters, the same place), or ``"none"``;
* ``lr``, on a grid in factors of about 3, so that every arm is compared at its own best rate.

Every run stores, besides its history and final test accuracy, the standard deviation of each
hidden layer's pre-activations (the Linear's outputs, eval mode, on the first 1,024 test images)
at initialisation and after training, and the Frobenius norm of each hidden Linear's weight
before and after. The page ``book/reader_questions.ipynb`` reads them
(:mod:`bnrepro.chapters.reader_questions`).
"""

from __future__ import annotations

import dataclasses
import time

import torch
from torch import nn

from ..core.claims import EMPIRICAL, EXACT, ClaimSpec, at_least, at_most, register_claims
from ..core.config import ExperimentConfig, require
from ..core.device import get_device
from ..core.results import Result, make_result
from ..data.datasets import DATASETS, load_dataset, require_subset
from ..models import count_parameters
from ..training.loop import evaluate, train
from . import register

MLP_NORMS = ("none", "bn", "affine")


class Affine(nn.Module):
    """y = γ x + β per unit: BN's learned parameters without its normalization."""

    def __init__(self, num_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x):
        return x * self.weight + self.bias


def question_mlp(depth: int, width: int, norm: str, in_features: int = 784, num_classes: int = 10) -> nn.Sequential:
    """Flatten, then ``depth`` x (Linear, norm, ReLU), then a Linear classifier; He-initialised."""
    require(norm in MLP_NORMS, "norm", norm, f"must be one of {', '.join(MLP_NORMS)}")
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = in_features
    for _ in range(depth):
        lin = nn.Linear(fan_in, width)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        nn.init.zeros_(lin.bias)
        layers += [lin, {"bn": nn.BatchNorm1d, "affine": Affine, "none": lambda _: nn.Identity()}[norm](width),
                   nn.ReLU()]
        fan_in = width
    layers.append(nn.Linear(fan_in, num_classes))
    return nn.Sequential(*layers)


def hidden_linears(model: nn.Sequential) -> list[nn.Linear]:
    """The hidden layers' Linear modules (every Linear but the classifier)."""
    return [m for m in model if isinstance(m, nn.Linear)][:-1]


@torch.no_grad()
def preactivation_stds(model: nn.Sequential, x: torch.Tensor) -> list[float]:
    """Std of each hidden Linear's outputs on ``x``, in eval mode (the model's mode is restored)."""
    stds = []
    handles = [lin.register_forward_hook(lambda _m, _i, out: stds.append(float(out.std())))
               for lin in hidden_linears(model)]
    was_training = model.training
    model.eval()
    model(x)
    model.train(was_training)
    for h in handles:
        h.remove()
    return stds


@torch.no_grad()
def weight_norms(model: nn.Sequential) -> list[float]:
    return [float(lin.weight.norm()) for lin in hidden_linears(model)]


@dataclasses.dataclass(frozen=True)
class ReaderQuestionsConfig(ExperimentConfig):
    experiment = "reader_questions"
    result_keys = ("history", "test_acc", "std_init", "std_end", "wnorm_init", "wnorm_end", "parameters",
                   "data_source")
    profiles = {"smoke": {"n_train": 512, "n_test": 256, "epochs": 1}, "cpu": {}, "paper": {}}

    dataset: str = "fashion-mnist"
    depth: int = 6                    # hidden layers
    width: int = 128
    norm: str = "bn"                  # none | bn | affine
    lr: float = 0.1                   # plain SGD: no momentum, no weight decay
    batch_size: int = 64
    epochs: int = 8
    seed: int = 0                     # init and data order
    n_train: int | None = 4096
    n_test: int | None = 2048

    def validate(self):
        require(self.dataset in DATASETS, "dataset", self.dataset, f"must be one of {', '.join(DATASETS)}")
        require(self.depth >= 1, "depth", self.depth, "the MLP needs at least one hidden layer")
        require(self.width >= 1, "width", self.width, "must be >= 1")
        require(self.norm in MLP_NORMS, "norm", self.norm, f"must be one of {', '.join(MLP_NORMS)}")
        require(self.lr > 0, "lr", self.lr, "the learning rate must be > 0")
        require(self.batch_size >= 2, "batch_size", self.batch_size, "BN in training needs at least 2 samples")
        require(self.epochs >= 1, "epochs", self.epochs, "train for at least 1 epoch")
        require_subset(self.dataset, self.n_train, self.n_test)


def run(cfg: ReaderQuestionsConfig, device=None) -> Result:
    """Train one MLP (depth, norm, lr, seed) with plain SGD."""
    device = get_device(device)
    start = time.perf_counter()
    data = load_dataset(cfg.dataset, device=device, n_train=cfg.n_train, n_test=cfg.n_test)
    torch.manual_seed(cfg.seed)
    model = question_mlp(cfg.depth, cfg.width, cfg.norm, data.x_train[0].numel(), data.num_classes).to(device)
    probe = data.x_test[:1024]
    std_init, wnorm_init = preactivation_stds(model, probe), weight_norms(model)
    hist = train(model, data, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, momentum=0.0,
                 weight_decay=0.0, seed=cfg.seed, device=device)
    return make_result(cfg, {
        "history": hist.to_dict(), "test_acc": evaluate(model, data.x_test, data.y_test)["acc"],
        "std_init": std_init, "std_end": preactivation_stds(model, probe),
        "wnorm_init": wnorm_init, "wnorm_end": weight_norms(model),
        "parameters": count_parameters(model), "data_source": data.source,
    }, device=device, started=start, seeds={"init": cfg.seed, "data_order": cfg.seed})


SEEDS = {"smoke": (0,), "cpu": (0, 1, 2), "paper": (0, 1, 2, 3, 4)}
DEPTHS = (1, 6)
#: Plain-SGD learning rates, factors of about 3; a best rate at an edge leaves its claims inconclusive.
LRS = {"smoke": (0.1, 0.3), "cpu": (0.01, 0.03, 0.1, 0.3, 1.0), "paper": (0.01, 0.03, 0.1, 0.3, 1.0)}


def sweep(profile: str) -> list[ReaderQuestionsConfig]:
    return [ReaderQuestionsConfig.for_profile(profile, depth=d, norm=n, lr=lr, seed=s)
            for d in DEPTHS for n in MLP_NORMS for lr in LRS[profile] for s in SEEDS[profile]]


register(ReaderQuestionsConfig, run, sweep, data_parallel=False)

# --- the claims these runs are scored by (fixed before the runs) -----------------------------
_EDGE = "Inconclusive if either arm's best lr is at the grid's edge"
CLAIMS = register_claims("reader_questions", [
    ClaimSpec("q-bn-hurts-shallow-mlp", EMPIRICAL,
              "BN hurts a shallow MLP (one hidden layer): test-accuracy difference with BN minus without, "
              "each at its best lr", "'seems to hurt' (an audience question)", at_most(0.0),
              f"the question's premise is the sign. {_EDGE}", source="seed_bn_lecture",
              where="the audience's questions"),
    ClaimSpec("q-bn-helps-deep-mlp", EMPIRICAL,
              "BN helps a deep MLP (six hidden layers) within a fixed budget: test-accuracy difference with BN "
              "minus without, each at its best lr", "higher test accuracy, sooner (MNIST MLP, Fig. 1a)",
              at_least(0.0), f"the paper's Figure 1(a) shows the sign. {_EDGE}",
              source="ioffe2015batch", where="Sec. 4.1, Fig. 1(a)"),
    ClaimSpec("q-bn-is-not-its-affine", EMPIRICAL,
              "The normalization, not BN's extra parameters, is what helps: test-accuracy difference of the deep "
              "MLP with BN minus with the same per-unit scale and shift and no normalization, each at its best lr",
              "γ, β only restore what the normalization removed", at_least(0.01, null=0.0),
              f"at least one point; a smaller positive gain is partly. {_EDGE}",
              source="ioffe2015batch", where="Sec. 3"),
    ClaimSpec("q-init-scale-drifts", EMPIRICAL,
              "A careful initialisation sets each layer's scale only at the start: without BN the std of the "
              "deep MLP's last hidden pre-activations moves during training, |log2(std after / std at init)| "
              "at the best lr", "layer inputs' distributions change as the layers before train",
              at_least(1.0), "a factor of 2 either way", source="ioffe2015batch", where="Sec. 1", fmt="{:.2f}"),
    ClaimSpec("q-bn-weights-grow", EXACT,
              "With BN after a layer, plain SGD without weight decay never shrinks the layer's weights: the "
              "smallest ratio of a hidden weight matrix's norm after training to its norm at init, over every "
              "BN run", ">= 1: the gradient is orthogonal to w, so |w|^2 grows by lr^2 |g|^2 each step",
              at_least(1.0), "the identity holds step by step; float32 rounding is far below the growth",
              source="ioffe2015batch", where="Sec. 3.3", fmt="{:.4f}"),
])
