"""SkipInit chapter: exact path-depth distribution, Monte Carlo, residual network family."""

import math

import numpy as np
import pytest
import torch

from bnrepro.core.config import ConfigError
from bnrepro.measure.path_depth import (
    brute_force_distribution,
    expected_path_depth,
    harmonic,
    headline,
    path_depth_distribution,
    share_within,
)
from bnrepro.measure.resnet_variance import block_variances, path_variance_mc
from bnrepro.models import MODELS, LinearResNet, ResNet, residual_blocks
from bnrepro.models.resnet import VARIANTS, resolve_alpha

# Tiny tensors: one intra-op thread is faster, and far faster on a busy shared CPU.
pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------- exact distribution
@pytest.mark.parametrize("d", [1, 5, 100, 10_000])
@pytest.mark.parametrize("normalized", [True, False])
def test_distribution_sums_to_one_and_is_a_probability(d, normalized):
    p = path_depth_distribution(d, normalized)
    assert p.dtype == np.float64 and p.shape == (d + 1,)
    assert (p >= 0).all()
    assert abs(p.sum() - 1) < 1e-12


@pytest.mark.parametrize("d", [1, 7, 100, 10_000])
@pytest.mark.parametrize("s", [1, 0, 3])
def test_mean_equals_harmonic_number_formula(d, s):
    p = path_depth_distribution(d, True, stem_variance=s)
    mean = float(np.dot(np.arange(d + 1), p))
    # H_{d+s} - H_s, with H summed independently here (plain Python floats, no numpy)
    h = lambda n: sum(1.0 / k for k in range(1, n + 1))  # noqa: E731
    assert mean == pytest.approx(h(d + s) - h(s), rel=1e-12)
    assert expected_path_depth(d, True, s) == pytest.approx(h(d + s) - h(s), rel=1e-13)


def test_harmonic_known_values():
    assert harmonic(0) == 0 and harmonic(1) == 1 and harmonic(4) == pytest.approx(25 / 12, rel=1e-15)
    assert harmonic(10_000) == pytest.approx(math.log(10_000) + 0.5772156649015329 + 1 / 20_000, abs=1e-8)


@pytest.mark.parametrize("d", [1, 2, 5, 10])
@pytest.mark.parametrize("normalized,s", [(True, 1.0), (True, 0.0), (True, 2.5), (False, 1.0)])
def test_small_cases_match_enumeration_of_all_paths(d, normalized, s):
    exact = path_depth_distribution(d, normalized, s)
    brute = brute_force_distribution(d, normalized, s)
    np.testing.assert_allclose(exact, brute, rtol=1e-12, atol=1e-15)


def test_known_closed_forms():
    d = 50
    # unnormalized: Binomial(d, 1/2)
    np.testing.assert_allclose(path_depth_distribution(d, False),
                               [math.comb(d, k) / 2 ** d for k in range(d + 1)], rtol=1e-12)
    # normalized, s = 1: P[0] = 1/(d+1) (the all-skip path), P[d] = 1/(d+1)!
    p = path_depth_distribution(d)
    assert p[0] == pytest.approx(1 / (d + 1), rel=1e-13)
    assert p[d] == pytest.approx(1 / math.factorial(d + 1), rel=1e-10)
    # s = 0 is s = 1 with one block fewer, shifted by one branch
    np.testing.assert_allclose(path_depth_distribution(d, True, 0.0)[1:], path_depth_distribution(d - 1), rtol=1e-12)


def test_ten_thousand_blocks_give_the_headline():
    p = path_depth_distribution(10_000)
    assert abs(p.sum() - 1) < 1e-12
    rows = {(r["convention"], r["paths through"]): r["share"] for r in headline()}
    # the paper's 97% is the "first branch always taken" convention (or "< 15" with the default one)
    assert rows[("first branch always taken (s=0)", "<= 15")] == pytest.approx(0.970, abs=0.0005)
    assert rows[("stem not a branch (s=1)", "< 15")] == pytest.approx(0.970, abs=0.0005)
    assert share_within(10_000, 15) == pytest.approx(0.985, abs=0.0005)
    assert share_within(10_000, 15, normalized=False) < 1e-100


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="num_blocks"):
        path_depth_distribution(-1)
    with pytest.raises(ValueError, match="stem_variance"):
        path_depth_distribution(3, stem_variance=-1)


