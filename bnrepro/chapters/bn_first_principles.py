"""The chapter "Batch normalization from first principles": its runs, checks and claims.

``book/bn_first_principles.ipynb`` derives BN from scratch and demonstrates each point
inline. This module recomputes every number its claims table needs with the package's
own code (:mod:`bnrepro.nn.batchnorm` against PyTorch, :mod:`bnrepro.measure`, the stored
``bn_inference`` runs: :func:`load`, :func:`checkpoint_table`, :func:`gap_summary`) and
:func:`score` scores them by the rules of :data:`SPECS`, fixed before computing; the
chapter and the scorecard (:func:`claims`) run the same code. The checks use the
chapter's shapes and seeds; the global random state is left as it was.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.claims import CHECK, EMPIRICAL, EXACT, Claim, ClaimSpec, at_least, at_most, between
from ..core.device import cpu_threads
from ..core.store import Result
from ..experiments.bn_inference import CLAIMS as INFERENCE_CLAIMS
from ..experiments.bn_inference import EARLY_STEPS, LATE_FRACTION, sweep
from ..measure.bias_explosion import bias_numbers
from ..measure.feature_scaling import best_scaling_losses
from ..measure.pitfalls import keras_deviation, pitfall_numbers, pitfall_values, running_var_gap
from ..measure.speed import bn_speed
from ..nn import batchnorm as bnr
from ..runner import load_or_run

SHAPES = ((32, 5), (16, 3, 6, 6))        # a fully connected and a convolutional activation
SCALES = (0.01, 0.1, 10.0, 1000.0)       # the a of Section 3.3's BN((aW)u) = BN(Wu)
SPEED_SHAPE = (64, 32, 28, 28)           # a convolution-sized activation (batch 64, 32 channels)
DRAW_SEEDS = (0, 1, 2)                   # seeds of the random problems (bias explosion, feature scaling)


def max_abs(a, b) -> float:  # largest absolute difference between two tensors, as a float
    return (a - b).abs().max().item()


def max_dev(a, b) -> float:
    """Largest absolute difference, divided by the largest |entry| of the reference ``b``
    when that exceeds 1 (float32 rounding grows with the size of the numbers)."""
    return max_abs(a, b) / max(1.0, b.abs().max().item())


def _grads(forward, X, gamma, beta, dY):
    X, gamma, beta = (t.detach().clone().requires_grad_() for t in (X, gamma, beta))
    return torch.autograd.grad(forward(X, gamma, beta), (X, gamma, beta), dY)


def _definition_bn(X, gamma, beta, eps=1e-5):
    """Algorithm 1 written out in tensor ops, for autograd to differentiate."""
    dims, shape = (0,) + tuple(range(2, X.dim())), (1, -1) + (1,) * (X.dim() - 2)
    mean = X.mean(dims, keepdim=True)
    var = ((X - mean) ** 2).mean(dims, keepdim=True)
    return gamma.view(shape) * (X - mean) / torch.sqrt(var + eps) + beta.view(shape)


def _package_bn(X, gamma, beta):
    return bnr.batch_norm(X, None, None, gamma, beta, training=True)


def _torch_bn(X, gamma, beta):
    return F.batch_norm(X, None, None, gamma, beta, training=True)


def _gradient_inputs(shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    kw = {"generator": g, "dtype": torch.float64}
    X, dY = torch.randn(shape, **kw) * 3 + 2, torch.randn(shape, **kw)
    return X, torch.rand(shape[1], **kw) + 0.5, torch.randn(shape[1], **kw), dY


def backward_deviation() -> float:
    """Sec. 3: the package's closed-form backward vs autograd through Alg. 1 and PyTorch (float64)."""
    worst = 0.0
    for shape in SHAPES:
        X, gamma, beta, dY = _gradient_inputs(shape)
        ours = _grads(_package_bn, X, gamma, beta, dY)
        for ref in (_definition_bn, _torch_bn):
            worst = max(worst, *(max_abs(a, b) for a, b in zip(ours, _grads(ref, X, gamma, beta, dY))))
    return worst


