"""bnrepro.nn.BatchNorm as a drop-in, tried the way an outside user would: second
derivatives, half precision, torch.func, PyTorch's BN utilities, conversion corner cases,
input checks. Always against PyTorch's own batch norm."""

import warnings

import pytest
import torch
from torch import nn

from bnrepro.distributed.launch import launch
from bnrepro.nn import BatchNorm, batch_norm, convert_batchnorm, freeze_batchnorm
from bnrepro.nn.ghost import GhostBatchNorm, convert_ghost_batchnorm
from bnrepro.nn.sync_bn import SyncBatchNorm

F64 = dict(dtype=torch.float64)


def pair(C=3, dim=2, seed=0, **kw):
    """(ours, PyTorch's) with the same random affine parameters, float64."""
    ref = (nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d)(C, **F64, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if ref.weight is not None:
            ref.weight.copy_(torch.rand(C, generator=g, **F64) + 0.5)
            ref.bias.copy_(torch.randn(C, generator=g, **F64))
    ours = BatchNorm(C, **F64, **kw)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def x_like(shape, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 1).to(dtype)


# --------------------------------------------------------------------------- second derivatives
@pytest.mark.parametrize("shape", [(6, 3), (3, 2, 4), (3, 2, 3, 2)])
@pytest.mark.parametrize("affine", [True, False])
def test_gradgradcheck_training_mode(shape, affine):
    x = x_like(shape).requires_grad_()
    C = shape[1]
    w = (torch.rand(C, **F64) + 0.5).requires_grad_() if affine else None
    b = torch.randn(C, **F64, requires_grad=True) if affine else None
    inputs = (x, w, b) if affine else (x,)
    def fn(x, w=None, b=None):
        return batch_norm(x, None, None, w, b, training=True)
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def _hvp(model, x, v_seed=3):
    """Hessian-vector product of a cubic loss w.r.t. the parameters and the input."""
    params = [x] + list(model.parameters())
    loss = (model(x) ** 3).sum() + (model(x * 0.5).sin()).sum()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(v_seed)
    vs = [torch.randn(p.shape, generator=g, **F64) for p in params]
    return torch.autograd.grad(sum((gr * v).sum() for gr, v in zip(grads, vs)), params)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("dim", [1, 2])
def test_hessian_vector_product_matches_torch(train, dim):
    ours, ref = pair(dim=dim)
    ours.train(train), ref.train(train)
    shape = (5, 3, 2, 2) if dim == 2 else (6, 3)
    x1, x2 = x_like(shape).requires_grad_(), x_like(shape).requires_grad_()
    for a, b in zip(_hvp(ours, x1), _hvp(ref, x2), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_gradient_penalty_matches_torch():
    """||d(c.y)/dx||^2 with a constant upstream gradient c: the penalty's own gradient."""
    ours, ref = pair()
    c = x_like((4, 3, 2, 2), seed=5)
    out = []
    for m in (ours, ref):
        x = x_like((4, 3, 2, 2)).requires_grad_()
        (gx,) = torch.autograd.grad((c * m(x)).sum(), x, create_graph=True)
        penalty = gx.square().sum()
        out.append(torch.autograd.grad(penalty, [x, m.weight]))
    assert out[1][1].abs().max() > 1e-3  # the penalty does depend on gamma
    for a, b in zip(*out, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_ghost_bn_second_derivatives_are_plain_bn_per_chunk():
    ghost = GhostBatchNorm(3, 4, **F64)
    plain = nn.BatchNorm2d(3, **F64)
    ghost.load_state_dict(plain.state_dict())
    for stats_update in ("sequential", "first"):
        ghost.stats_update = stats_update
        x1, x2 = x_like((10, 3, 2, 2)).requires_grad_(), x_like((10, 3, 2, 2)).requires_grad_()

        def f(m, x):
            return torch.cat([m(c) for c in x.split([4, 4, 2])]) if m is plain else m(x)

        res = []
        for m, x in ((ghost, x1), (plain, x2)):
            (gx,) = torch.autograd.grad((f(m, x) ** 3).sum(), x, create_graph=True)
            res.append(torch.autograd.grad(gx.square().sum(), [x, m.weight, m.bias]))
        for a, b in zip(*res, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def _sync_penalty(rank, world, x, rows):
    torch.manual_seed(0)
    bn = SyncBatchNorm(3, **F64)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 2.0, 1.5], **F64))
    xl = x[rows[rank]].clone().requires_grad_()
    (gx,) = torch.autograd.grad((bn(xl) ** 3).sum(), xl, create_graph=True)
    gw = torch.autograd.grad(gx.square().sum(), [xl, bn.weight])
    return [t.detach() for t in gw]


def test_sync_bn_second_derivatives_over_two_ranks_are_full_batch_bn():
    """Each rank's part of the penalty ||dL/dx||^2 (L = sum over ranks), differentiated:
    the input gradient is its rows of the full-batch one; the weight gradients sum to it."""
    x = x_like((7, 3, 2, 2))
    rows = [slice(0, 4), slice(4, 7)]
    ranks = launch(_sync_penalty, 2, (x, rows), timeout=60)
    ref = nn.BatchNorm2d(3, **F64)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor([0.5, 2.0, 1.5], **F64))
    xr = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad((ref(xr) ** 3).sum(), xr, create_graph=True)
    # Rank r's penalty is ||gx[rows_r]||^2: their sum is the full penalty.
    dx, dw = torch.autograd.grad(gx.square().sum(), [xr, ref.weight])
    torch.testing.assert_close(torch.cat([r[0] for r in ranks]), dx, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(ranks[0][1] + ranks[1][1], dw, rtol=1e-9, atol=1e-10)


# --------------------------------------------------------------------------- half precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("module_dtype", ["float32", "same"])
def test_half_input_far_from_its_mean(dtype, module_dtype):
    """Squares of |x - mean| > 256 overflow float16: statistics must be taken in float32.
    Checked against float64 BN on the same (rounded) input, and against PyTorch, which
    matches the float32-module case; with a half module ours stays float32-accurate."""
    x = (x_like((16, 3), dtype=torch.float32) + 1000).to(dtype)
    truth = nn.BatchNorm1d(3, **F64)
    xt = x.double().requires_grad_()
    ours, ref = BatchNorm(3), nn.BatchNorm1d(3)
    if module_dtype == "same":
        ours, ref = ours.to(dtype), ref.to(dtype)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2, yt = ours(x1), ref(x2), truth(xt)
    assert y1.dtype == dtype and x1.dtype == dtype
    tol = 5e-3 if dtype == torch.float16 else 3e-2  # a few units in the last place at |y| ~ 2
    torch.testing.assert_close(y1.double(), yt, rtol=0, atol=tol)
    torch.testing.assert_close(ours.running_var.double(), truth.running_var, rtol=0, atol=tol)
    torch.testing.assert_close(ours.running_mean.double(), truth.running_mean, rtol=tol, atol=0)
    dy = x_like((16, 3), seed=4, dtype=dtype)
    y1.backward(dy), y2.backward(dy), yt.backward(dy.double())
    assert x1.grad.dtype == dtype
    torch.testing.assert_close(x1.grad.double(), xt.grad, rtol=0, atol=tol)
    torch.testing.assert_close(ours.weight.grad.double(), truth.weight.grad, rtol=0, atol=tol * 10)
    if module_dtype == "float32":  # PyTorch's float32 statistics: the same numbers, up to rounding
        torch.testing.assert_close(y1.double(), y2.double(), rtol=0, atol=tol)
        torch.testing.assert_close(x1.grad.double(), x2.grad.double(), rtol=0, atol=tol)
    ours.eval(), truth.eval()  # |y| ~ 900 / 3 here: the running statistics' rounding, relative
    torch.testing.assert_close(ours(x).double(), truth(x.double()), rtol=1e-2, atol=tol)


def _sync_half(rank, world, x, rows):
    bn = SyncBatchNorm(3)
    y = bn(x[rows[rank]].clone())
    return y, bn.running_var


def test_sync_bn_half_input_over_two_ranks():
    x = (x_like((8, 3), dtype=torch.float32) + 1000).half()
    rows = [slice(0, 5), slice(5, 8)]
    ranks = launch(_sync_half, 2, (x, rows), timeout=60)
    truth = nn.BatchNorm1d(3, **F64)
    yt = truth(x.double())
    y = torch.cat([r[0] for r in ranks])
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.double(), yt.detach(), rtol=0, atol=5e-3)
    torch.testing.assert_close(ranks[0][1].double(), truth.running_var, rtol=0, atol=5e-3)


