"""Tests for bnrepro.nn's BN (closed form, functional, modules, frozen BN, conversion), always against
PyTorch's own batch norm."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnrepro.measure.speed import bn_speed
from bnrepro.nn import (
    BatchNorm,
    BatchNormFunction,
    FrozenBatchNorm,
    batch_norm,
    convert_batchnorm,
    decay_to_momentum,
    freeze_batchnorm,
    momentum_to_decay,
)

SHAPES = [(8, 5), (16, 3), (4, 3, 7), (5, 2, 1), (4, 3, 5, 6), (2, 6, 3, 3), (3, 4, 1, 1)]


def torch_bn(shape, **kw):
    return (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d)(shape[1], **kw)


def randomize(bn, seed=0):
    """Non-trivial affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (bn.weight, bn.bias):
            if p is not None:
                p.copy_(torch.randn(bn.num_features, generator=g))
        if bn.running_mean is not None:
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
            bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
    return bn


def data(shape, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.randn(shape, dtype=dtype) * 3 + 2


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("momentum", [0.1, 0.3])
def test_functional_train_matches_torch(shape, momentum):
    x = data(shape)
    C = shape[1]
    w, b = torch.randn(C), torch.randn(C)
    rm, rv = torch.randn(C), torch.rand(C) + 0.5
    rm2, rv2 = rm.clone(), rv.clone()
    y = batch_norm(x, rm, rv, w, b, training=True, momentum=momentum)
    y_ref = F.batch_norm(x, rm2, rv2, w, b, training=True, momentum=momentum)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rm, rm2)
    torch.testing.assert_close(rv, rv2)


@pytest.mark.parametrize("shape", SHAPES)
def test_functional_eval_and_no_running_stats(shape):
    x = data(shape, seed=1)
    C = shape[1]
    w, b, rm, rv = torch.randn(C), torch.randn(C), torch.randn(C), torch.rand(C) + 0.5
    torch.testing.assert_close(batch_norm(x, rm, rv, w, b), F.batch_norm(x, rm, rv, w, b))
    torch.testing.assert_close(batch_norm(x, None, None, None, None, True),
                               F.batch_norm(x, None, None, None, None, True),
                               rtol=1e-5, atol=1e-5)


def test_functional_argument_errors():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="evaluation mode"):
        batch_norm(x, None, None)
    with pytest.raises(TypeError, match="momentum"):
        batch_norm(x, torch.zeros(3), torch.ones(3), training=True, momentum=None)
    with pytest.raises(ValueError, match="weight"):
        batch_norm(x, None, None, torch.ones(4), training=True)


@pytest.mark.parametrize("shape", [(8, 5), (6, 3, 7), (4, 3, 5, 6)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_module_matches_torch_over_training(shape, momentum):
    ours = BatchNorm(shape[1], momentum=momentum)
    ref = torch_bn(shape, momentum=momentum)
    randomize(ref)
    ours.load_state_dict(ref.state_dict())
    for step in range(20):
        x = data(shape, seed=step) * (1 + step / 10)
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-5, atol=1e-6)
    assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item() == 20
    ours.eval(), ref.eval()
    x = data(shape, seed=99)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_track_running_stats_false():
    shape = (6, 4, 3, 3)
    ours, ref = BatchNorm(4, track_running_stats=False), nn.BatchNorm2d(4, track_running_stats=False)
    assert ours.running_mean is None and ours.num_batches_tracked is None
    assert ours.state_dict().keys() == ref.state_dict().keys()
    x = data(shape)
    for mode in ("train", "eval"):  # eval still uses batch statistics
        getattr(ours, mode)(), getattr(ref, mode)()
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(7, 4), (5, 3, 6), (4, 3, 5, 6), (2, 5, 1, 4)])
@pytest.mark.parametrize("affine", [True, False])
def test_gradients_match_torch(shape, affine):
    ours = BatchNorm(shape[1], affine=affine, dtype=torch.float64)
    ref = torch_bn(shape, affine=affine, dtype=torch.float64)
    if affine:
        randomize(ref)
        ours.load_state_dict(ref.state_dict())
    x1 = data(shape, dtype=torch.float64).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    dy = torch.randn(shape, dtype=torch.float64)
    y1 = ours(x1)
    assert "BatchNormFunction" in type(y1.grad_fn).__name__  # closed form, not autograd
    y1.backward(dy)
    ref(x2).backward(dy)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-10)
    if affine:
        torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", [(6, 3), (3, 2, 4), (3, 2, 3, 2)])
@pytest.mark.parametrize("with_affine", [True, False])
def test_gradcheck_function(shape, with_affine):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    C = shape[1]
    w = torch.randn(C, dtype=torch.float64, requires_grad=True) if with_affine else None
    b = torch.randn(C, dtype=torch.float64, requires_grad=True) if with_affine else None
    inputs = (x, w, b) if with_affine else (x,)
    def fn(x, w=None, b=None):
        return BatchNormFunction.apply(x, w, b, 1e-5)[0]
    assert torch.autograd.gradcheck(fn, inputs)