def _functional_deviation(shape, steps=5, seed=0) -> float:
    """batch_norm vs F.batch_norm: outputs, running stats over ``steps`` batches + 1 in eval, float32."""
    g = torch.Generator().manual_seed(seed)
    C = shape[1]
    gamma, beta = torch.rand(C, generator=g) + 0.5, torch.randn(C, generator=g)
    ref, ours = (torch.zeros(C), torch.ones(C)), (torch.zeros(C), torch.ones(C))
    worst = 0.0
    for step in range(steps + 1):
        training = step < steps
        X = torch.randn(shape, generator=g) * 3 + 2
        y_ref = F.batch_norm(X, *ref, gamma, beta, training=training)
        y = bnr.batch_norm(X, *ours, gamma, beta, training=training)
        worst = max(worst, max_dev(y, y_ref), *(max_dev(a, b) for a, b in zip(ours, ref)))
    return worst


def _module_deviation(shape, steps=4, seed=2) -> float:
    """bnrepro.nn.batchnorm.BatchNorm vs nn.BatchNorm1d/2d, trained side by side, then in eval mode."""
    g = torch.Generator().manual_seed(seed)
    ref = (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d)(shape[1])
    ours = bnr.BatchNorm(shape[1])
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5, generator=g)
        ref.bias.normal_(generator=g)
    ours.load_state_dict(ref.state_dict())
    worst = 0.0
    for step in range(steps + 1):
        ref.train(step < steps)
        ours.train(step < steps)
        X = (torch.randn(shape, generator=g) * 3 + 2).requires_grad_()
        dY = torch.randn(shape, generator=g)
        outs = [m(X) for m in (ref, ours)]
        grads = [torch.autograd.grad(y, (X, m.weight, m.bias), dY) for y, m in zip(outs, (ref, ours))]
        worst = max(worst, max_dev(outs[1], outs[0]), *(max_dev(b, a) for a, b in zip(*grads)),
                    max_dev(ours.running_mean, ref.running_mean),
                    max_dev(ours.running_var, ref.running_var))
    return worst


def package_deviation() -> float:
    """bnrepro.nn.batchnorm vs PyTorch in float32 (``max_dev``): functional form, gradients, module."""
    grads = max(max_dev(a, b) for shape in SHAPES
                for a, b in zip(*(_grads(f, *(t.float() for t in _gradient_inputs(shape)))
                                  for f in (_package_bn, _torch_bn))))
    return max(grads, *(_functional_deviation(s) for s in SHAPES), *(_module_deviation(s) for s in SHAPES))


def conv_fc_deviation(seed: int = 0) -> float:
    """Section 3.2: a 1x1 convolution + BatchNorm2d equals Linear + BatchNorm1d with every
    pixel moved into the batch (outputs, weight gradients, running statistics; max_dev)."""
    N, C_in, C_out, H, W = 8, 3, 4, 5, 6
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        X = torch.randn(N, C_in, H, W) * 2 + 1
        conv, bn2d = nn.Conv2d(C_in, C_out, kernel_size=1), nn.BatchNorm2d(C_out)
        linear, bn1d = nn.Linear(C_in, C_out), nn.BatchNorm1d(C_out)
        with torch.no_grad():
            linear.weight.copy_(conv.weight.view(C_out, C_in))
            linear.bias.copy_(conv.bias)
        Y_conv = bn2d(conv(X))
        pixels = X.permute(0, 2, 3, 1).reshape(N * H * W, C_in)
        Y_fc = bn1d(linear(pixels)).reshape(N, H, W, C_out).permute(0, 3, 1, 2)
        dY = torch.randn_like(Y_conv)
    g_conv = torch.autograd.grad(Y_conv, conv.weight, dY)[0].view(C_out, C_in)
    g_fc = torch.autograd.grad(Y_fc, linear.weight, dY)[0]
    return max(max_dev(Y_fc, Y_conv), max_dev(g_fc, g_conv),
               max_dev(bn1d.running_mean, bn2d.running_mean), max_dev(bn1d.running_var, bn2d.running_var))


