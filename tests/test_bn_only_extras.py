"""The BN-only blog's ideas (shortcut convolutions unfrozen, zero gamma) and the curve features."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnrepro.core.claims import CHECK, registered_claims, rules_hash
from bnrepro.core.config import ConfigError
from bnrepro.models import cifar_resnet, vgg_bn
from bnrepro.nn.freeze import (
    BN_INITS,
    FREEZINGS,
    apply_freezing,
    batchnorm_layers,
    batchnorm_parameter_names,
    init_batchnorm,
    shortcut_conv_names,
    train_bn_and_shortcuts,
)
from conftest import needs_fashion_mnist

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- the shortcut arm
@pytest.mark.parametrize("depth", [8, 14, 32])
@pytest.mark.parametrize("width", [4, 16])
def test_bn_shortcut_trains_exactly_bn_and_the_1x1_convolutions(depth, width):
    model = cifar_resnet(depth, width=width, in_channels=1)
    trainable = apply_freezing(model, "bn_shortcut")
    d = (depth - 2) // 6
    bn = 2 * width * (7 + 14 * d)
    shortcuts = width * 2 * width + 2 * width * 4 * width  # two projections: W -> 2W and 2W -> 4W, 1x1
    assert trainable.arm == "bn_shortcut" and trainable.count == bn + shortcuts
    # an independent count: every 1x1 nn.Conv2d's weight, every BN's gamma and beta
    ones = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert len(ones) == 2 and sum(m.weight.numel() for m in ones) == shortcuts
    assert set(trainable.names) == set(batchnorm_parameter_names(model)) | set(shortcut_conv_names(model))
    assert all(p.requires_grad == (n in trainable.names) for n, p in model.named_parameters())
    assert not any(n.startswith("fc.") for n in trainable.names)


def test_resnet14_bn_shortcut_count():
    assert train_bn_and_shortcuts(cifar_resnet(14)).count == 1_120 + 16 * 32 + 32 * 64 == 3_680


def test_bn_shortcut_needs_1x1_convolutions():
    with pytest.raises(ValueError, match="1x1"):
        train_bn_and_shortcuts(vgg_bn("small", 8, 10, 1))


def test_bn_shortcut_training_moves_only_its_parameters():
    torch.manual_seed(0)
    model = cifar_resnet(8, width=4, in_channels=1)
    trainable = apply_freezing(model, "bn_shortcut")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=1e-4)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == set(trainable.names)


# --------------------------------------------------------------------------- zero gamma
def test_zero_init_sets_every_gamma_and_beta_to_zero():
    model = init_batchnorm(cifar_resnet(14, in_channels=1), "zero", seed=0)
    for _, m in batchnorm_layers(model):
        assert torch.count_nonzero(m.weight) == 0 and torch.count_nonzero(m.bias) == 0


def test_zero_residual_zeroes_each_branch_end_and_keeps_the_uniform_draw_elsewhere():
    a = init_batchnorm(cifar_resnet(14, in_channels=1), "uniform", seed=3)
    b = init_batchnorm(cifar_resnet(14, in_channels=1), "zero_residual", seed=3)
    ends = set(b.residual_bn_names)
    assert ends == {f"blocks.{i}.bn2" for i in range(6)}
    layers_a = dict(batchnorm_layers(a))
    for name, m in batchnorm_layers(b):
        if name in ends:
            assert torch.count_nonzero(m.weight) == 0
        else:
            assert torch.equal(m.weight, layers_a[name].weight) and 0 < m.weight.min()
        assert torch.count_nonzero(m.bias) == 0


def test_zero_residual_needs_residual_branches():
    with pytest.raises(ValueError, match="residual_bn_names"):
        init_batchnorm(vgg_bn("small", 8, 10, 1), "zero_residual")
    from bnrepro.experiments.bn_only import BNOnlyConfig

    with pytest.raises(ConfigError, match="bn_init"):
        BNOnlyConfig(arch="vgg", bn_init="zero_residual")
    with pytest.raises(ConfigError, match="trainable"):
        BNOnlyConfig(arch="vgg", trainable="bn_shortcut")


def test_zero_gamma_everywhere_gets_no_gradient_and_zero_residual_does():
    """gamma = beta = 0: every BN outputs 0, every ReLU gets exactly 0 and passes no gradient."""
    from bnrepro.experiments.bn_only_extras import zero_gamma_gradients

    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 14, 14), torch.randint(0, 10, (32,))
    dead = zero_gamma_gradients(cifar_resnet(14, in_channels=1), x, y, "zero")
    assert dead["max_abs_grad"] == 0.0
    alive = zero_gamma_gradients(cifar_resnet(14, in_channels=1), x, y, "zero_residual")
    assert alive["min_branch_gamma_grad_norm"] > 1e-4 and alive["max_abs_grad"] > 0
    # and an SGD step with momentum and weight decay leaves the dead network exactly where it was
    model = init_batchnorm(cifar_resnet(14, in_channels=1), "zero", seed=0)
    apply_freezing(model, "bn")
    state = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9,
                          weight_decay=1e-4)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


# --------------------------------------------------------------------------- configs and hashes
def test_new_keys_leave_bn_only_hashes_and_rules_alone():
    from bnrepro.experiments.bn_only import BNOnlyConfig

    assert {"zero", "zero_residual"} <= set(BN_INITS) and "bn_shortcut" in FREEZINGS
    assert BNOnlyConfig.for_profile("cpu", depth=14).hash() == "3007433ad8bf2e88"  # a stored run's file name
    assert rules_hash("bn_only") == "5961c9b42f7474e8"  # the rules its 31 stored runs were scored under


@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
def test_extras_pair_with_stored_bn_only_configs(profile):
    from bnrepro.experiments.bn_only import sweep
    from bnrepro.experiments.bn_only_extras import ARMS, baseline_configs, sweep_groups

    baseline = baseline_configs(profile)
    assert {c.hash() for c in baseline} <= {c.hash() for c in sweep(profile)}
    groups = sweep_groups(profile)
    assert set(groups) == set(ARMS)
    for arm, cfgs in groups.items():
        assert [c.seed for c in cfgs] == [c.seed for c in baseline]
        assert len(cfgs) >= (1 if profile == "smoke" else 3)
        for c, b in zip(cfgs, baseline):
            diff = {k for k, v in c.to_dict().items() if b.to_dict()[k] != v}
            assert diff == {"trainable"} if arm == "shortcut" else diff == {"bn_init"}
            assert c.experiment == "bn_only_extras" and c.hash() != b.hash()


def test_extras_claims_registered_under_their_own_name_only():
    from bnrepro.chapters import bn_only as chapter
    from bnrepro.experiments.bn_only_extras import CLAIMS

    def ids_of(experiment):
        return {s.id for s in registered_claims(experiment)}

    assert ids_of("bn_only_extras") == set(CLAIMS)
    assert not set(CLAIMS) & ids_of("bn_only")
    ids = [s.id for s in chapter.SPECS]
    assert len(ids) == len(set(ids))
    for spec in chapter.CURVE_SPECS + chapter.CHECK_SPECS:  # scored live or from bn_only's runs
        assert spec.id in ids and all(spec.id not in ids_of(e) for e in registered_claims())
    assert all(s.kind == CHECK for s in chapter.CHECK_SPECS)


# --------------------------------------------------------------------------- the curve features
def _epochs(accs, lrs):
    return [{"epoch": i + 1, "test_acc": a, "lr": lr} for i, (a, lr) in enumerate(zip(accs, lrs))]


def test_rise_fraction_and_total_fall():
    from bnrepro.chapters.bn_only import rise_fraction, total_fall

    lrs = [0.1] * 4 + [0.01] * 4
    late = _epochs([0.1, 0.1, 0.12, 0.31, 0.45, 0.5, 0.5, 0.5], lrs)  # halfway level: 0.1 + 0.2 = 0.3
    assert rise_fraction(late) == 4 / 8
    assert rise_fraction(_epochs([0.8, 0.85, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9], lrs)) == 1 / 8
    wobbly = _epochs([0.2, 0.4, 0.3, 0.5, 0.1, 0.6, 0.6, 0.6], lrs)  # the lr-0.1 epochs: 0.2 0.4 0.3 0.5
    assert total_fall(wobbly) == pytest.approx(0.1)  # the fall at 0.5 -> 0.1 is after the lr drop
    assert total_fall(_epochs([0.1, 0.2, 0.3, 0.4, 0.3, 0.2, 0.1, 0.0], lrs)) == 0.0


# --------------------------------------------------------------------------- a run
@needs_fashion_mnist
def test_smoke_run_of_the_shortcut_arm():
    from bnrepro.experiments.bn_only_extras import run, sweep

    cfg = sweep("smoke")[0].replace(n_train=128, n_test=64)
    data = run(cfg, device="cpu").data
    assert data["arm"] == "bn_shortcut" and data["trainable"] == 672 + 16 * 32 + 32 * 64
    assert data["bn_params"] == 672
