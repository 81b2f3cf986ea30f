"""The BN-training experiment (Ioffe & Szegedy Figure 1, lr claims, d2l exercises) and train()'s step evals."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from bnrepro import scorecard
from bnrepro.chapters import bn_training as chapter
from bnrepro.chapters.bn_training import median_drift, outcome, steps_to_reach
from bnrepro.core.claims import VERDICTS, Claim
from bnrepro.core.config import ConfigError
from bnrepro.core.store import Result
from bnrepro.data.datasets import DataNotFoundError, TensorData
from bnrepro.experiments import bn_training as bt
from bnrepro.experiments.bn_training import BNTrainingConfig, SigmoidInputProbe, build_network, hidden_blocks
from bnrepro.nn.batchnorm import BatchNorm
from bnrepro.training.loop import evaluate, train
from conftest import needs_fashion_mnist


def toy_data(n=600, n_test=200, seed=0):
    """Ten Gaussian blobs as 1x28x28 'images': a small MLP separates them."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(10, 784, generator=g)
    y = torch.randint(0, 10, (n + n_test,), generator=g)
    x = (centres[y] + 0.5 * torch.randn(n + n_test, 784, generator=g)).view(-1, 1, 28, 28)
    return TensorData("toy", x[:n], y[:n], x[n:], y[n:], [str(i) for i in range(10)], "generated",
                      (0.0,), (1.0,))


def small_cfg(**kw):
    return BNTrainingConfig(**{"width": 16, "steps": 30, "eval_every": 10, "probe_every": 5,
                               "probe_size": 50, "probe_units": 4, **kw})


# ----------------------------------------------------------------- train(eval_every_steps=...)

def test_step_evals_at_zero_every_k_and_at_the_end():
    torch.manual_seed(0)
    model = build_network(small_cfg())
    data = toy_data()
    hist = train(model, data, epochs=3, batch_size=60, lr=2.0, eval_every_steps=7, eval_every_epoch=False)
    assert hist.total_steps == 30  # 600 / 60 = 10 steps per epoch
    assert [e["step"] for e in hist.evals] == [0, 7, 14, 21, 28, 30]
    assert hist.evals[0]["test_acc"] < 0.5 < hist.evals[-1]["test_acc"]
    # the last record is the final model, evaluated independently here
    assert hist.evals[-1]["test_acc"] == evaluate(model, data.x_test, data.y_test)["acc"]
    assert hist.evals[-1]["test_acc"] == hist.final("test_acc")


def test_step_evals_off_by_default_and_epochs_unchanged():
    data = toy_data()
    hists = []
    for every in (None, 4):
        torch.manual_seed(1)
        hists.append(train(build_network(small_cfg()), data, epochs=2, batch_size=60, lr=0.5,
                           eval_every_steps=every))
    assert hists[0].evals == [] and len(hists[1].evals) == 1 + 5  # steps 0, 4, ..., 20
    # evaluating in between (eval mode, no grad) does not change the training trajectory
    assert hists[0].epochs == [{**e} for e in hists[1].epochs]
    assert hists[0].steps == hists[1].steps


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_eval_every_steps_names_the_argument(bad):
    with pytest.raises(ValueError, match="eval_every_steps"):
        train(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), toy_data(), eval_every_steps=bad)


def test_no_step_eval_after_divergence():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))
    hist = train(model, toy_data(), epochs=3, batch_size=60, lr=1e20, eval_every_steps=5)
    assert hist.diverged
    assert [e["step"] for e in hist.evals] == [0]  # nothing evaluated after the NaN


# ----------------------------------------------------------------- the config