def scale_invariance(seed: int = 0) -> dict[str, float]:
    """Section 3.3 for eps = 0, float64, a in :data:`SCALES`: the largest relative deviation of
    BN((aW)u) from BN(Wu) (``output``), of its Jacobian in u (``jacobian``), and of
    a * dl/d(aW) from dl/dW (``gradient``), for a loss linear in the BN outputs."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(32, 10, generator=g, dtype=torch.float64) * 2 + 1
    W = torch.randn(5, 10, generator=g, dtype=torch.float64)
    c = torch.randn(32, 5, generator=g, dtype=torch.float64)

    def bn_of(weight, inputs):
        return bnr.batch_norm(inputs @ weight.T, None, None, training=True, eps=0.0)

    def loss_grad(weight):
        weight = weight.detach().clone().requires_grad_()
        return torch.autograd.grad((c * bn_of(weight, u)).sum(), weight)[0]

    def rel(a, b):
        return max_abs(a, b) / b.abs().max().item()

    jacobian = torch.autograd.functional.jacobian
    jac_ref, grad_ref = jacobian(lambda v: bn_of(W, v), u), loss_grad(W)
    return {"output": max(rel(bn_of(a * W, u), bn_of(W, u)) for a in SCALES),
            "jacobian": max(rel(jacobian(lambda v: bn_of(a * W, v), u), jac_ref) for a in SCALES),
            "gradient": max(rel(a * loss_grad(a * W), grad_ref) for a in SCALES)}


# ------------------------------------------------------------------ the bn_inference runs (part 3)
def load(profile: str, device=None, verbose: bool = True) -> list[Result]:
    """Every run of the ``bn_inference`` sweep, from the results store (run if missing)."""
    return [load_or_run(cfg, device=device, verbose=verbose) for cfg in sweep(profile)]


def checkpoint_table(results: list[Result]):
    """One row per (run, checkpoint): lr, seed, step, the three accuracies and losses, and
    ``gap`` = accuracy with population statistics minus with running averages."""
    import pandas as pd

    ckpt = pd.DataFrame([{"lr": r.config["lr"], "seed": r.config["seed"],
                          **{k: v for k, v in c.items() if k != "layers"}}
                         for r in results for c in r["checkpoints"]])
    ckpt["gap"] = ckpt["acc_population"] - ckpt["acc_running"]
    return ckpt


def gap_summary(ckpt):
    """Per learning rate: the early gap, the late gap (mean over each run's late checkpoints,
    then over seeds), the share of late checkpoints with a positive gap, and the spread
    (std) of the late test accuracy of one run with each kind of statistics."""
    import pandas as pd

    early = ckpt[ckpt["step"] <= EARLY_STEPS]
    late = ckpt[ckpt["step"] >= LATE_FRACTION * ckpt["step"].max()]
    per_run = late.groupby(["lr", "seed"]).agg(
        late_gap=("gap", "mean"), positive=("gap", lambda g: (g > 0).mean()),
        std_running=("acc_running", "std"), std_population=("acc_population", "std"))
    return pd.DataFrame({
        "early gap (steps <= 10)": early.groupby("lr")["gap"].mean(),
        "late gap (steps >= 20% of run)": per_run.groupby("lr")["late_gap"].mean(),
        "share of late checkpoints with gap > 0": per_run.groupby("lr")["positive"].mean(),
        "late accuracy std, running": per_run.groupby("lr")["std_running"].mean(),
        "late accuracy std, population": per_run.groupby("lr")["std_population"].mean(),
    })


def per_run_gaps(ckpt):
    """One row per run (lr, seed): its early gap and its late gap (means over its checkpoints)."""
    import pandas as pd

    early = ckpt[ckpt["step"] <= EARLY_STEPS].groupby(["lr", "seed"])["gap"].mean()
    late = ckpt[ckpt["step"] >= LATE_FRACTION * ckpt["step"].max()].groupby(["lr", "seed"])["gap"].mean()
    return pd.DataFrame({"early": early, "late": late}).reset_index()


def gap_numbers(ckpt) -> dict[str, float]:
    """The early gap over every run; late gap, share of positive late gaps and late accuracy
    spreads at lr 1.0 (``*_high``) and lr 0.1 (``*_low``)."""
    gaps = gap_summary(ckpt)
    late = "late gap (steps >= 20% of run)"
    return {"early_gap": float(ckpt.loc[ckpt["step"] <= EARLY_STEPS, "gap"].mean()),
            "late_gap_high": float(gaps.loc[1.0, late]), "late_gap_low": float(gaps.loc[0.1, late]),
            "late_pos_high": float(gaps.loc[1.0, "share of late checkpoints with gap > 0"]),
            "std_run": float(gaps.loc[1.0, "late accuracy std, running"]),
            "std_pop": float(gaps.loc[1.0, "late accuracy std, population"])}


def measure_speed(profile: str) -> dict:
    """:func:`bnrepro.measure.speed.bn_speed` on :data:`SPEED_SHAPE`, one thread, about a second."""
    return bn_speed(shape=SPEED_SHAPE, repeats=10 if profile == "smoke" else 20, warmup=3, threads=1)


def quantities(profile: str, device=None, speed: dict | None = None, pitfalls: list | None = None) -> dict:
    """Every number the claims read (some seconds on a CPU, plus the ``bn_inference`` sweep
    if it is not stored). ``speed``: a :func:`measure_speed` result to reuse (the chapter
    passes the one it shows), else measured here; ``pitfalls`` likewise, a
    :func:`~bnrepro.measure.pitfalls.pitfall_numbers` result. Random problems are solved and the
    pitfalls' nets trained for each of :data:`DRAW_SEEDS` (lists, one value per seed)."""
    inference = load(profile, device, verbose=False)
    ckpt = checkpoint_table(inference)
    runs = per_run_gaps(ckpt)
    q = {"speed": speed or measure_speed(profile), **gap_numbers(ckpt),
         "early_gaps": list(runs["early"]),
         "late_gaps_high": list(runs.loc[runs["lr"] == 1.0, "late"]),
         "late_gaps_low": list(runs.loc[runs["lr"] == 0.1, "late"])}
    with cpu_threads():
        q.update(derivation_dev=backward_deviation(), package_dev=package_deviation(),
                 conv_fc_dev=conv_fc_deviation(), var_gap=running_var_gap(),
                 keras_dev=keras_deviation(), **{f"scale_{k}": v for k, v in scale_invariance().items()})
        bias = [bias_numbers(seed=seed) for seed in DRAW_SEEDS]
        best = [best_scaling_losses(seed=seed) for seed in DRAW_SEEDS]
        q["pitfalls"] = pitfalls or pitfall_numbers(profile, DRAW_SEEDS)
    q.update({k: [b[k] for b in bias] for k in bias[0]})
    q.update(raw_over_std=[b["raw"] / b["standardized"] for b in best],
             raw_over_bn=[b["raw"] / b["bn"] for b in best])
    return q


