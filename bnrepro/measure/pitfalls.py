"""Framework pitfalls of BN, shown on a small trained network (chapter "BN from first principles", Sec. 7).

Two checks of PyTorch's bookkeeping (:func:`running_var_gap`, :func:`keras_deviation`) and
three TensorFlow pitfalls named by the feature-scaling explainer, each through its PyTorch
equivalent, on a BN-MLP trained for a few hundred SGD steps on five Fashion-MNIST classes:

* **Slim without ``UPDATE_OPS``** (TF1's ``batch_norm`` puts the moving-average updates in
  ``tf.GraphKeys.UPDATE_OPS``; if the train op does not depend on them they never run). The
  PyTorch equivalent is a BN layer whose running statistics never move (``momentum=0``): the
  training forward pass uses batch statistics and never reads the running ones, so the weights
  are the same as with the updates, but eval mode normalizes with the initial (0, 1).
* **A Saver over ``tf.trainable_variables()``** (the moving statistics are not trainable
  variables). The PyTorch equivalent is a checkpoint of ``named_parameters()`` instead of
  ``state_dict()``: the restored running statistics are the defaults (0, 1).
* **``trainable=False`` vs ``training=False``** (in TF2 Keras, ``trainable=False`` on a BN
  layer also runs it in inference mode). PyTorch's ``requires_grad=False`` freezes gamma and
  beta only: in ``train()`` mode the running statistics keep following the new data. ``eval()``
  on the BN layers is the equivalent of ``training=False``; both together are TF2's
  ``trainable=False``.

:func:`update_ops_pitfall`, :func:`saver_pitfall` and :func:`freezing_pitfall` measure one
seed each; :func:`pitfall_numbers` runs them for several seeds. Everything runs on the CPU
in about a second per seed; the global random state is left as it was.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..data.datasets import load_dataset
from ..models.lenet import MLP
from ..nn import batchnorm as bnr

__all__ = ["PITFALL_STEPS", "VARIANTS", "accuracy", "bn_modules", "freezing_pitfall", "keras_deviation",
           "pitfall_data", "pitfall_numbers", "pitfall_values", "running_var_gap", "saver_pitfall", "train_mlp",
           "update_ops_pitfall"]

#: SGD steps of the pretraining (and of the fine-tuning, a third of it) per profile.
PITFALL_STEPS = {"smoke": 200, "cpu": 300, "paper": 300}
PRETRAIN_CLASSES, FINETUNE_CLASSES = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)  # clothes; shoes and bags
HIDDEN, ACTIVATION, BATCH, LR = (64, 64, 64), "sigmoid", 64, 0.1
#: BN momentum of each variant of :func:`update_ops_pitfall`.
VARIANTS = {"fixed": 0.1, "no_updates": 0.0, "decay_0.999": 0.001}


def running_var_gap(m: int = 8, seed: int = 0) -> float:
    """|running_var - m/(m-1) sigma_B^2| after one batch of ``m`` with momentum 1 (3 channels, float32)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        x = torch.randn(m, 3) * 2 + 1
    layer = nn.BatchNorm1d(3, momentum=1.0)
    layer(x)
    return (layer.running_var - x.var(0, unbiased=True)).abs().max().item()


def keras_deviation(batches: int = 200, m: int = 16, channels: int = 1000, seed: int = 1) -> float:
    """PyTorch momentum 0.1 vs Keras's rule with decay 0.9 replayed by hand: max |diff| of the stats."""
    decay = bnr.momentum_to_decay(0.1)
    layer = nn.BatchNorm1d(channels, momentum=0.1)
    mean, var = torch.zeros(channels), torch.ones(channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(batches):
            xb = torch.randn(m, channels)
            layer(xb)
            mean = decay * mean + (1 - decay) * xb.mean(0)
            var = decay * var + (1 - decay) * xb.var(0, unbiased=True)
    return max((layer.running_mean - mean).abs().max().item(), (layer.running_var - var).abs().max().item())


# ------------------------------------------------------------------ a small trained BN net
def pitfall_data(n_train: int = 6000, n_test: int = 2000) -> dict:
    """Fashion-MNIST (pixels in [0, 1], flattened) split into task A (classes 0-4: T-shirt,
    trouser, pullover, dress, coat) and task B (5-9: sandal, shirt, sneaker, bag, ankle boot),
    labels 0-4 in each: ``{"A": (x_train, y_train, x_test, y_test), "B": (...)}``."""
    d = load_dataset("fashion-mnist", device="cpu", n_train=n_train, n_test=n_test, normalize=False)
    out = {}
    for task, classes in (("A", PRETRAIN_CLASSES), ("B", FINETUNE_CLASSES)):
        parts = []
        for x, y in ((d.x_train, d.y_train), (d.x_test, d.y_test)):
            keep = (y >= classes[0]) & (y <= classes[-1])
            parts += [x[keep].flatten(1), y[keep] - classes[0]]
        out[task] = tuple(parts)
    return out


def bn_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if bnr.is_batchnorm(m)]