@pytest.mark.parametrize("kw,field", [
    ({"norm": "layer"}, "norm"), ({"depth": 0}, "depth"), ({"init_std": 0.0}, "init_std"),
    ({"bn_layers": (3,)}, "bn_layers"), ({"bn_layers": (0, 0)}, "bn_layers"),
    ({"norm": "none", "bn_layers": (0,)}, "bn_layers"),
    ({"norm": "none", "bias_before_bn": False}, "bias_before_bn"),
    ({"norm": "none", "frozen_affine": True}, "frozen_affine"),
    ({"dropout": 1.0}, "dropout"), ({"lr_mult": 0.0}, "lr_mult"), ({"lr": float("inf")}, "lr"),
    ({"batch_size": 1}, "batch_size"), ({"probe_units": 101}, "probe_units"),
    ({"eval_every": 0}, "eval_every"), ({"dataset": "imagenet"}, "dataset"),
    ({"model": "resnet"}, "model"), ({"init": "kaiming"}, "init"), ({"momentum": 1.0}, "momentum"),
    ({"model": "vgg", "dropout": 0.2}, "model"), ({"model": "vgg", "norm": "bn_mean_only"}, "norm"),
])
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(ConfigError, match=f"^{field}="):
        BNTrainingConfig(**kw)


def test_profiles_and_paper_settings():
    paper = BNTrainingConfig.for_profile("paper")
    # Section 4.1: MNIST, 3 x 100 sigmoid, batch 60, 50,000 steps
    assert (paper.dataset, paper.depth, paper.width, paper.activation, paper.batch_size, paper.steps) == \
        ("mnist", 3, 100, "sigmoid", 60, 50_000)
    assert BNTrainingConfig.for_profile("cpu").steps < paper.steps
    assert BNTrainingConfig(lr=0.5, lr_mult=30).effective_lr == pytest.approx(15.0)
    assert BNTrainingConfig(lr_mult=5).hash() == BNTrainingConfig(lr_mult=5.0).hash()
    assert BNTrainingConfig(bn_layers=[0]).hash() == BNTrainingConfig(bn_layers=(0,)).hash()


def test_sweep_is_unique_and_holds_figure_1(monkeypatch):
    monkeypatch.setattr(bt, "mnist_available", lambda: False)
    cfgs = bt.sweep("smoke")
    assert len({c.hash() for c in cfgs}) == len(cfgs)
    fig1 = bt.groups("smoke")["fig1"]
    assert {c.norm for c in fig1} == {"bn", "none"}
    assert all((c.model, c.depth, c.lr_mult, c.init, c.init_std, c.momentum) == ("mlp", 3, 1.0, "normal", 0.01, 0.0)
               for c in fig1)
    assert all(c.dataset == "fashion-mnist" for c in cfgs)
    vgg = bt.groups("smoke")["vgg_lr"]
    assert {(c.norm, c.lr_mult) for c in vgg} == {(n, m) for n in ("bn", "none") for m in (1, 5, 30)}
    assert all((c.model, c.lr, c.momentum) == ("vgg", 0.01, 0.9) for c in vgg)  # VGG's own lr, momentum
    deep = bt.groups("smoke")["deep"] + bt.groups("smoke")["deep_tiny"]
    assert {(c.norm, c.init, c.lr_mult) for c in deep} == {(n, i, m) for n in ("bn", "none")
                                                           for i, m in (("xavier", 1), ("xavier", 5),
                                                                        ("normal", 1))}
    assert all(c.depth == bt.DEEP_DEPTH for c in deep)


def test_dataset_prefers_mnist_when_present(monkeypatch):
    assert bt.chapter_dataset("paper") == "mnist"
    monkeypatch.setattr(bt, "mnist_available", lambda: True)
    assert bt.chapter_dataset("cpu") == "mnist"
    monkeypatch.setattr(bt, "mnist_available", lambda: False)
    assert bt.chapter_dataset("cpu") == "fashion-mnist"

    def absent(*a, **k):
        raise DataNotFoundError("no MNIST")

    monkeypatch.undo()
    monkeypatch.setattr(bt, "load_dataset", absent)
    assert bt.mnist_available() is False


# ----------------------------------------------------------------- the network variants