def test_float16_autocast():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    ours, ref = BatchNorm(3), nn.BatchNorm1d(3)
    x = torch.randn(32, 4) * 100 + 500
    with torch.autocast("cpu", dtype=torch.float16):
        h = lin(x)
        assert h.dtype == torch.float16
        y1, y2 = ours(h), ref(h)
    assert torch.isfinite(y1).all() and torch.isfinite(ours.running_var).all()
    torch.testing.assert_close(y1.float(), y2.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=2e-2, atol=1e-2)


# --------------------------------------------------------------------------- torch.func
def test_torch_func_transforms_in_training_mode():
    from torch.func import functional_call, grad, hessian, jacrev, jvp, replace_all_batch_norm_modules_, vmap

    ours, ref = pair(dim=1)
    # Under a transform the running statistics cannot be updated in place (for PyTorch's
    # BN either): the documented way is to drop them, which also works for ours.
    replace_all_batch_norm_modules_(ours), replace_all_batch_norm_modules_(ref)
    x = x_like((6, 3))
    params = {k: v.detach() for k, v in ours.named_parameters()}

    def loss(m, p, x):
        return (functional_call(m, p, (x,)) ** 3).sum()

    for f in (lambda m, x: grad(loss, argnums=2)(m, params, x),
              lambda m, x: grad(loss, argnums=1)(m, params, x)["weight"],
              lambda m, x: jacrev(lambda x: functional_call(m, params, (x,)))(x),
              lambda m, x: jvp(lambda x: functional_call(m, params, (x,)), (x,), (torch.ones_like(x),))[1],
              lambda m, x: hessian(lambda x: loss(m, params, x))(x),
              lambda m, x: vmap(lambda xb: functional_call(m, params, (xb,)))(x.view(2, 3, 3))):
        torch.testing.assert_close(f(ours, x), f(ref, x), rtol=1e-9, atol=1e-10)
    # An ensemble: one batch through a stack of parameter sets (vmap over the weights).
    stacked = {k: torch.stack([v, 2 * v]) for k, v in params.items()}
    def ens(m):
        return vmap(lambda p: grad(loss, argnums=1)(m, p, x)["weight"])(stacked)
    torch.testing.assert_close(ens(ours), ens(ref), rtol=1e-9, atol=1e-10)