# ----------------------------------------------------------------- Monte Carlo
@pytest.mark.parametrize("mode", ["bn", "scaled", "none"])
def test_monte_carlo_agrees_with_exact_within_error_bars(mode):
    d = 5
    mc = path_variance_mc(d, width=32, batch=256, mode=mode, n_networks=16, seed=3)
    exact = path_depth_distribution(d, normalized=mode != "none")
    # BN normalizes each random network by its own per-feature statistics, which thins the
    # deep-path tail by O(k / width) relative to the infinite-width theory: allow 0.005 for it.
    allowance = 0.005 if mode == "bn" else 0.0
    z = np.maximum(np.abs(mc["mean"] - exact) - allowance, 0) / np.maximum(mc["sem"], 1e-9)
    assert (z < 4).all(), f"{mode}: z-scores {np.round(z, 1)}"
    assert abs(mc["mean"].sum() - 1) < 1e-9
    # the total variance per block: i (normalized, stem variance 1) or 2^(i-1) (unnormalized)
    expected = np.arange(1, d + 2) if mode != "none" else 2.0 ** np.arange(d + 1)
    np.testing.assert_allclose(mc["block_var"].mean(0), expected, rtol=0.08)


def test_monte_carlo_detects_a_wrong_distribution():
    mc = path_variance_mc(5, width=32, batch=256, mode="none", n_networks=16, seed=3)
    z = np.abs(mc["mean"] - path_depth_distribution(5, True)) / mc["sem"]
    assert z.max() > 10  # the test above can fail: unnormalized MC vs normalized theory