def test_build_network_variants():
    m = build_network(small_cfg(depth=3))
    blocks = hidden_blocks(m)
    assert len(blocks) == 3 and all(isinstance(m[n], nn.BatchNorm1d) for _, n, _ in blocks)
    assert all(m[lin].weight.std().item() == pytest.approx(0.01, rel=0.2) for lin, _, _ in blocks)

    m = build_network(small_cfg(bn_layers=(1,), bias_before_bn=False))
    kinds = [type(m[n]).__name__ for _, n, _ in hidden_blocks(m)]
    assert kinds == ["Identity", "BatchNorm1d", "Identity"]
    biases = [m[lin].bias is not None for lin, _, _ in hidden_blocks(m)]
    assert biases == [True, False, True]  # only the Linear before a BN loses its bias

    for mode in ("mean_only", "var_only"):
        m = build_network(small_cfg(norm=f"bn_{mode}"))
        assert all(isinstance(m[n], BatchNorm) and m[n].mode == mode for _, n, _ in hidden_blocks(m))

    m = build_network(small_cfg(init="xavier", depth=10))
    lins = [m[lin] for lin, _, _ in hidden_blocks(m)]
    assert all(torch.equal(x.bias, torch.zeros_like(x.bias)) for x in lins)
    # Xavier-uniform: std sqrt(2 / (fan_in + fan_out)); 16 -> 16 gives 0.25
    assert lins[5].weight.std().item() == pytest.approx(0.25, rel=0.25)

    m = build_network(small_cfg(dropout=0.2))
    kinds = [type(x).__name__ for x in m]
    assert kinds.count("Dropout") == 3
    assert all(kinds[i - 1] == "Sigmoid" for i, k in enumerate(kinds) if k == "Dropout")


def test_frozen_affine_stays_at_identity_through_training():
    torch.manual_seed(0)
    m = build_network(small_cfg(frozen_affine=True))
    w0 = m[1].weight.detach().clone()
    train(m, toy_data(), epochs=1, batch_size=60, lr=0.5)
    for _, n, _ in hidden_blocks(m):
        assert torch.equal(m[n].weight, torch.ones(16)) and torch.equal(m[n].bias, torch.zeros(16))
        assert m[n].running_var.ne(1).any()  # the running statistics still move
    assert not torch.equal(m[1].weight, w0)  # the rest of the network trains


def test_bias_before_bn_is_redundant_function_and_gradient():
    """Section 3.2: BN(Wu + b) = BN(Wu) in training, and dL/db = 0 (float64)."""
    torch.manual_seed(0)
    with_bias = build_network(small_cfg()).double()
    without = build_network(small_cfg(bias_before_bn=False)).double()
    without.load_state_dict({k: v for k, v in with_bias.state_dict().items() if k in without.state_dict()})
    with torch.no_grad():
        for lin, _, _ in hidden_blocks(with_bias):
            with_bias[lin].bias.normal_(0, 3.0)  # a large, arbitrary bias
    x = torch.randn(60, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (60,))
    out_b, out_0 = with_bias(x), without(x)
    assert (out_b - out_0).abs().max().item() < 1e-12
    nn.functional.cross_entropy(out_b, y).backward()
    for lin, _, _ in hidden_blocks(with_bias):
        assert with_bias[lin].bias.grad.abs().max().item() < 1e-12
        assert with_bias[lin].weight.grad.abs().max().item() > 1e-6  # the weights do get a gradient


# ----------------------------------------------------------------- the probe