# --------------------------------------------------------------------------- PyTorch's BN utilities
def test_pytorch_bn_utilities_see_it():
    from torch.func import replace_all_batch_norm_modules_
    from torch.optim.swa_utils import update_bn

    assert isinstance(BatchNorm(3), nn.modules.batchnorm._BatchNorm)
    loader = [x_like((8, 3), seed=s) for s in range(3)]
    ours, ref = pair(dim=1)
    update_bn(loader, nn.Sequential(ours)), update_bn(loader, nn.Sequential(ref))
    assert int(ours.num_batches_tracked) == 3
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=1e-12, atol=1e-12)

    synced = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(ours))[0]
    assert type(synced) is nn.SyncBatchNorm
    torch.testing.assert_close(synced.running_var, ours.running_var)

    ours, ref = pair(dim=1)
    replace_all_batch_norm_modules_(ours), replace_all_batch_norm_modules_(ref)
    assert ours.running_mean is None and not ours.track_running_stats
    x = x_like((8, 3))
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- "is this a BN layer"
def test_one_bn_layer_predicate_everywhere():
    """nn.is_batchnorm: every layer normalizing with batch statistics, not frozen BN or other norms;
    the package's BN-layer lists are that test plus what each needs (running statistics, gamma)."""
    from bnrepro.measure.population_stats import bn_layers
    from bnrepro.models import has_batchnorm
    from bnrepro.nn import FrozenBatchNorm, batchnorm_layers, is_batchnorm

    bns = [nn.BatchNorm1d(3), nn.BatchNorm2d(3), nn.BatchNorm3d(3), nn.SyncBatchNorm(3), nn.LazyBatchNorm1d(),
           BatchNorm(3), BatchNorm(3, mode="mean_only"), GhostBatchNorm(3, 2), SyncBatchNorm(3)]
    others = [FrozenBatchNorm(3), nn.LayerNorm(3), nn.GroupNorm(1, 3), nn.InstanceNorm1d(3), nn.Identity()]
    assert all(is_batchnorm(m) for m in bns) and not any(is_batchnorm(m) for m in others)
    model = nn.Sequential(nn.BatchNorm1d(3), BatchNorm(3), GhostBatchNorm(3, 2), FrozenBatchNorm(3),
                          nn.BatchNorm1d(3, affine=False), nn.BatchNorm1d(3, track_running_stats=False))
    assert [name for name, _ in bn_layers(model)] == ["0", "1", "2", "4"]  # with running statistics
    assert [name for name, _ in batchnorm_layers(model)] == ["0", "1", "2", "5"]  # with gamma and beta
    assert has_batchnorm(model) and not has_batchnorm(nn.Sequential(FrozenBatchNorm(3), nn.LayerNorm(3)))