def test_inplace_op_after_non_affine_output():
    x1 = data((5, 3, 4)).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    BatchNorm(3, affine=False)(x1).relu_().sum().backward()
    nn.BatchNorm1d(3, affine=False)(x2).relu_().sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("affine", [True, False])
def test_state_dict_round_trip(affine):
    ref = randomize(nn.BatchNorm2d(5, affine=affine))
    ref.num_batches_tracked.fill_(7)
    ours = BatchNorm(5, affine=affine)
    ours.load_state_dict(ref.state_dict())
    assert list(ours.state_dict().keys()) == list(ref.state_dict().keys())
    assert ours.num_batches_tracked.item() == 7
    ours.running_mean.add_(1.0)  # change ours, then load it back into torch's
    back = nn.BatchNorm2d(5, affine=affine)
    back.load_state_dict(ours.state_dict())
    x = data((3, 5, 2, 2))
    ours.eval(), back.eval()
    torch.testing.assert_close(ours(x), back(x))
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]


def test_batch_of_one():
    x = torch.randn(1, 4)
    bn = BatchNorm(4)
    with pytest.raises(ValueError, match=r"more than 1 value per channel") as err:
        bn(x)
    assert "model.eval()" in str(err.value) and "batch size" in str(err.value)
    assert bn.num_batches_tracked.item() == 0
    with pytest.raises(ValueError, match="model.eval()"):
        BatchNorm(4)(torch.randn(1, 4, 1, 1))
    ref = randomize(nn.BatchNorm1d(4)).eval()
    bn.load_state_dict(ref.state_dict())
    bn.eval()
    torch.testing.assert_close(bn(x), ref(x))
    assert bn(torch.randn(1, 4, 1, 1)).shape == (1, 4, 1, 1)
    BatchNorm(4).train()(torch.randn(1, 4, 2))  # two values per channel is fine


def test_input_dim_checked():
    with pytest.raises(ValueError, match="5D"):
        BatchNorm(3)(torch.randn(2, 3, 2, 2, 2))


def trained_bn(cls=nn.BatchNorm2d, **kw):
    bn = randomize(cls(4, **kw))
    for s in range(3):
        bn(data((6, 4, 3, 3), seed=s))
    return bn


@pytest.mark.parametrize("source", [nn.BatchNorm2d, BatchNorm])
def test_frozen_equals_source_in_eval(source):
    bn = trained_bn(source).eval()
    frozen = FrozenBatchNorm.from_module(bn)
    x = data((3, 4, 5, 5), seed=5)
    torch.testing.assert_close(frozen(x), bn(x))
    frozen.train()
    torch.testing.assert_close(frozen(x), bn(x))
    assert list(frozen.parameters()) == []
    assert not any(t.requires_grad for t in frozen.buffers())


def test_frozen_non_affine_and_errors():
    bn = trained_bn(nn.BatchNorm2d, affine=False).eval()
    x = data((3, 4, 5, 5), seed=5)
    torch.testing.assert_close(FrozenBatchNorm.from_module(bn)(x), bn(x))
    with pytest.raises(ValueError, match="running statistics"):
        FrozenBatchNorm.from_module(nn.BatchNorm2d(4, track_running_stats=False))
    frozen = FrozenBatchNorm(4)
    frozen.load_state_dict(trained_bn().state_dict())  # num_batches_tracked dropped


@pytest.mark.parametrize("mode", ["mean_only", "var_only"])
def test_frozen_from_ablation_modes(mode):
    bn = trained_bn(BatchNorm, mode=mode).eval()
    x = data((3, 4, 5, 5), seed=5)
    torch.testing.assert_close(FrozenBatchNorm.from_module(bn)(x), bn(x))


def test_freeze_batchnorm_model():
    torch.manual_seed(0)
    shared = trained_bn()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), shared, nn.ReLU(),
                          nn.Sequential(nn.Conv2d(4, 4, 1), trained_bn(), shared))
    ref = copy.deepcopy(model).eval()
    freeze_batchnorm(model).train()
    assert isinstance(model[1], FrozenBatchNorm) and model[1] is model[3][2]
    assert isinstance(model[3][1], FrozenBatchNorm)
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(model(x), ref(x))
    model(x).sum().backward()
    assert model[0].weight.grad is not None  # gradients still flow through
    assert isinstance(freeze_batchnorm(nn.BatchNorm1d(3)), FrozenBatchNorm)


