"""SkipInit variants: regularized SkipInit's model, the new experiment's configs, and that the
stored runs of the depth and batch sweeps (its baselines) keep their hashes and rules."""

import json

import pytest
import torch
from torch import nn

from bnrepro.models import ResNet, residual_blocks
from bnrepro.models.resnet import REG_DROPOUT, VARIANTS

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(variant, **kw):
    torch.manual_seed(0)
    return ResNet(16, 1, base_width=4, stem_stride=2, in_channels=1, **VARIANTS[variant], **kw)


def test_regularized_skipinit_has_dropout_before_the_final_layer_and_conv_biases():
    model = _tiny("skipinit_reg")
    head = list(model.head)
    assert isinstance(head[-1], nn.Linear) and isinstance(head[-2], nn.Dropout)
    assert head[-2].p == REG_DROPOUT and 0 < REG_DROPOUT < 1
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 1      # nowhere else
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.bias is not None and torch.equal(c.bias, torch.zeros_like(c.bias)) for c in convs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(b.alpha.item() == 0.0 and b.alpha.requires_grad for b in residual_blocks(model))


def test_dropout_is_active_in_training_only():
    model = _tiny("skipinit_reg")
    with torch.no_grad():
        model.head[-1].weight.normal_()  # so the head's output depends on the dropped features
        x = torch.randn(8, 1, 28, 28)
        model.train()
        assert not torch.allclose(model(x), model(x))
        model.eval()
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "skipinit_reg"])
def test_other_variants_keep_their_modules_and_parameters(variant):
    """The dropout option adds nothing to the existing arms (same modules, same init)."""
    model = _tiny(variant)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    same = _tiny(variant, dropout=0.0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values()))
    with pytest.raises(ValueError, match="dropout"):
        _tiny(variant, dropout=1.0)


def test_regularized_and_plain_skipinit_differ_only_by_the_dropout():
    reg, plain = _tiny("skipinit_reg"), _tiny("skipinit")
    assert [k.replace("head.5", "head.4") for k in reg.state_dict()] == list(plain.state_dict())  # dropout at 4
    assert all(torch.equal(a, b) for a, b in zip(reg.state_dict().values(), plain.state_dict().values()))
    reg.eval(), plain.eval()
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(reg(x), plain(x))


# ----------------------------------------------------------------- configs and sweeps
@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
def test_each_run_is_a_stored_baseline_config_but_for_its_variant(profile):
    from bnrepro.experiments.skipinit_train import sweep_batch, sweep_depth
    from bnrepro.experiments.skipinit_variants import REG, SQRT_D, sweep

    cfgs = sweep(profile)
    batch = {(c.batch_size, c.lr, c.seed): c for c in sweep_batch(profile) if c.variant == "skipinit"}
    depth = {(c.depth, c.seed): c for c in sweep_depth(profile) if c.variant == "skipinit"}
    assert {c.variant for c in cfgs} == {REG, SQRT_D}
    for c in cfgs:
        base = batch[(c.batch_size, c.lr, c.seed)] if c.variant == REG else depth[(c.depth, c.seed)]
        assert c.to_dict() == {**base.to_dict(), "variant": c.variant}
        assert c.experiment == "skipinit_variants" and c.hash() != base.hash()


@pytest.mark.parametrize("profile", ["cpu", "paper"])
def test_every_scored_arm_has_three_seeds_and_the_batch_grid(profile):
    from bnrepro.core.claims import MIN_SEEDS
    from bnrepro.experiments.skipinit_train import DEPTHS, LR_GRID
    from bnrepro.experiments.skipinit_variants import REG, REG_BATCHES, SQRT_D, sweep

    cfgs = sweep(profile)
    deep = [c for c in cfgs if c.variant == SQRT_D]
    assert {c.depth for c in deep} == {max(DEPTHS[profile])} == {1000}
    assert len({c.seed for c in deep}) >= MIN_SEEDS
    for b in REG_BATCHES[profile]:
        runs = [c for c in cfgs if c.variant == REG and c.batch_size == b]
        assert sorted({c.lr for c in runs}) == sorted(LR_GRID[profile][b])
        assert len(runs) == len(LR_GRID[profile][b]) * len({c.seed for c in runs}) >= MIN_SEEDS


def test_stored_baselines_keep_their_hashes_and_rules():
    """The new variant and experiment change no config of the depth and batch sweeps: every stored
    cpu run is still one of their configs (two pinned), run under their current rules."""
    from bnrepro.core.claims import registered_claims, rules_hash
    from bnrepro.experiments.skipinit_train import SkipInitBatchConfig, SkipInitDepthConfig, sweep_batch, sweep_depth
    from conftest import REPO

    assert SkipInitBatchConfig.for_profile("cpu", variant="bn", batch_size=16, lr=2 ** -7).hash() == "7b0baf5d2e053a62"
    assert SkipInitDepthConfig.for_profile("cpu", variant="bn", depth=1000).hash() == "b0b406ad61315817"
    assert [s.id for s in registered_claims("skipinit_batch")] == [
        "small-batch-lr-similar", "bn-lr-ratio-grows", "small-batch-similar", "bn-advantage-grows"]
    assert [s.id for s in registered_claims("skipinit_depth")] == [
        "skipinit-trains-1000", "skipinit-comparable-1000", "alpha1-fails", "sqrt2-fails"]
    for name, cfgs in (("skipinit_batch", sweep_batch("cpu")), ("skipinit_depth", sweep_depth("cpu"))):
        stored = sorted((REPO / "results" / name).glob("*.json"))
        if not stored:
            pytest.skip(f"no stored {name} runs")
        assert {p.stem for p in stored} == {c.hash() for c in cfgs}, name
        assert {json.loads(p.read_text())["provenance"]["rules_hash"] for p in stored} == {rules_hash(name)}, name


def test_grid_edge_leaves_the_regularized_claim_unscored():
    from bnrepro.chapters.skipinit import score
    from test_skipinit import _REG, _synthetic_results, _variant_runs

    edge = {**_REG, 16: (0.60, 0.70, 0.75, 0.79)}  # still improving at the largest lr
    got = {c.id: c for c in score({**_synthetic_results(), "variants": _variant_runs(edge)}, "cpu")}
    claim = got["reg-matches-bn-small-batch"]
    assert claim.n == 0 and claim.verdict == "inconclusive"
    assert "grid's edge for regularized SkipInit" in claim.scale
    assert got["reg-matches-bn-larger-batch"].n == 3