def test_probe_percentiles_match_numpy_and_leave_bn_untouched():
    torch.manual_seed(0)
    m = build_network(small_cfg())
    data = toy_data()
    train(m, data, epochs=1, batch_size=60, lr=0.5)
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    probe = SigmoidInputProbe(m, data.x_test[:50], every=5, units=4)
    probe.record(0)
    assert m.training and all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    # independent truth: run the layers before the last sigmoid by hand, in eval mode
    m.eval()
    h = data.x_test[:50]
    last_act = hidden_blocks(m)[-1][2]
    with torch.no_grad():
        for layer in list(m)[:last_act]:
            h = layer(h)
    expected = np.percentile(h[:, :4].numpy(), [15, 50, 85], axis=0).T
    np.testing.assert_allclose(np.array(probe.values[0]), expected, atol=1e-4)
    assert probe.to_dict()["percentiles"] == [0.15, 0.5, 0.85]


def test_probe_callback_records_every_k_steps():
    torch.manual_seed(0)
    m = build_network(small_cfg())
    probe = SigmoidInputProbe(m, toy_data().x_test[:50], every=4, units=2)
    train(m, toy_data(), epochs=2, batch_size=60, lr=0.5, callbacks=[probe])
    assert probe.steps == [4, 8, 12, 16, 20]
    assert len(probe.values[0]) == 2 and len(probe.values[0][0]) == 3
    assert all(a <= b <= c for v in probe.values for a, b, c in v)


# ----------------------------------------------------------------- analysis helpers

def test_steps_to_reach_and_outcome():
    evals = [{"step": 0, "test_acc": 0.1}, {"step": 50, "test_acc": 0.84}, {"step": 100, "test_acc": 0.86}]
    assert steps_to_reach(evals, 0.85) == 100 and steps_to_reach(evals, 0.84) == 50
    assert steps_to_reach(evals, 0.9) is None
    hist = {"diverged": False, "evals": evals}
    assert outcome({"history": hist, "final_test_acc": 0.86}, 0.85) == "reached target"
    assert outcome({"history": hist, "final_test_acc": 0.86}, 0.9) == "below target"
    flat = {"diverged": False, "evals": [{"step": 0, "test_acc": 0.1}]}
    assert outcome({"history": flat, "final_test_acc": 0.1}, 0.85) == "no learning"
    assert outcome({"history": {"diverged": True, "evals": []}, "final_test_acc": None}, 0.85) == "diverged"


def test_median_drift_is_scale_free_and_ignores_the_first_half():
    steps = list(range(0, 110, 10))
    # unit 0: median jumps around early, then moves by exactly 1 over a width of 2
    still = [[[-1.0 + (5.0 if s < 50 else 0.0), 0.0 + (5.0 if s < 50 else 0.0) + (s >= 80),
               1.0 + (5.0 if s < 50 else 0.0)]] for s in steps]
    probe = {"steps": steps, "values": still}
    assert median_drift(probe) == pytest.approx(0.5)
    scaled = {"steps": steps, "values": [[[10 * v for v in unit] for unit in row] for row in still]}
    assert median_drift(scaled) == pytest.approx(0.5)
    assert math.isnan(median_drift({"steps": [], "values": []}))


def test_epochs_cover_the_steps():
    assert bt._epochs_for(10_000, 60_000, 60) == 10
    assert bt._epochs_for(1, 60_000, 60) == 1
    assert bt._epochs_for(150, 6000, 60) == 2
    assert bt._epochs_for(100, 121, 60) == 50  # 121 = 2 * 60 + 1: train() drops the batch of 1


@needs_fashion_mnist
def test_run_records_everything_and_restores_threads():
    threads = torch.get_num_threads()
    cfg = BNTrainingConfig(steps=20, eval_every=10, probe_every=10, probe_size=100, n_train=600,
                           n_test=200)
    res = bt.run(cfg, device="cpu")
    assert torch.get_num_threads() == threads
    assert [e["step"] for e in res["history"]["evals"]] == [0, 10, 20]
    assert res["probe"]["steps"] == [0, 10, 20] and len(res["probe"]["values"][0]) == cfg.probe_units
    assert res["final_test_acc"] == res["history"]["evals"][-1]["test_acc"]
    assert res["n_train"] == 600 and res["parameters"] == 784 * 100 + 3 * 100 * 2 + 2 * (100 * 100 + 100) \
        + 100 + 100 * 10 + 10