def test_linear_resnet_figure4_statistics():
    torch.manual_seed(0)
    model = LinearResNet(in_features=20, width=64, num_blocks=12)
    before = [m.running_var.clone() for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    stats = block_variances(model, [torch.randn(256, 20) for _ in range(3)])
    i = np.arange(1, 13)
    np.testing.assert_allclose(stats["skip"], i, rtol=0.2)           # skip variance grows ~ linearly
    np.testing.assert_allclose(stats["branch"], 1, rtol=0.2)         # BN keeps each branch at ~1
    np.testing.assert_allclose(stats["bn_running_var"], i, rtol=0.2)  # BN's moving variance tracks the skip
    after = [m.running_var for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "the model's own statistics are restored"


def test_linear_resnet_with_the_package_bn_is_the_same_network():
    """norm="bnrepro": the documented cumulative average (momentum=None) and the same Figure-4
    statistics as with PyTorch's BN (same seed, same weights)."""
    models = {}
    for norm in ("bn", "bnrepro"):
        torch.manual_seed(0)
        models[norm] = LinearResNet(in_features=20, width=32, num_blocks=4, norm=norm)
    bns = [m for m in models["bnrepro"].modules() if hasattr(m, "running_var")]
    assert len(bns) == 4 and all(m.momentum is None for m in bns)
    batches = [torch.randn(64, 20, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    ref, ours = (block_variances(models[k], batches) for k in ("bn", "bnrepro"))
    for key, values in ref.items():
        assert np.isfinite(ours[key]).all(), key
        np.testing.assert_allclose(ours[key], values, rtol=1e-5)


# ----------------------------------------------------------------- residual network family
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_builds_and_runs(variant):
    torch.manual_seed(0)
    model = ResNet(16, 1, base_width=4, stem_stride=2, in_channels=1, **VARIANTS[variant])
    out = model(torch.randn(4, 1, 28, 28))
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    assert model.num_blocks == 6 and len(residual_blocks(model)) == 6
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert has_bn == (VARIANTS[variant]["norm"] == "bn")
    alphas = [b.alpha for b in residual_blocks(model)]
    if VARIANTS[variant]["alpha"] is None:
        assert all(a is None for a in alphas)
    else:
        assert all(a.requires_grad for a in alphas)
        assert alphas[0].item() == pytest.approx(resolve_alpha(VARIANTS[variant]["alpha"], 6))


def test_alpha_zero_blocks_are_the_identity_at_init():
    torch.manual_seed(0)
    model = ResNet(22, 1, norm="none", alpha=0, base_width=4, in_channels=1)
    x = torch.randn(3, 4, 10, 10)
    identity_blocks = [b for b in residual_blocks(model) if b.shortcut is None]
    assert len(identity_blocks) == 7  # 9 blocks; the first of stages 2 and 3 change shape (1x1 conv shortcut)
    for b in identity_blocks[:2]:
        assert torch.equal(b(x), x)
    # with alpha = 1 the same block is not the identity
    b = ResNet(22, 1, norm="none", alpha=1, base_width=4, in_channels=1).blocks[1]
    assert not torch.allclose(b(x), x)


def test_alpha_choices_and_paper_widths():
    assert resolve_alpha("1/sqrt(d)", 166 * 3) == pytest.approx(1 / math.sqrt(498))
    assert resolve_alpha("none", 5) is None and resolve_alpha(0.25, 5) == 0.25
    with pytest.raises(ValueError, match="alpha"):
        resolve_alpha("2", 5)
    with pytest.raises(ValueError, match="depth"):
        ResNet(17)
    wrn = ResNet(16, 2)  # WRN-16-2 on CIFAR-10: about 0.69M parameters
    assert 0.6e6 < sum(p.numel() for p in wrn.parameters()) < 0.75e6
    assert MODELS["resnet"] is ResNet and MODELS["linear_resnet"] is LinearResNet


def test_sum_scale_keeps_forward_variance_and_alpha1_explodes():
    torch.manual_seed(0)
    x = torch.randn(32, 1, 28, 28)
    stats = {}
    for name in ("alpha1", "sum_sqrt2"):
        model = ResNet(40, 1, base_width=8, stem_stride=2, in_channels=1, **VARIANTS[name])
        stats[name] = block_variances(model, [x])["skip"]
    assert stats["alpha1"][-1] > 1000 * stats["alpha1"][0]     # the variance doubles block after block
    assert stats["sum_sqrt2"][-1] < 10 * stats["sum_sqrt2"][0]


# ----------------------------------------------------------------- experiments
def test_configs_validate_and_sweeps_reach_1000_layers():
    from bnrepro.experiments.skipinit_train import SkipInitDepthConfig, sweep_batch, sweep_depth

    for profile in ("smoke", "cpu", "paper"):
        assert sweep_depth(profile) and sweep_batch(profile)
    assert max(c.depth for c in sweep_depth("cpu")) == 1000
    assert {c.variant for c in sweep_depth("cpu")} == {"bn", "skipinit", "alpha1", "sum_sqrt2", "skipinit_sqrt_d"}
    with pytest.raises(ConfigError, match="depth"):
        SkipInitDepthConfig.for_profile("cpu", depth=999)
    with pytest.raises(ConfigError, match="variant"):
        SkipInitDepthConfig.for_profile("cpu", variant="fixup")


@pytest.mark.parametrize("profile", ["cpu", "paper"])
def test_scored_arms_have_three_seeds(profile):
    from bnrepro.core.claims import MIN_SEEDS
    from bnrepro.experiments.skipinit import sweep_variance
    from bnrepro.experiments.skipinit_train import CLAIM_VARIANTS, sweep_depth

    deep = [c for c in sweep_depth(profile) if c.depth == 1000]
    for v in CLAIM_VARIANTS:
        assert len({c.seed for c in deep if c.variant == v}) >= MIN_SEEDS, v
    for kind in ("linear", "conv"):
        assert len({c.seed for c in sweep_variance(profile) if c.kind == kind}) >= MIN_SEEDS, kind


def test_batch_sweep_trains_equal_epochs_over_a_factor_2_grid():
    """Figures 5/6 kind: every batch size the same epochs (>= 3 passes over the same subset),
    lrs in factors of 2, >= 3 seeds of every (arm, batch, lr)."""
    from collections import Counter

    from bnrepro.experiments.skipinit_train import sweep_batch

    cfgs = sweep_batch("cpu")
    assert len({(c.epochs, c.n_train, c.train_examples) for c in cfgs}) == 1
    assert cfgs[0].epochs >= 3 and cfgs[0].train_examples is None and cfgs[0].n_train
    for b in {c.batch_size for c in cfgs}:
        grid = sorted({c.lr for c in cfgs if c.batch_size == b})
        assert len(grid) >= 5 and np.allclose(np.diff(np.log2(grid)), 1.0), b
    assert min(Counter((c.variant, c.batch_size, c.lr) for c in cfgs).values()) >= 3


def test_divergence_is_recorded_not_raised(monkeypatch):
    from bnrepro.data.datasets import TensorData
    from bnrepro.experiments import skipinit_train

    g = torch.Generator().manual_seed(0)
    fake = TensorData("fashion-mnist", torch.randn(64, 1, 28, 28, generator=g),
                      torch.randint(0, 10, (64,), generator=g),
                      torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g),
                      [str(i) for i in range(10)], "random tensors", (0.0,), (1.0,))
    monkeypatch.setattr(skipinit_train, "load_dataset", lambda *a, **k: fake)
    cfg = skipinit_train.SkipInitDepthConfig.for_profile("smoke", variant="alpha1", depth=16, lr=1e4)
    result = skipinit_train.run(cfg, device="cpu")
    assert result["diverged"] is True and result["test_acc"] is None
    assert result["diverged_at_step"] is not None


# ----------------------------------------------------------------- claims (chapter + scorecard)
def _fake_run(experiment, config, **data):
    from bnrepro.core.store import Result

    base = {"num_blocks": 1, "test_acc": None, "diverged": False, "diverged_at_step": None,
            "final_train_loss": None, "alpha_abs_mean": None, "planned_steps": 10}
    cfg = {"dataset": "fashion-mnist", "n_train": None, "batch_size": 32, "widen": 1, "base_width": 8,
           "epochs": 4, "depth": 16, "n_test": 100, **config}
    return Result(experiment, cfg, {**base, **data}, {"device": "cpu (test)", "wall_time_s": 0.0})


def _paths_run():
    exact = path_depth_distribution(3)
    modes = {m: {"mean": list(exact + 0.001), "sem": [0.001] * 4, "exact": list(exact)}  # 1 sem off
             for m in ("bn", "scaled", "none")}
    return _fake_run("skipinit_paths", {"num_blocks": 3, "width": 8, "n_networks": 4}, **modes)


def _variance_runs():
    runs = []
    for seed, wobble in enumerate((-0.02, 0.0, 0.02)):
        blocks = np.arange(1, 6)
        runs.append(_fake_run("skipinit_variance", {"kind": "linear", "seed": seed, "num_blocks": 5, "width": 8},
                              num_blocks=5, skip=((1 + wobble) * blocks).tolist(), branch=[1.0] * 5,
                              bn_running_var=blocks.tolist()))
        # 3 stages of 3 blocks: skip grows by 2 per block while the branches give 2 (stage 3: 1)
        skip = [1, 3, 5, 1, 3, 5, 1, 2 + wobble, 3 + 2 * wobble]
        branch = [2, 2, 9, 2, 2, 9, 1, 1, 9]
        runs.append(_fake_run("skipinit_variance", {"kind": "conv", "seed": seed, "depth": 22,
                                                    "dataset": "fashion-mnist"}, num_blocks=9, skip=skip,
                              branch=branch))
    return runs


def _depth_runs(steps=50):
    acc = {16: {"bn": [0.8], "skipinit": [0.5], "alpha1": [0.7], "sum_sqrt2": [0.7]},  # must not be read
           1000: {"bn": [0.6, 0.6, 0.6], "skipinit": [0.40, 0.42, 0.44], "alpha1": [None] * 3,
                  "sum_sqrt2": [0.10, 0.11, 0.09]}}
    return [_fake_run("skipinit_depth", {"variant": v, "depth": d, "seed": s, "batch_size": 32}, test_acc=a,
                      diverged=a is None, planned_steps=steps)
            for d, arms in acc.items() for v, accs in arms.items() for s, a in enumerate(accs)]


#: (arm, batch) -> accuracy at lr 0.1, 0.2, 0.4, 0.8 (None: diverged); seeds add 0, 0.01, 0.02
_BATCH = {("bn", 16): (0.70, 0.80, 0.75, 0.70), ("skipinit", 16): (0.71, 0.79, 0.60, None),
          ("bn", 256): (0.40, 0.50, 0.70, 0.60), ("skipinit", 256): (0.45, 0.55, 0.30, None)}


def _batch_runs(table=_BATCH):
    return [_fake_run("skipinit_batch", {"variant": v, "batch_size": b, "lr": lr, "seed": s}, test_acc=
                      None if a is None else a + 0.01 * s, diverged=a is None)
            for (v, b), accs in table.items() for lr, a in zip((0.1, 0.2, 0.4, 0.8), accs) for s in range(3)]


#: regularized SkipInit: batch -> accuracy at lr 0.1, 0.2, 0.4, 0.8 (seeds add 0, 0.01, 0.02, as _BATCH)
_REG = {16: (0.70, 0.795, 0.60, None), 256: (0.45, 0.60, 0.30, None)}


def _variant_runs(reg=_REG):
    deep = [_fake_run("skipinit_variants", {"variant": "skipinit_sqrt_d", "depth": 1000, "seed": s}, num_blocks=498,
                      test_acc=a, planned_steps=50) for s, a in enumerate((0.30, 0.32, 0.34))]
    return deep + [_fake_run("skipinit_variants", {"variant": "skipinit_reg", "batch_size": b, "lr": lr, "seed": s},
                             test_acc=None if a is None else a + 0.01 * s, diverged=a is None)
                   for b, accs in reg.items() for lr, a in zip((0.1, 0.2, 0.4, 0.8), accs) for s in range(3)]


def _synthetic_results(**kw):
    """Small hand-made results whose claim values are known in advance."""
    return {"paths": [_paths_run()], "variance": _variance_runs(), "depth": _depth_runs(**kw),
            "batch": _batch_runs(), "variants": _variant_runs()}


def test_claims_from_synthetic_results():
    from bnrepro.chapters.skipinit import SPECS, score

    got = {c.id: c for c in score(_synthetic_results(), "cpu")}
    expected = {  # values worked out by hand from the synthetic runs above
        "paths-97pct": (share_within(10_000, 15), "not reproduced"),  # 98.5%: the wording's convention
        "paths-mc-agrees": (1.0, "reproduced"),
        "fig4a-skip-slope": (1.0, "reproduced"),                      # slopes 0.98, 1.00, 1.02
        "fig4b-stage1-slope": (1.0, "reproduced"),
        "fig4b-stage2-slope": (1.0, "reproduced"),
        "fig4b-stage3-slope": (1.0, "reproduced"),                    # slopes 1 + wobble over branch 1
        "skipinit-trains-1000": (0.42, "reproduced"),
        "skipinit-comparable-1000": (math.nan, "inconclusive"),       # 50 steps: not scored
        "alpha1-fails": (0.1, "reproduced"),                          # diverged: counts as chance
        "sqrt2-fails": (0.10, "reproduced"),
        "small-batch-lr-similar": (0.0, "reproduced"),                # both best at 0.2
        "bn-lr-ratio-grows": (1.0, "reproduced"),                     # batch 256: BN best at 0.4, SkipInit 0.2
        "small-batch-similar": (0.01, "reproduced"),
        "bn-advantage-grows": ((0.70 - 0.55) - 0.01, "reproduced"),
        "sqrt-d-trains-1000": (0.32, "reproduced"),
        "reg-matches-bn-small-batch": (0.005, "reproduced"),          # BN 0.80 vs 0.795 at lr 0.2
        "reg-matches-bn-larger-batch": (0.10, "partly"),              # BN 0.70 vs 0.60: below the 0.193 null
    }
    assert list(got) == [s.id for s in SPECS] == list(expected)
    for cid, (ours, verdict) in expected.items():
        if math.isnan(ours):
            assert got[cid].n == 0, cid
        else:
            assert got[cid].ours == pytest.approx(ours, abs=1e-9), cid
        assert got[cid].verdict == verdict, cid
    assert got["paths-97pct"].kind == "exact" and got["paths-mc-agrees"].kind == "check"
    assert all(got[c].n == 3 for c in ("fig4a-skip-slope", "fig4b-stage2-slope", "skipinit-trains-1000",
                                       "alpha1-fails", "bn-advantage-grows"))
    assert "not scored" in got["skipinit-comparable-1000"].scale


def test_comparison_with_bn_is_scored_only_after_enough_training():
    from bnrepro.chapters.skipinit import COMPARE_EPOCHS, score

    steps = COMPARE_EPOCHS * 60_000 // 32
    got = {c.id: c for c in score(_synthetic_results(steps=steps), "cpu")}
    claim = got["skipinit-comparable-1000"]
    assert claim.n == 3 and claim.ours == pytest.approx(0.42 - 0.6) and claim.verdict == "not reproduced"


def test_best_lr_on_the_grid_edge_makes_the_batch_claims_inconclusive():
    """The lr grid must bracket each arm's optimum: where the best lr is at an edge of the grid,
    the claims that read that batch size are not scored, and the table says why."""
    from bnrepro.chapters.skipinit import BATCH_ARMS, batch_frame, batch_values, score

    edge = dict(_BATCH)
    edge[("bn", 256)] = (0.40, 0.50, 0.60, 0.70)  # still improving at the largest lr
    values = batch_values(batch_frame(_batch_runs(edge)))
    assert values["edges"] == [(BATCH_ARMS["bn"], 256)]
    results = {**_synthetic_results(), "batch": _batch_runs(edge)}
    got = {c.id: c for c in score(results, "cpu")}
    for cid in ("small-batch-lr-similar", "bn-lr-ratio-grows", "small-batch-similar", "bn-advantage-grows"):
        assert got[cid].n == 0 and got[cid].verdict == "inconclusive", cid
        assert "grid's edge for BN at batch 256" in got[cid].scale
    assert batch_values(batch_frame(_batch_runs()))["edges"] == []


def test_committed_batch_results_bracket_the_best_lr_or_say_so():
    """On the stored cpu runs: every arm's best lr lies inside its grid, or the claims are inconclusive."""
    from bnrepro.chapters.skipinit import batch_frame, batch_values
    from bnrepro.core.store import load
    from bnrepro.experiments.skipinit_train import sweep_batch
    from conftest import REPO

    runs = [load(cfg, REPO / "results") for cfg in sweep_batch("cpu")]
    if any(r is None for r in runs):
        pytest.skip("the cpu batch sweep is not stored")
    values = batch_values(batch_frame(runs))
    assert values["edges"] == [] or values["bn-lr-ratio-grows"] == []


def test_chapter_claims_at_smoke_and_listed(tmp_results):
    from bnrepro import scorecard
    from bnrepro.chapters.skipinit import SPECS
    from bnrepro.chapters.skipinit import claims as chapter_claims
    from bnrepro.core.claims import VERDICTS, Claim

    claims = chapter_claims("smoke")
    assert [c.id for c in claims] == [s.id for s in SPECS] and all(isinstance(c, Claim) for c in claims)
    assert all(c.verdict in VERDICTS for c in claims)
    assert any(tmp_results.glob("skipinit_depth/*.json"))  # it ran into the throw-away store
    registered = {c.doc: c for c in scorecard.chapters()}
    assert registered["book/skipinit"].claims is chapter_claims
    assert registered["book/skipinit"].title == "SkipInit (De & Smith)"
