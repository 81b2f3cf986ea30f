"""Freezing arms, BN initialisers and the CIFAR ResNet of the chapter "Training only BatchNorm"."""

import math

import pytest
import torch
from torch import nn

from bnrepro.core.config import ConfigError
from bnrepro.data.datasets import TensorData
from bnrepro.models import MODELS, build_model, cifar_resnet, vgg_bn
from bnrepro.nn.freeze import (
    BN_INITS,
    FREEZINGS,
    apply_freezing,
    batchnorm_parameter_names,
    bn_gammas,
    init_batchnorm,
    train_all,
    train_only_bn,
    train_only_output,
    train_random_per_channel,
)
from bnrepro.training.loop import train
from conftest import needs_fashion_mnist

# Tiny tensors: one intra-op thread is faster, and far faster on a busy shared CPU.
pytestmark = pytest.mark.usefixtures("one_thread")


def _bn_entries(model: nn.Module) -> int:
    """Independent count: 2 per channel of every nn.BatchNorm2d."""
    return sum(2 * m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def _random_data(n=32, size=8, channels=1, seed=0) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, size, size, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return TensorData("random", x, y, x[:8], y[:8], [str(i) for i in range(10)], "test", (0.0,), (1.0,))


# --------------------------------------------------------------------------- the network
@pytest.mark.parametrize("depth, expected", [(14, 1_120), (110, 8_288)])
def test_bn_parameter_counts_match_the_paper(depth, expected):
    model = cifar_resnet(depth)
    assert train_only_bn(model).count == expected
    assert _bn_entries(model) == expected


@pytest.mark.parametrize("depth", [8, 14, 20, 32, 56])
@pytest.mark.parametrize("width", [4, 16])
def test_bn_only_trains_exactly_the_bn_entries(depth, width):
    model = cifar_resnet(depth, width=width, in_channels=1)
    trainable = train_only_bn(model)
    d = (depth - 2) // 6
    assert trainable.count == _bn_entries(model) == 2 * width * (7 + 14 * d)  # stem + 3 stages + 2 shortcuts
    assert set(trainable.names) == set(batchnorm_parameter_names(model))
    assert all(p.requires_grad == (n in trainable.names) for n, p in model.named_parameters())
    with_output = train_only_bn(model, output_layer=True)
    assert with_output.count == trainable.count + 4 * width * 10 + 10


def test_resnet_structure_follows_open_lth():
    model = cifar_resnet(20, width=16, num_classes=7, in_channels=3)
    assert len(model.blocks) == 9
    assert [b.conv1.out_channels for b in model.blocks] == [16] * 3 + [32] * 3 + [64] * 3
    assert [b.conv1.stride[0] for b in model.blocks] == [1, 1, 1, 2, 1, 1, 2, 1, 1]
    shortcuts = [i for i, b in enumerate(model.blocks) if len(b.shortcut)]
    assert shortcuts == [3, 6]  # 1x1 conv + BN where the stage changes
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 7)
    # Kaiming normal (fan_in, ReLU gain): std of a 64-channel 3x3 conv is sqrt(2 / 576).
    w = model.blocks[8].conv2.weight
    assert abs(w.std().item() - math.sqrt(2 / 576)) < 0.05 * math.sqrt(2 / 576)


@pytest.mark.parametrize("depth", [0, 2, 7, 15, 21, -4, "14", 14.0, True])
def test_bad_depth_is_a_clear_error(depth):
    with pytest.raises(ValueError, match=r"6\*D \+ 2"):
        cifar_resnet(depth)


def test_bad_depth_in_the_config_names_the_field():
    from bnrepro.experiments.bn_only import BNOnlyConfig

    with pytest.raises(ConfigError, match=r"^depth=15: .*6\*D \+ 2"):
        BNOnlyConfig.for_profile("smoke", depth=15)


def test_models_are_registered_and_vgg_counts():
    assert build_model("cifar_resnet", depth=8).depth == 8
    model = vgg_bn("small", width=16, in_channels=1)
    assert MODELS["vgg_bn"] is type(model)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert train_only_bn(model).count == _bn_entries(model) == 2 * (16 + 32 + 64 + 128)


def test_bn_only_needs_bn():
    with pytest.raises(ValueError, match="no BN layer"):
        train_only_bn(cifar_resnet(8, norm="none"))
    with pytest.raises(ValueError, match="not one of"):
        apply_freezing(cifar_resnet(8), "everything")


def test_the_book_batchnorm_counts_too():
    model = cifar_resnet(8, norm="bnrepro")
    assert train_only_bn(model).count == 2 * 16 * 21