# --------------------------------------------------------------------------- conversion
class MyBN(nn.BatchNorm2d):
    """A user's BN with behaviour of its own."""

    def forward(self, x):
        return super().forward(x) * 2


def test_conversion_keeps_a_layer_tied_within_one_parent():
    for convert, kind in ((convert_batchnorm, BatchNorm), (lambda m: convert_ghost_batchnorm(m, 4), GhostBatchNorm),
                          (freeze_batchnorm, nn.Module)):
        net = nn.Module()
        net.a = nn.BatchNorm2d(3)
        net.b = net.a
        convert(net)
        assert net.a is net.b and isinstance(net.a, kind) and not isinstance(net.a, nn.BatchNorm2d)


def test_conversion_leaves_a_subclass_alone_with_a_warning():
    net = nn.Sequential(nn.Conv2d(1, 3, 1), MyBN(3), nn.Sequential(nn.BatchNorm2d(3)))
    for convert in (convert_batchnorm, lambda m: convert_ghost_batchnorm(m, 4)):
        with pytest.warns(UserWarning, match=r"left 1 BN layer.*1 \(MyBN\)"):
            convert(net)
        assert type(net[1]) is MyBN and isinstance(net[2][0], BatchNorm)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert_batchnorm(nn.Sequential(nn.BatchNorm1d(3), BatchNorm(3)))  # nothing foreign: quiet


def test_conversion_keeps_the_input_rank_check():
    net = convert_batchnorm(nn.Sequential(nn.BatchNorm2d(3), nn.BatchNorm1d(3)))
    ghost = convert_ghost_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), 4)
    for m in (net[0], ghost[0]):
        with pytest.raises(ValueError, match=r"expected 4D input \(got 3D input.*BatchNorm1d"):
            m(torch.randn(5, 3, 4))
    with pytest.raises(ValueError, match=r"expected 2D or 3D input \(got 4D input.*BatchNorm2d"):
        net[1](torch.randn(5, 3, 2, 2))


def test_torch_jit_script_says_what_to_use_instead():
    with pytest.raises(RuntimeError, match="torch.compile"):
        torch.jit.script(nn.Sequential(nn.Linear(3, 3), BatchNorm(3)))


