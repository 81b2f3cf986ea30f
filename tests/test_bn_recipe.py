"""The recipe chapter: its new knobs do what they say (fixed batches, exponential decay, photometric
jitter, dropout and LRN off by default), each arm changes exactly its setting, and the scoring
follows the rules fixed before the runs (steps ratios, the never-reached bound, paired differences)."""

import math

import pytest
import torch

from bnrepro.chapters import bn_recipe as chapter
from bnrepro.core.claims import REPRODUCED
from bnrepro.core.results import Result
from bnrepro.data import Batches, TensorData, compose, photometric_jitter, random_crop_flip
from bnrepro.experiments.bn_recipe import (
    ARMS,
    BASELINE,
    CHANGES,
    FULL,
    TARGET_FRACTION,
    RecipeConfig,
    arm_of,
    arm_settings,
    sweep,
)
from bnrepro.models import NormConvNet
from bnrepro.training.loop import lr_factor, train


def batches_of(b, epoch):
    return [sorted(yb.tolist()) for _, yb in b.epoch(epoch)]


def test_fixed_batches_keep_their_images_together_and_only_change_order():
    x, y = torch.arange(40.0).view(40, 1, 1, 1), torch.arange(40)
    fixed = Batches(x, y, 8, seed=3, fixed_batches=True)
    e0, e1 = batches_of(fixed, 0), batches_of(fixed, 1)
    assert sorted(e0) == sorted(e1) and e0 != e1  # the same batches, in another order
    fresh = Batches(x, y, 8, seed=3)
    assert sorted(batches_of(fresh, 0)) == sorted(e0)  # cut from epoch 0's permutation
    assert sorted(batches_of(fresh, 1)) != sorted(e1)  # the default draws new batches every epoch
    assert sorted(sum(e1, [])) == list(range(40))


def test_exponential_decay_falls_by_gamma_over_the_run():
    assert lr_factor("exp", 0, 100, gamma=0.5) == 1.0
    assert lr_factor("exp", 50, 100, gamma=0.5) == pytest.approx(0.5 ** 0.5)
    assert lr_factor("exp", 100, 100, gamma=0.5 ** 6) == pytest.approx(1 / 64)


def test_photometric_jitter_is_seeded_bounded_and_off_at_zero():
    xb = torch.randn(16, 1, 6, 6)
    assert photometric_jitter(0.0)(xb, torch.Generator().manual_seed(0)) is xb
    a = photometric_jitter(1.0)(xb, torch.Generator().manual_seed(1))
    b = photometric_jitter(1.0)(xb, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, xb)
    shift = a.mean(dim=(1, 2, 3)) - xb.mean(dim=(1, 2, 3))  # contrast keeps the mean: only brightness moves it
    assert shift.abs().max() <= 0.5 + 1e-6
    with pytest.raises(ValueError, match="strength"):
        photometric_jitter(-1)
    both = compose(random_crop_flip(2), photometric_jitter(0.5))
    assert both(xb, torch.Generator().manual_seed(2)).shape == xb.shape and "jitter" in repr(both)