# --------------------------------------------------------------------------- frozen stays frozen
@pytest.mark.parametrize("arm", ["bn", "bn_output", "output", "random"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_frozen_tensors_are_bit_identical_after_training(arm, optimizer):
    torch.manual_seed(0)
    model = cifar_resnet(8, width=2, in_channels=1)
    init_batchnorm(model, "uniform", seed=0)
    trainable = apply_freezing(model, arm, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    effective_before = {n: m.weight.detach().clone() for n, m in model.named_modules()
                        if isinstance(m, nn.Conv2d)}
    # Large weight decay and momentum: any leak onto a frozen tensor would show.
    hist = train(model, _random_data(), epochs=2, batch_size=8, lr=0.1, optimizer=optimizer,
                 momentum=0.9, weight_decay=0.05, seed=0, eval_every_epoch=False, device="cpu")
    assert not hist.diverged and hist.total_steps == 8
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == set(trainable.names)
    if arm == "random":  # the effective conv weights move at the 2 chosen entries per channel only
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d):
                moved = (m.weight.detach() != effective_before[name]).flatten(1).sum(1)
                assert (moved <= 2).all() and moved.sum() > 0


def test_random_baseline_trains_as_many_scalars_as_bn():
    for depth in (8, 14, 32):
        model = cifar_resnet(depth, in_channels=1)
        trainable = train_random_per_channel(model, 2, seed=3)
        assert trainable.count == _bn_entries(model)
        assert all(n.endswith("weight.0.values") for n in trainable.names)
        assert not any(p.requires_grad for n, p in model.named_parameters() if "bn" in n)
    model = cifar_resnet(8, in_channels=1)
    assert train_random_per_channel(model, output_layer=True).count == _bn_entries(model) + 64 * 10 + 10
    with pytest.raises(ValueError, match="parametrized already"):
        train_random_per_channel(model)


def test_random_baseline_starts_from_the_same_network():
    torch.manual_seed(1)
    model = cifar_resnet(8, in_channels=1)
    x = torch.randn(4, 1, 12, 12)
    model.eval()
    out = model(x)
    train_random_per_channel(model, seed=0)
    assert torch.equal(model(x), out)  # the chosen entries start at their random values


def test_a_gradient_mask_alone_would_not_freeze_under_weight_decay():
    """Why train_random_per_channel re-parametrizes: masking gradients leaves weight decay."""
    conv = nn.Conv2d(3, 4, 3)
    mask = torch.zeros_like(conv.weight)
    mask.flatten(1)[:, :2] = 1
    conv.weight.register_hook(lambda g: g * mask)
    before = conv.weight.detach().clone()
    opt = torch.optim.SGD([conv.weight], lr=0.1, weight_decay=0.1)
    conv(torch.randn(2, 3, 5, 5)).sum().backward()
    opt.step()
    frozen = mask == 0
    assert not torch.equal(conv.weight.detach()[frozen], before[frozen])


# --------------------------------------------------------------------------- initialisers
def _gammas(name, channels=20_000, seed=0):
    model = nn.Sequential(nn.Conv2d(1, channels, 1), nn.BatchNorm2d(channels))
    model[1].bias.data.fill_(3.0)
    init_batchnorm(model, name, seed=seed)
    assert torch.equal(model[1].bias.detach(), torch.zeros(channels))  # beta always starts at 0
    return bn_gammas(model)


def _ks_distance(sample: torch.Tensor, cdf) -> float:
    x, _ = sample.sort()
    n = len(x)
    return float((torch.arange(1, n + 1) / n - cdf(x)).abs().max())


def test_initialisers_have_the_stated_distributions():
    assert set(BN_INITS) == {"uniform", "fixed", "he_normal", "positivenegative", "zero", "zero_residual"}
    assert torch.equal(_gammas("zero", 100), torch.zeros(100))
    n = 20_000
    crit = 1.63 / math.sqrt(n)  # Kolmogorov-Smirnov, 1% level
    g = _gammas("fixed", n)
    assert torch.equal(g, torch.ones(n))
    g = _gammas("uniform", n)
    assert 0 <= g.min() and g.max() <= 1 and _ks_distance(g, lambda x: x) < crit
    g = _gammas("positivenegative", n)
    assert -1 <= g.min() and g.max() <= 1 and _ks_distance(g, lambda x: (x + 1) / 2) < crit
    # Keras he_normal on a vector of C channels: std sqrt(2/C), truncated at two of the
    # underlying normal's standard deviations (sqrt(2/C) / 0.8796).
    g = _gammas("he_normal", n)
    sd = math.sqrt(2 / n)
    assert abs(g.std().item() - sd) < 0.03 * sd and abs(g.mean().item()) < 0.03 * sd
    assert g.abs().max() <= 2 * sd / 0.87962566 + 1e-9
    assert 0.03 < (g.abs() > 2 * sd).float().mean() < 0.07  # the tails a truncated normal keeps


def test_initialisers_are_seeded_and_named():
    assert torch.equal(_gammas("uniform", 100, seed=5), _gammas("uniform", 100, seed=5))
    assert not torch.equal(_gammas("uniform", 100, seed=5), _gammas("uniform", 100, seed=6))
    with pytest.raises(ValueError, match="bn_init='ones'"):
        init_batchnorm(cifar_resnet(8), "ones")


def test_arm_registry_is_complete():
    model = cifar_resnet(8)
    assert train_all(model).count == sum(p.numel() for p in model.parameters())
    assert train_only_output(model).count == 64 * 10 + 10
    assert {"all", "bn", "bn_output", "output", "random", "random_output"} <= set(FREEZINGS)


# --------------------------------------------------------------------------- the random control
def _learnable_data(n=64, size=8, seed=0) -> TensorData:
    """Labels that a random ResNet's features can tell apart: the class sets the mean brightness."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 1, size, size, generator=g) + 2.0 * y.view(-1, 1, 1, 1).float()
    return TensorData("learnable", x, y, x[:16], y[:16], ["dark", "bright"], "test", (0.0,), (1.0,))


def test_the_random_control_learns_when_its_weights_can_matter():
    """The 2-random-weights-per-channel arm is not broken: its trainable scalars receive gradient
    and training them lowers the training loss on data its random features can separate."""
    torch.manual_seed(0)
    model = cifar_resnet(8, width=4, num_classes=2, in_channels=1)
    init_batchnorm(model, "uniform", seed=0)
    trainable = apply_freezing(model, "random", seed=0)
    data = _learnable_data()
    loss0 = nn.functional.cross_entropy(model(data.x_train), data.y_train)
    loss0.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert len(grads) == len(trainable.names) and all(g is not None and g.abs().sum() > 0 for g in grads)
    model.zero_grad()
    hist = train(model, data, epochs=30, batch_size=16, lr=0.1, momentum=0.9, seed=0,
                 eval_every_epoch=False, device="cpu")
    assert not hist.diverged
    first, last = hist.epochs[0]["train_loss"], hist.epochs[-1]["train_loss"]
    assert last < 0.8 * first


# --------------------------------------------------------------------------- the experiment
@needs_fashion_mnist
def test_experiment_smoke_run_records_what_the_chapter_reads():
    from bnrepro.experiments.bn_only import BNOnlyConfig, run

    cfg = BNOnlyConfig.for_profile("smoke", n_train=128, n_test=64)
    result = run(cfg, device="cpu")
    data = result.data
    assert data["trainable"] == data["bn_params"] == 2 * 16 * 21
    assert len(data["gammas"]) == len(data["gammas_init"]) == sum(data["bn_layer_sizes"]) == 16 * 21
    analysis = data["gamma_analysis"]
    assert [a["threshold"] for a in analysis] == list(cfg.gamma_thresholds)
    for a in analysis:  # the initialisation control: U[0, 1] puts about a fraction t below t
        assert a["frac_small_init"] == sum(abs(g) < a["threshold"] for g in data["gammas_init"]) / 336
        assert {"acc_small_off", "acc_random_off", "acc_init_small_off"} <= set(a)
    assert data["image_size"] == 14 and data["recipe"] == "paper"


@needs_fashion_mnist
def test_output_probe_trains_only_the_output_layer_on_cached_features():
    from bnrepro.experiments.bn_only import BNOnlyConfig, run

    cfg = BNOnlyConfig.for_profile("smoke", n_train=256, n_test=128, trainable="output", probe_epochs=20)
    data = run(cfg, device="cpu").data
    assert data["trainable"] == 64 * 10 + 10
    assert data["gammas"] == data["gammas_init"]  # BN untouched
    epochs = data["history"]["epochs"]
    assert len(epochs) == 20 and epochs[-1]["train_loss"] < epochs[0]["train_loss"]


def test_population_statistics_are_what_the_running_averages_estimate():
    from bnrepro.experiments.bn_only import _population_statistics

    torch.manual_seed(0)
    model = cifar_resnet(8, width=4, in_channels=1)
    x = torch.randn(64, 1, 8, 8) * 3 + 1
    _population_statistics(model, x, batch_size=64)  # one batch: exactly that batch's statistics
    bn = model.bn
    h = model.conv(x)
    assert torch.allclose(bn.running_mean, h.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, h.var((0, 2, 3), unbiased=True), rtol=1e-4)
    assert bn.momentum == 0.1  # restored


def test_sweep_has_three_seeds_at_every_point_of_the_cpu_profile():
    from bnrepro.experiments.bn_only import sweep, sweep_groups

    groups = sweep_groups("cpu")
    for name, cfgs in groups.items():
        points = {}
        for c in cfgs:
            points.setdefault((c.trainable, c.depth, c.bn_init), set()).add(c.seed)
        assert all(len(seeds) >= 3 for seeds in points.values()), name
    assert {c.trainable for c in groups["arms"]} == {"bn", "random", "all", "output"}
    assert len(sweep("cpu")) == len({c.hash() for cfgs in groups.values() for c in cfgs})