def _sgd(model: nn.Module, params, x, y, steps: int, seed: int, bn_eval: bool = False) -> nn.Module:
    """Plain mini-batch SGD (lr :data:`LR`, batch :data:`BATCH`, batches drawn by ``seed``) on
    ``params``; the model in train mode, with its BN layers put in eval mode if ``bn_eval``."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(params, lr=LR)
    for _ in range(steps):
        model.train()
        if bn_eval:
            for m in bn_modules(model):
                m.eval()
        idx = torch.randint(0, len(x), (BATCH,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def train_mlp(x, y, steps: int, seed: int, momentum: float | None = 0.1) -> nn.Module:
    """A BN-MLP (784-64-64-64-5, sigmoid as in d2l) trained by :func:`_sgd`; ``momentum`` of its BN layers
    (0: the running statistics never move, as Slim's without its ``UPDATE_OPS``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MLP(x.shape[1], HIDDEN, num_classes=int(y.max()) + 1, norm="bn", activation=ACTIVATION)
    for m in bn_modules(model):
        m.momentum = momentum
    return _sgd(model, model.parameters(), x, y, steps, seed)


@torch.no_grad()
def accuracy(model: nn.Module, x, y, batch_stats: bool = False) -> float:
    """Test accuracy in eval mode (running statistics) or, with ``batch_stats``, in training mode
    (statistics of each batch of :data:`BATCH`, as the training loop sees them) on a copy, so the
    model's running statistics are untouched."""
    if not batch_stats:
        return (model.eval()(x).argmax(1) == y).float().mean().item()
    net = copy.deepcopy(model).train()
    n = len(x) - len(x) % BATCH
    return (torch.cat([net(x[i:i + BATCH]) for i in range(0, n, BATCH)]).argmax(1) == y[:n]).float().mean().item()


def update_ops_pitfall(data: dict, steps: int, seed: int) -> dict:
    """Task A trained from the same start on the same batches with three BN ``momentum`` values
    (:data:`VARIANTS`): 0.1 (PyTorch's default; ``fixed``), 0 (the running statistics never move,
    as Slim's without its ``UPDATE_OPS``; ``no_updates``) and 0.001 (Slim's default ``decay``
    0.999; ``decay_0.999``). Returns the ``fixed`` and
    ``no_updates`` models, each variant's eval-mode test accuracy (``eval_<variant>``), the
    train-mode (batch-statistics) accuracy ``batch`` and ``weight_diff``, the largest
    difference between any variant's weights and the fixed model's (0: the running statistics
    never feed back into training, so all three train the same weights)."""
    x, y, xt, yt = data["A"]
    models = {name: train_mlp(x, y, steps, seed, momentum) for name, momentum in VARIANTS.items()}
    fixed = models["fixed"]
    weights = max((a - b).abs().max().item() for m in models.values()
                  for a, b in zip(fixed.parameters(), m.parameters()))
    return {"fixed": fixed, "no_updates": models["no_updates"], "weight_diff": weights,
            "batch": accuracy(fixed, xt, yt, True),
            **{f"eval_{name}": accuracy(m, xt, yt) for name, m in models.items()}}


def saver_pitfall(model: nn.Module, xt, yt) -> dict:
    """``model`` saved two ways and loaded into a fresh copy: its ``named_parameters()`` (a Saver
    over the trainable variables) and its ``state_dict()``. Returns the eval accuracies and the
    largest logit difference of each restored model from ``model``."""
    out = {"eval_original": accuracy(model, xt, yt)}
    for name, checkpoint in (("params_only", dict(model.named_parameters())), ("state_dict", model.state_dict())):
        restored = copy.deepcopy(model)
        for m in bn_modules(restored):
            m.reset_running_stats()           # what a fresh model starts with
        restored.load_state_dict({k: v.clone() for k, v in checkpoint.items()}, strict=False)
        with torch.no_grad():
            out[f"logit_dev_{name}"] = (restored.eval()(xt) - model.eval()(xt)).abs().max().item()
        out[f"eval_{name}"] = accuracy(restored, xt, yt)
    return out


def _stats(model):
    return torch.cat([torch.cat([m.running_mean, m.running_var]) for m in bn_modules(model)])


def freezing_pitfall(pretrained: nn.Module, data: dict, steps: int, seed: int) -> dict:
    """Fine-tune a new 5-class head on task B on top of ``pretrained``'s body (all but its last
    layer), frozen with ``requires_grad=False``: ``"requires_grad"`` leaves the BN layers in
    train mode (PyTorch's default; TF1's ``trainable=False``), ``"bn_eval"`` also puts them in
    eval mode at every step (TF2's ``trainable=False``, i.e. ``training=False`` too). Per
    variant: ``stats_change`` (relative change of the body's running statistics, norm of the
    difference over norm before), ``logit_dev_A`` (largest change of the original model's
    eval-mode task-A logits), ``eval_A`` (its task-A accuracy afterwards; ``eval_A_before``
    before) and ``eval_B`` (the new model's task-B accuracy)."""
    xa, ya = data["A"][2], data["A"][3]
    x, y, xt, yt = data["B"]
    with torch.no_grad():
        before, logits = _stats(pretrained), pretrained.eval()(xa)
    out = {"eval_A_before": accuracy(pretrained, xa, ya)}
    for variant in ("requires_grad", "bn_eval"):
        original = copy.deepcopy(pretrained)
        body = nn.Sequential(*list(original)[:-1])  # shares its modules with `original`
        for p in body.parameters():
            p.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1000)
            head = nn.Linear(original[-1].in_features, 5)
        new = nn.Sequential(body, head)
        _sgd(new, head.parameters(), x, y, steps, seed + 1000, bn_eval=variant == "bn_eval")
        with torch.no_grad():
            out[variant] = {"stats_change": ((_stats(original) - before).norm() / before.norm()).item(),
                            "logit_dev_A": (original.eval()(xa) - logits).abs().max().item(),
                            "eval_A": accuracy(original, xa, ya), "eval_B": accuracy(new, xt, yt)}
    return out