# --------------------------------------------------------------------------- input checks
def test_input_checks_like_pytorch():
    from bnrepro.nn import BatchNorm1d, BatchNorm2d

    with pytest.raises(ValueError, match=r"expected 4D input \(got 3D input"):
        BatchNorm2d(3)(torch.randn(4, 3, 5))
    with pytest.raises(ValueError, match=r"expected 2D or 3D input \(got 4D input"):
        BatchNorm1d(3)(torch.randn(4, 3, 5, 5))
    bn = BatchNorm(3)
    with pytest.raises(RuntimeError, match=r"input is torch.float64 but the parameters.*torch.float32.*\.to\("):
        bn(torch.randn(4, 3, **F64))
    with pytest.raises(ValueError, match=r"BatchNorm\(3\) got an input with 5 channels"):
        bn(torch.randn(4, 5))
    assert int(bn.num_batches_tracked) == 0  # refused before any state changed
    with pytest.raises(RuntimeError, match="float32"):
        BatchNorm(3).half()(torch.randn(4, 3))
    with pytest.raises(TypeError, match="floating-point"):
        bn(torch.ones(4, 3, dtype=torch.long))


@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 2, 2), (4, 3, 0, 2)])
def test_empty_batch_in_training_gives_an_empty_output(shape):
    ours, ref = pair(dim=len(shape) // 2)
    ours.running_mean.fill_(0.5), ref.running_mean.fill_(0.5)
    x1, x2 = torch.randn(shape, **F64, requires_grad=True), torch.randn(shape, **F64, requires_grad=True)
    y1, y2 = ours(x1), ref(x2)
    assert y1.shape == y2.shape == shape
    y1.sum().backward(), y2.sum().backward()
    for name, t in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], t)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    assert x1.grad.shape == shape


# --------------------------------------------------------------------------- speed (no timing)
def test_fast_path_avoids_the_scalar_addcmul_loop():
    """addcmul with two per-channel operands runs PyTorch's non-vectorized CPU loop (~5x slower
    than the vectorized one); the closed form must not use it in forward or backward."""
    from torch.profiler import profile

    bn = BatchNorm(3)
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    with profile() as prof:
        bn(x).sum().backward()
    names = {e.key for e in prof.key_averages()}
    assert "aten::addcmul_" in names and "aten::addcmul" not in names


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(16, 3, 5, 5), (12, 4)])
def test_fused_kernels_match_torch(shape):
    """use_fused_kernels: the torch.compile'd closed form, against PyTorch (compiles: slow)."""
    from bnrepro.nn import use_fused_kernels

    ours, ref = pair(C=shape[1], dim=2 if len(shape) == 4 else 1)
    ours, ref = ours.float(), ref.float()
    before = use_fused_kernels(True)
    try:
        for step in range(3):  # running statistics over steps
            x1 = x_like(shape, seed=step, dtype=torch.float32).requires_grad_()
            x2 = x1.detach().clone().requires_grad_()
            y1, y2 = ours(x1), ref(x2)
            dy = x_like(shape, seed=10 + step, dtype=torch.float32)
            y1.backward(dy), y2.backward(dy)
            torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-5)
        for name in ("weight", "bias"):
            torch.testing.assert_close(getattr(ours, name).grad, getattr(ref, name).grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-5, atol=1e-6)
        x = x_like(shape).float().requires_grad_()  # second derivatives keep the eager code
        (g,) = torch.autograd.grad((ours(x) ** 3).sum(), x, create_graph=True)
        assert g.requires_grad
    finally:
        use_fused_kernels(before)


@pytest.mark.slow
def test_torch_compile_of_a_model_with_it():
    """torch.compile traces the module (eager closed form inside): same numbers as PyTorch's BN."""
    torch.manual_seed(0)
    ours = nn.Sequential(nn.Conv2d(3, 4, 3), BatchNorm(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 5))
    ref = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 5))
    ref.load_state_dict(ours.state_dict())
    compiled = torch.compile(ours)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(2):
            x = torch.randn(8, 3, 8, 8)
            y1, y2 = compiled(x), ref(x)
            y1.square().sum().backward(), y2.square().sum().backward()
            torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
    assert not [w for w in caught if "does not know how to trace" in str(w.message)]  # no graph break
    torch.testing.assert_close(ours[0].weight.grad, ref[0].weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours[1].running_var, ref[1].running_var)