def test_dropout_and_lrn_are_off_by_default_and_add_no_parameters():
    torch.manual_seed(0)
    plain = NormConvNet("bn", width=4)
    torch.manual_seed(0)
    pre = NormConvNet("bn", width=4, dropout=0.4, lrn=True)
    a, b = list(plain.parameters()), list(pre.parameters())
    assert len(a) == len(b) and all(torch.equal(p, q) for p, q in zip(a, b))  # same parameters, same init
    kinds = [type(m).__name__ for m in pre.modules()]
    assert kinds.count("LocalResponseNorm") == 2 and kinds.count("Dropout") == 1
    assert "Dropout" not in [type(m).__name__ for m in plain.modules()]
    assert pre(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_each_arm_changes_exactly_its_settings():
    assert {k: getattr(RecipeConfig(), k) for k in BASELINE} == BASELINE  # the defaults are the baseline
    for arm, change in CHANGES.items():
        s = arm_settings(arm)
        assert {k for k in s if s[k] != BASELINE[k]} == set(change), arm
    full = arm_settings(FULL)
    assert all(full[k] != BASELINE[k] for k in BASELINE)
    cfgs = sweep("cpu")
    assert len({c.hash() for c in cfgs}) == len(cfgs) == len(ARMS) * 3
    assert {arm_of(c.to_dict()) for c in cfgs} == set(ARMS)
    assert CHANGES["6x faster lr decay"]["decay_speed"] == 6 and CHANGES["5x higher lr"]["lr"] == 5 * BASELINE["lr"]
    assert CHANGES["5x less L2"]["weight_decay"] == pytest.approx(BASELINE["weight_decay"] / 5)
    with pytest.raises(Exception, match="shuffle"):
        RecipeConfig.for_profile("cpu", shuffle="never")


def test_the_loop_trains_with_fixed_batches_and_refuses_an_unknown_shuffle():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    data = TensorData("toy", x, y, x[:16], y[:16], ["a", "b"], "generated", (0.0,), (1.0,))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    hist = train(net, data, epochs=2, batch_size=16, lr=0.1, shuffle="fixed_batches", schedule="exp", gamma=0.5)
    assert hist.total_steps == 8 and hist.epochs[-1]["lr"] == pytest.approx(0.1 * 0.5 ** (7 / 8))
    with pytest.raises(ValueError, match="shuffle='never'"):
        train(net, data, shuffle="never")


def fake(cfg, acc, reach_step):
    evals = [{"step": 0, "test_acc": 0.1}] + ([{"step": reach_step, "test_acc": acc}] if reach_step else [])
    data = {"history": {"epochs": [{"train_acc": acc}], "evals": evals, "diverged": False, "total_steps": 1024},
            "eval_acc": acc, "parameters": 1, "data_source": "x"}
    return Result(cfg.experiment, cfg.to_dict(), data, {"wall_time_s": 1.0, "device": "cpu"})


def fake_runs():
    acc = {"baseline": 0.85, "no dropout": 0.86, "thorough shuffling": 0.852, FULL: 0.88}
    reach = {"baseline": 512, "5x higher lr": 256, FULL: 128}
    runs = []
    for c in sweep("cpu"):
        arm = arm_of(c.to_dict())
        step = reach.get(arm, 448)
        if arm == "no dropout" and c.seed == 2:
            step = None  # never reaches the target: counts as one evaluation after the last step
        runs.append(fake(c, acc.get(arm, 0.85) + 0.001 * c.seed, step))
    return runs


def test_scoring_follows_the_rules():
    runs = fake_runs()
    sp = chapter.speed(runs)
    assert sp["target"] == pytest.approx(TARGET_FRACTION * 0.851)
    assert sp["steps"]["no dropout"][2] == 1024 + RecipeConfig().eval_every_steps
    claims = {c.id: c for c in chapter.score(runs, "cpu")}
    assert list(claims) == [s.id for s in chapter.SPECS]
    assert all(c.n == 3 for c in claims.values())
    assert claims["recipe-reaches-target-sooner"].ours == pytest.approx(4.0)
    assert claims["recipe-reaches-target-sooner"].verdict == REPRODUCED
    assert claims["higher-lr-reaches-target-sooner"].ours == pytest.approx(2.0)
    assert claims["recipe-final-accuracy-not-lower"].ours == pytest.approx(0.03)
    assert claims["thorough-shuffling-more-accurate"].verdict == "partly"
    assert claims["no-dropout-reaches-target-sooner"].values[2] == pytest.approx(512 / 1088)
    table = chapter.arm_summary(runs)
    assert list(table.index) == list(ARMS) and table.loc[FULL, "vs_baseline"] == pytest.approx(0.03)
    assert not math.isnan(table.loc["baseline", "low"])