_F64 = "an identity: float64 rounding is about 1e-16 per operation, far below 1e-10"
_F32 = "an identity: float32 rounding (relative to the largest entry) stays below 1e-5"
_COLLAPSE = "with (0, 1) statistics each layer sees mis-scaled inputs: 0.3 is most of the way from 0.85 to chance (0.2)"
_SAME = "a restored copy or a frozen body: nothing may change; 1e-6 leaves room for float32 rounding only"
_SLIM, _TRAINABLE = "Slim batch_norm: UPDATE_OPS", "About setting layer.trainable = False on a BatchNormalization layer"
#: The claims computed live in this chapter (no stored run), in table order; the
#: bn_inference claims (registered by the experiment) follow them in :data:`SPECS`.
LIVE = {s.id: s for s in (
    ClaimSpec("backward-equations", CHECK, "the backward equations give the true gradient (max abs dev. "
              "from autograd and PyTorch, float64)", "exact", at_most(1e-10), _F64, source="ioffe2015batch",
              where="Sec. 3", fmt="{:.1e}"),
    ClaimSpec("package-equals-pytorch", CHECK, "bnrepro BN equals PyTorch BN: outputs, gradients, running "
              "stats (max_dev, float32)", "equal", at_most(1e-5), _F32, source="pytorch_batchnorm",
              where="BatchNorm1d/BatchNorm2d", fmt="{:.1e}"),
    ClaimSpec("conv-1x1-is-fc", CHECK, "1x1 conv + BN2d = pixels-as-batch Linear + BN1d (max_dev, float32)",
              "equal", at_most(1e-5), _F32, source="ioffe2015batch", where="Sec. 3.2", fmt="{:.1e}"),
    ClaimSpec("scale-invariance-output", CHECK, "BN((aW)u) = BN(Wu), eps = 0 (max relative dev., "
              "a = 0.01..1000)", "exact", at_most(1e-10), _F64, source="ioffe2015batch", where="Sec. 3.3",
              fmt="{:.1e}"),
    ClaimSpec("scale-invariance-jacobian", CHECK, "dBN((aW)u)/du = dBN(Wu)/du (max relative dev.)", "exact",
              at_most(1e-10), _F64, source="ioffe2015batch", where="Sec. 3.3", fmt="{:.1e}"),
    ClaimSpec("gradient-scales-1/a", CHECK, "dl/d(aW) = (1/a) dl/dW (max relative dev.)", "exact",
              at_most(1e-10), _F64, source="ioffe2015batch", where="Sec. 3.3", fmt="{:.1e}"),
    ClaimSpec("bias-grows-outside-gradient", EXACT, "normalizing outside the gradient: b grows without "
              "bound (||b_T|| / ||b_T/2||, 3 random problems)", "grows indefinitely", at_least(1.5, null=1.0),
              "linear growth gives 2, a bounded bias about 1: at least 1.5; partly if it grows at all",
              source="ioffe2015batch", where="Sec. 2", fmt="{:.2f}"),
    ClaimSpec("loss-fixed-while-b-grows", EXACT, "... while a bias step leaves the loss unchanged (max |loss "
              "change|, 3 random problems)", "no change", at_most(1e-10), _F64, source="ioffe2015batch",
              where="Sec. 2", fmt="{:.1e}"),
    ClaimSpec("bias-bounded-inside-gradient", EXACT, "normalization inside the gradient: b does not move "
              "(range of ||b||, 3 random problems)", "bounded", at_most(1e-10), _F64, source="ioffe2015batch",
              where="Sec. 2", fmt="{:.1e}"),
    ClaimSpec("standardizing-speeds-up", EMPIRICAL, "whitened (standardized) inputs converge faster: best raw "
              "loss / best standardized loss after 300 SGD steps, per seed", "faster",
              at_least(10, null=1.0), "an order of magnitude lower loss at the same budget; partly if lower "
              "at all", source="ioffe2015batch", where="Sec. 2 (citing LeCun et al. 1998)", fmt="{:.0f}"),
    ClaimSpec("bn-fixes-scaling", EMPIRICAL, "a BN layer in front fixes the badly scaled input: best raw loss "
              "/ best BN loss after 300 SGD steps, per seed", "faster", at_least(10, null=1.0),
              "an order of magnitude lower loss at the same budget; partly if lower at all",
              source="ioffe2015batch", where="Sec. 3 (normalizing each layer's inputs)", fmt="{:.0f}"),
    ClaimSpec("running-var-unbiased", CHECK, "running_var stores the unbiased variance m/(m-1) σ_B² "
              "(max abs dev., m = 8)", "unbiased", at_most(1e-5), _F32, source="pytorch_batchnorm",
              where="running_var (unbiased estimator); Alg. 2 of ioffe2015batch", fmt="{:.1e}"),
    ClaimSpec("pytorch-0.1-is-keras-0.9", CHECK, "PyTorch momentum 0.1 = Keras momentum 0.9 (max abs dev. of "
              "running stats, 200 batches)", "equal", at_most(1e-5), _F32, source="keras_batchnorm",
              where="momentum: moving_mean = moving_mean * momentum + mean(batch) * (1 - momentum)",
              fmt="{:.1e}"),
    ClaimSpec("no-update-ops-collapses", CHECK, "running stats never updated (Slim without UPDATE_OPS; "
              "PyTorch momentum 0): eval accuracy lost vs the same weights with updates", "collapses",
              at_least(0.3), _COLLAPSE, source="seed_feature_scaling", where=_SLIM, post_hoc=True),
    ClaimSpec("update-ops-fix", CHECK, "with the updates (momentum 0.1): train-mode (batch stats) minus eval "
              "accuracy", "≈ 0", between(-0.1, 0.1), "the running averages trail the weights by a few steps "
              "(Sec. 3 above): well under 0.1, against about 0.6 without updates", source="seed_feature_scaling",
              where=_SLIM, post_hoc=True),
    ClaimSpec("saver-trainable-only", CHECK, "checkpoint of the trainable variables only (PyTorch: "
              "named_parameters()): eval accuracy lost after loading", "collapses", at_least(0.3), _COLLAPSE,
              source="seed_feature_scaling", where="TF1 Saver over tf.trainable_variables()", post_hoc=True),
    ClaimSpec("saver-state-dict", CHECK, "checkpoint of state_dict() (buffers included): max |logit change| "
              "after loading", "0", at_most(1e-6), _SAME, source="pytorch_batchnorm",
              where="running_mean, running_var: buffers", fmt="{:.1e}"),
    ClaimSpec("requires-grad-false-moves-stats", CHECK, "requires_grad=False alone (BN in train mode, like TF1's "
              "trainable=False): relative change of the frozen body's running stats in fine-tuning", "moves",
              at_least(0.1), "frozen should mean 0; a tenth of their norm is a plain move", post_hoc=True,
              source="keras_batchnorm", where=_TRAINABLE, fmt="{:.2f}"),
    ClaimSpec("trainable-false-is-eval", CHECK, "requires_grad=False + BN eval() (TF2's trainable=False): change "
              "of the body's stats and of the original logits", "0", at_most(1e-6), _SAME,
              source="keras_batchnorm", where=_TRAINABLE, fmt="{:.1e}"),
    ClaimSpec("bn-speed", CHECK, "package BN forward+backward time / PyTorch's (64x32x28x28, CPU)", "<= 2",
              at_most(2.0), "pure PyTorch code within twice the time of PyTorch's fused kernel: our "
              "engineering target", fmt="{:.2f}"),
)}
#: Every claim the chapter scores, in its table's order (the stored runs' claims before the speed).
SPECS = tuple(LIVE[i] for i in list(LIVE)[:-1]) + tuple(INFERENCE_CLAIMS.values()) + (LIVE["bn-speed"],)