def pitfall_numbers(profile: str = "cpu", seeds=(0, 1, 2), data: dict | None = None) -> list[dict]:
    """The three pitfalls for each of ``seeds`` at ``profile`` (:data:`PITFALL_STEPS`), as
    numbers only (no models): one dict per seed with keys ``update_ops``, ``saver``, ``freezing``."""
    data = data or pitfall_data()
    steps, out = PITFALL_STEPS[profile], []
    for seed in seeds:
        ops = update_ops_pitfall(data, steps, seed)
        out.append({"seed": seed,
                     "update_ops": {k: v for k, v in ops.items() if k not in ("fixed", "no_updates")},
                     "saver": saver_pitfall(ops["fixed"], *data["A"][2:]),
                     "freezing": freezing_pitfall(ops["fixed"], data, steps // 3, seed)})
    return out


def pitfall_values(runs: list[dict], profile: str) -> dict:
    """Per-seed values of the chapter's pitfall checks, by claim id, from :func:`pitfall_numbers`
    ``runs``, each with a line describing the runs (``(values, scale)``)."""
    ops, saver, frz = ([r[k] for r in runs] for k in ("update_ops", "saver", "freezing"))
    scale = (f"{profile} profile: BN-MLP (sigmoid), 5 Fashion-MNIST classes, {PITFALL_STEPS[profile]} SGD "
             f"steps, {len(runs)} seeds")
    return {"no-update-ops-collapses": ([o["eval_fixed"] - o["eval_no_updates"] for o in ops], scale),
            "update-ops-fix": ([o["batch"] - o["eval_fixed"] for o in ops], scale),
            "saver-trainable-only": ([s["eval_original"] - s["eval_params_only"] for s in saver], scale),
            "saver-state-dict": ([s["logit_dev_state_dict"] for s in saver], scale),
            "requires-grad-false-moves-stats": ([f["requires_grad"]["stats_change"] for f in frz], scale),
            "trainable-false-is-eval": ([max(f["bn_eval"]["stats_change"], f["bn_eval"]["logit_dev_A"])
                                         for f in frz], scale)}