@needs_fashion_mnist
def test_vgg_run_trains_the_small_relu_vgg_without_a_probe():
    cfg = BNTrainingConfig(model="vgg", activation="relu", lr=0.01, momentum=0.9, batch_size=64, steps=6,
                           eval_every=3, n_train=256, n_test=128)
    res = bt.run(cfg, device="cpu")
    assert [e["step"] for e in res["history"]["evals"]] == [0, 3, 6]
    assert res["probe"]["steps"] == [] and res["parameters"] > 0
    model = bt.build_vgg(cfg)
    assert not any(isinstance(m, nn.Sigmoid) for m in model.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())



# ----------------------------------------------------------------- the claims (package code, as the scorecard)

CLAIM_IDS = ["bn-fewer-steps", "bn-higher-accuracy", "bn-stable-inputs", "sigmoid-without-bn-fails",
             "sigmoid-with-bn-trains", "bn-less-careful-init", "bn-x5-faster", "bn-x30-faster",
             "bn-x30-slower-than-x5", "bn-x30-ends-higher", "no-bn-fails-at-x5", "bias-gradient-zero",
             "bias-redundant", "bn-remove-dropout"]


def fake_result(cfg, final, reach=None, drift=0.0, diverged=False):
    """A stored-looking run: test accuracy 0.1 at step 0, 0.9 at ``reach`` (if given), ``final`` at the
    end; one probed unit whose median moves by ``drift`` x its 15-85 width in the second half."""
    evals = [{"step": 0, "test_acc": 0.1}] + ([{"step": reach, "test_acc": 0.9}] if reach else []) \
        + ([] if diverged else [{"step": cfg.steps, "test_acc": final}])
    probe = {"steps": [0, cfg.steps // 2, cfg.steps], "percentiles": [0.15, 0.5, 0.85],
             "values": [[[-1.0, 0.0, 1.0]], [[-1.0, 0.0, 1.0]], [[-1.0, 2.0 * drift, 1.0]]]}
    return Result(cfg.experiment, cfg.to_dict(),
                  {"history": {"diverged": diverged, "diverged_at_step": 5 if diverged else None,
                               "evals": evals}, "probe": probe,
                   "final_test_acc": None if diverged else final,
                   "best_test_acc": max(e["test_acc"] for e in evals)},
                  {"device": "synthetic", "wall_time_s": 0.0})


def synthetic_results(g):
    """Every run of the smoke sweep at 0.5 final accuracy, and a ``put`` that overrides matching runs."""
    results = {c.hash(): fake_result(c, final=0.5) for cfgs in g.values() for c in cfgs}

    def put(group, final, reach=None, drift=0.0, diverged=False, **where):
        hits = [c for c in g[group] if all(getattr(c, k) == v for k, v in where.items())]
        assert hits
        for c in hits:
            results[c.hash()] = fake_result(c, final, reach, drift, diverged)

    return results, put


def test_claims_on_synthetic_runs(monkeypatch):
    """Each claim reads the right runs and applies its rule: known inputs, hand-computed outputs."""
    monkeypatch.setattr(bt, "mnist_available", lambda: False)
    g = bt.groups("smoke")  # Fashion-MNIST: X = 0.80 (MLPs), 0.84 (VGG); budgets 100 and 40 steps
    assert chapter.TARGET_ACC["fashion-mnist"] == 0.80 and chapter.VGG_TARGET_ACC["fashion-mnist"] == 0.84
    results, put = synthetic_results(g)
    put("fig1", 0.88, reach=40, drift=0.1, norm="bn")       # Figure 1, with BN
    put("fig1", 0.86, reach=80, drift=0.3, norm="none")     # and without
    put("deep", 0.10, norm="none", lr_mult=1.0)
    put("deep", 0.12, norm="none", lr_mult=5.0)
    put("deep", 0.85, norm="bn", lr_mult=1.0)
    put("deep", 0.76, norm="bn", lr_mult=5.0)
    put("deep_tiny", 0.84, norm="bn")
    put("vgg_lr", 0.87, reach=30, norm="bn", lr_mult=1.0)
    put("vgg_lr", 0.88, reach=10, norm="bn", lr_mult=5.0)
    put("vgg_lr", 0.885, reach=20, norm="bn", lr_mult=30.0)
    put("vgg_lr", 0.0, diverged=True, norm="none", lr_mult=5.0)
    ablation = dict(zip((n for n, _ in bt.ablation_runs("smoke")), g["ablations"]))
    for name, final in (("no bias before BN", 0.878), ("BN + dropout 0.2", 0.90)):
        results[ablation[name].hash()] = fake_result(ablation[name], final, reach=40)

    got = {c.id: c for c in chapter.score(results, "smoke")}
    assert list(got) == CLAIM_IDS == [s.id for s in chapter.SPECS]
    expected = {  # id: per-seed values (one seed at smoke)
        "bn-fewer-steps": 80 / 40, "bn-higher-accuracy": 0.88 - 0.86, "bn-stable-inputs": 0.3 / 0.1,
        "sigmoid-without-bn-fails": 0.12, "sigmoid-with-bn-trains": 0.76 / 0.80,
        "bn-less-careful-init": 0.84 - 0.85, "bn-x5-faster": 30 / 10, "bn-x30-faster": 30 / 20,
        "bn-x30-slower-than-x5": 20 / 10, "bn-x30-ends-higher": 0.885 - 0.88, "no-bn-fails-at-x5": 1.0,
        "bias-redundant": 0.002, "bn-remove-dropout": 0.88 - 0.90,
    }
    for cid, value in expected.items():
        assert got[cid].values == pytest.approx((value,), abs=1e-9), cid
        assert got[cid].verdict == "inconclusive", cid  # one seed: no interval
    assert 0 <= got["bias-gradient-zero"].ours < 1e-12 and got["bias-gradient-zero"].verdict == "reproduced"
    assert got["bn-fewer-steps"].scale == ("smoke profile, 3x100 sigmoid MLP, fashion-mnist (6,000 training "
                                           "images), 100 steps, 1 seed, synthetic")
    assert got["bn-x5-faster"].scale.startswith("smoke profile, VGG (tiny), fashion-mnist (2,000 training "
                                                "images), 40 steps, 1 seed")
    # the scores' verdicts follow the registered rules on the interval of the values
    spec = {s.id: s for s in chapter.SPECS}
    assert spec["bn-fewer-steps"].score([2.5, 2.6, 2.7]).verdict == "reproduced"
    assert spec["bn-fewer-steps"].score([1.5, 1.6, 1.7]).verdict == "partly"
    assert spec["bn-higher-accuracy"].score([-0.02, -0.021, -0.019]).verdict == "not reproduced"  # never partly


def test_steps_to_x_is_inconclusive_when_x_is_not_below_every_plateau(monkeypatch):
    """A run that settles below X + margin makes every steps-to-X ratio of its arms NaN: inconclusive."""
    monkeypatch.setattr(bt, "mnist_available", lambda: False)
    g = bt.groups("smoke")
    results, put = synthetic_results(g)
    put("fig1", 0.88, reach=40, norm="bn")
    put("fig1", 0.805, reach=80, norm="none")  # passes X = 0.80 once, settles within the 0.01 margin
    for m, reach in ((1.0, 30), (5.0, 10), (30.0, 20)):
        put("vgg_lr", 0.87, reach=reach, norm="bn", lr_mult=m)
    q = chapter.quantities(results, "smoke")
    assert not q["fig1_plateau_ok"] and all(math.isnan(v) for v in q["bn-fewer-steps"])
    assert q["vgg_plateau_ok"] and q["bn-x5-faster"] == [3.0]
    # and it is checked on every run: the final plateau of each compared arm is above X
    tab = q["tables"]["vgg_lr"]
    assert (tab[tab.norm == "bn"].plateau >= tab[tab.norm == "bn"].target + chapter.PLATEAU_MARGIN).all()
    got = {c.id: c for c in chapter.score(results, "smoke")}
    assert got["bn-fewer-steps"].verdict == "inconclusive"


def test_plateau_is_the_mean_of_the_last_fifth():
    evals = [{"step": i, "test_acc": a} for i, a in enumerate([0.1, 0.5, 0.7, 0.8, 0.8, 0.82, 0.84, 0.83,
                                                               0.85, 0.87])]
    assert chapter.plateau(evals) == pytest.approx((0.85 + 0.87) / 2)
    assert chapter.plateau(evals[:2]) == 0.5 and math.isnan(chapter.plateau([]))


def test_bias_gradient_check_is_exact_and_keeps_the_global_rng():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    check = chapter.bias_gradient_check(small_cfg())
    assert torch.equal(torch.rand(3), expected_next)
    assert check["max_out_gap"] < 1e-12 and check["max_bias_grad"] < 1e-12 < 1e-6 < check["max_weight_grad"]
    assert check == chapter.bias_gradient_check(small_cfg())  # deterministic


def test_claims_are_registered_with_kinds_sources_and_enough_seeds():
    from bnrepro.core.claims import EMPIRICAL, registered_claims

    assert tuple(registered_claims("bn_training")) == chapter.SPECS
    for s in chapter.SPECS:
        assert s.source == "ioffe2015batch" and s.where
        if s.kind == EMPIRICAL:
            assert s.n >= 3
            assert s.n <= len(bt.SEEDS_5["cpu"] if s.n == 5 else bt.SEEDS["cpu"])
    # the stored sweep has the seeds the claims ask for, per arm
    for group, n in (("fig1", 5), ("vgg_lr", 5), ("deep", 5), ("deep_tiny", 5)):
        cfgs = bt.groups("cpu", dataset="fashion-mnist")[group]
        per_arm = {}
        for c in cfgs:
            per_arm.setdefault((c.norm, c.lr_mult, c.init), set()).add(c.seed)
        assert all(len(seeds) >= n for seeds in per_arm.values()), group
    assert "no-bn-fails-at-x30" not in {s.id for s in chapter.SPECS}  # not a claim of the paper


@needs_fashion_mnist
def test_chapter_claims_smoke_runs_stores_and_is_listed(tmp_results, monkeypatch):
    """What the scorecard calls: the smoke sweep is run into the store, scored, and loads back the same."""
    monkeypatch.setattr(bt, "mnist_available", lambda: False)
    claims = chapter.claims("smoke")
    assert [c.id for c in claims] == CLAIM_IDS
    for c in claims:
        assert isinstance(c, Claim) and c.verdict in VERDICTS
        _, low, high = c.bounds
        assert c.verdict == c.spec.rule.verdict(low, high)  # computed from the numbers, never typed
    assert {c.id: c.verdict for c in claims}["bias-gradient-zero"] == "reproduced"
    assert all(c.scale.startswith("smoke profile") for c in claims if c.id != "bias-gradient-zero")
    stored = list((tmp_results / "bn_training").glob("*.json"))
    assert len(stored) == len(bt.sweep("smoke"))
    # loaded, identical (compared as text: NaN values, of claims without a number at smoke, never equal)
    assert str([c.row() for c in chapter.claims("smoke")]) == str([c.row() for c in claims])
    listed = {c.doc: c for c in scorecard.chapters()}["book/bn_training"]
    assert listed.claims is chapter.claims

# Tiny tensors: one intra-op thread is faster, and far faster on a busy shared CPU.
pytestmark = pytest.mark.usefixtures("one_thread")