def test_convert_batchnorm_keeps_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(64, 5), nn.BatchNorm1d(5, momentum=None))
    x = torch.randn(8, 3, 6, 6)
    for _ in range(3):
        model(x + torch.randn_like(x))
    ref = copy.deepcopy(model)
    convert_batchnorm(model)
    assert isinstance(model[1], BatchNorm) and isinstance(model[5], BatchNorm)
    assert model[5].momentum is None and model[1].training
    torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)  # train mode
    model.eval(), ref.eval()
    torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=1e-5, atol=1e-6)


def test_momentum_decay_conversion():
    assert momentum_to_decay(0.1) == pytest.approx(0.9)
    assert decay_to_momentum(0.99) == pytest.approx(0.01)
    assert momentum_to_decay(0) == 1.0 and decay_to_momentum(1) == 0.0
    assert decay_to_momentum(momentum_to_decay(0.37)) == pytest.approx(0.37)
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="momentum"):
            momentum_to_decay(bad)
        with pytest.raises(ValueError, match="decay"):
            decay_to_momentum(bad)


def test_mean_only_and_var_only():
    x = data((32, 3, 4, 4))
    dims = (0, 2, 3)
    mean, std = x.mean(dims), x.var(dims, unbiased=False).sqrt()
    y = BatchNorm(3, mode="mean_only", eps=0.0)(x)
    torch.testing.assert_close(y.mean(dims), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dims, unbiased=False).sqrt(), std)  # not rescaled
    bn = BatchNorm(3, mode="var_only", eps=0.0)
    y = bn(x)
    torch.testing.assert_close(y.mean(dims), mean / std)  # not centred
    torch.testing.assert_close(y.var(dims, unbiased=False).sqrt(), torch.ones(3))
    ref = nn.BatchNorm2d(3)
    ref(x)  # same running-stat update as the full mode
    torch.testing.assert_close(bn.running_var, ref.running_var)
    bn.eval()
    torch.testing.assert_close(bn(x), x / ref.running_var.view(1, 3, 1, 1).sqrt())
    assert "var_only" in repr(bn)
    with pytest.raises(ValueError, match="mode"):
        BatchNorm(3, mode="both")


def test_reset_parameters_and_repr():
    bn = BatchNorm(4)
    bn.load_state_dict(trained_bn().state_dict())
    bn.reset_parameters()
    fresh = nn.BatchNorm2d(4)
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(bn.state_dict()[k], v)
    assert repr(bn) == repr(fresh).replace("BatchNorm2d", "BatchNorm")


def test_bn_speed_tiny():
    r = bn_speed(shape=(4, 3, 5, 5), repeats=3, warmup=1)
    assert r["ratio"] > 0 and r["ours_ms"] > 0 and r["torch_ms"] > 0
    assert r["shape"] == (4, 3, 5, 5) and r["device"] == "cpu" and r["threads"] >= 1
    before = torch.get_num_threads()
    r = bn_speed(shape=(8, 3), repeats=2, warmup=0, threads=1)
    assert r["ratio"] > 0 and r["threads"] == 1 and torch.get_num_threads() == before


def test_bias_false_keyword():
    ref = randomize(nn.BatchNorm2d(4, bias=False))
    ours = BatchNorm(4, bias=False)
    ours.load_state_dict(ref.state_dict())
    assert ours.bias is None and ours.state_dict().keys() == ref.state_dict().keys()
    x1 = data((5, 4, 3, 3)).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    ours(x1).square().sum().backward()
    ref(x2).square().sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    converted = convert_batchnorm(nn.Sequential(ref))[0]
    assert isinstance(converted, BatchNorm) and converted.bias is None


def test_conv_speed_compares_variants_from_identical_weights():
    from bnrepro.measure.speed import conv_speed

    r = conv_speed("LeNet (BN)", batch_size=4, steps=1, warmup=0, variants=("eager", "channels_last"))
    assert set(r["ms"]) == {"eager", "channels_last"} and r["speedup"]["eager"] == 1.0
    assert r["grad_err"]["eager"] < 1e-5 and r["grad_err"]["channels_last"] < 1e-4
    assert r["loss_diff"]["channels_last"] < 1e-5
    assert r["pool_flips"] == {"eager": 0, "channels_last": 0}  # LeNet averages: no max-pool to flip


def test_first_step_records_which_input_each_max_pool_window_picks():
    """A near-tie decided the other way moves the window's gradient to the other input: the flip counted."""
    from bnrepro.measure.speed import _first_step

    torch.manual_seed(0)
    model = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1, 2))
    y = torch.tensor([0])
    a = torch.tensor([[[[1.0, 1.0 + 1e-6], [0.0, 0.0]]]])
    b = torch.tensor([[[[1.0 + 1e-6, 1.0], [0.0, 0.0]]]])
    (_, ga, pa), (_, gb, pb) = _first_step(model, model, a, y), _first_step(model, model, b, y)
    assert int(pa[0]) == 1 and int(pb[0]) == 0
    assert torch.allclose(ga, gb, atol=1e-5)  # parameter gradients barely move; the input's gradient would