def score(q: dict, profile: str) -> list[Claim]:
    """The chapter's claims: :func:`quantities` scored by the rules of :data:`SPECS`."""
    f64, f32 = "CPU, float64", "CPU, float32"
    lenet = (f"{profile} profile: BN-LeNet, Fashion-MNIST (pixels in [0, 1]), "
             f"{len(q['late_gaps_high'])} seeds per lr, one run each")
    lsq = f"least squares, feature mean 200, float32, {len(DRAW_SEEDS)} seeds"
    bias = f"toy bias + mean subtraction, float64, {len(DRAW_SEEDS)} random problems"
    speed = q["speed"]
    threads = "one CPU thread" if speed["threads"] == 1 else f"{speed['threads']} CPU threads"
    values = {"backward-equations": (q["derivation_dev"], f64), "package-equals-pytorch": (q["package_dev"], f32),
        "conv-1x1-is-fc": (q["conv_fc_dev"], f32), "scale-invariance-output": (q["scale_output"], f64),
        "scale-invariance-jacobian": (q["scale_jacobian"], f64),
        "gradient-scales-1/a": (q["scale_gradient"], f64), "bias-grows-outside-gradient": (q["growth"], bias),
        "loss-fixed-while-b-grows": (q["loss_move_from_b"], bias),
        "bias-bounded-inside-gradient": (q["b_change_inside"], bias),
        "standardizing-speeds-up": (q["raw_over_std"], lsq), "bn-fixes-scaling": (q["raw_over_bn"], lsq),
        "running-var-unbiased": (q["var_gap"], "m = 8, float32"),
        "pytorch-0.1-is-keras-0.9": (q["keras_dev"], "float32, 1000 channels"),
        "running-stats-warm-up": (q["early_gaps"], lenet.replace("seeds per lr", "seeds per lr, both lrs")),
        "running-stats-trail-at-lr-1": (q["late_gaps_high"], lenet),
        "running-stats-fine-at-lr-0.1": (q["late_gaps_low"], lenet),
        **pitfall_values(q["pitfalls"], profile),
        "bn-speed": (speed["ratio"], f"{threads}, timed when the claims are computed")}
    return [spec.score(*values[spec.id]) for spec in SPECS]


def claims(profile: str, device=None) -> list[Claim]:
    """The chapter's claims at ``profile``: the scorecard's entry point (the chapter itself
    calls ``score(quantities(profile, device, speed), profile)`` with the speed it shows)."""
    return score(quantities(profile, device), profile)
