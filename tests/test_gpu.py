"""Checks that need a CUDA device (marked `gpu`: skipped, with the reason shown, elsewhere)."""

import pytest
import torch

from bnrepro.core.device import get_device
from bnrepro.data import Batches
from bnrepro.models import LeNet
from bnrepro.training.loop import train

pytestmark = pytest.mark.gpu


def test_default_device_is_cuda(monkeypatch):
    monkeypatch.delenv("BNREPRO_DEVICE", raising=False)
    assert get_device().type == "cuda"


def test_package_bn_matches_torch_on_cuda():
    from bnrepro.nn.batchnorm import BatchNorm

    torch.manual_seed(0)
    x = torch.randn(32, 16, 8, 8, device="cuda", requires_grad=True)
    ours, ref = BatchNorm(16).cuda(), torch.nn.BatchNorm2d(16).cuda()
    y1, y2 = ours(x), ref(x)
    g = torch.randn_like(y1)
    (gx1,) = torch.autograd.grad(y1, x, g)
    (gx2,) = torch.autograd.grad(y2, x, g)
    assert torch.allclose(y1, y2, atol=1e-5) and torch.allclose(gx1, gx2, atol=1e-4)
    assert torch.allclose(ours.running_var, ref.running_var, atol=1e-6)


def test_training_runs_on_cuda():
    from test_train import toy_data

    torch.manual_seed(0)
    model = LeNet(num_classes=2)
    hist = train(model, toy_data(), epochs=5, batch_size=32, lr=0.5, device="cuda")
    assert next(model.parameters()).is_cuda
    assert not hist.diverged and hist.final("test_acc") > 0.9


def test_batches_stay_on_cuda():
    x = torch.arange(10.0, device="cuda").view(10, 1)
    y = torch.arange(10, device="cuda")
    for xb, yb in Batches(x, y, 4, seed=0).epoch(0):
        assert xb.is_cuda and yb.is_cuda and torch.equal(xb[:, 0].long(), yb)


# --------------------------------------------------------------------------- synchronized BN on CUDA
# Two processes: NCCL when there are two GPUs; on one GPU both ranks share it over
# gloo (NCCL refuses two ranks on one device), which nn.SyncBatchNorm also supports.
def _backend_and_devices():
    n = torch.cuda.device_count()
    return ("nccl" if n >= 2 else "gloo"), [f"cuda:{r % n}" for r in range(2)]


def _sync_bn_vs_torch(rank, world, x, dy, sizes, devices):
    from bnrepro.nn.sync_bn import SyncBatchNorm

    dev = devices[rank]
    torch.cuda.set_device(dev)
    start = sum(sizes[:rank])
    xs, dys = x[start:start + sizes[rank]].to(dev), dy[start:start + sizes[rank]].to(dev)
    out = {}
    for name, cls in (("ours", SyncBatchNorm), ("torch", torch.nn.SyncBatchNorm)):
        bn = cls(x.shape[1], momentum=0.1).to(dev, torch.float64)
        with torch.no_grad():
            bn.weight.copy_(torch.linspace(0.5, 2.0, x.shape[1]))
            bn.bias.copy_(torch.linspace(-1.0, 1.0, x.shape[1]))
        for _ in range(2):  # two steps: the running statistics compound
            xi = xs.clone().requires_grad_()
            bn.zero_grad()
            y = bn(xi)
            y.backward(dys)
        out[name] = [t.detach().cpu() for t in (y, xi.grad, bn.weight.grad, bn.bias.grad,
                                                bn.running_mean, bn.running_var)]
    return out


def test_package_sync_bn_equals_torch_sync_batchnorm_on_cuda():
    from bnrepro.distributed.launch import launch

    backend, devices = _backend_and_devices()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 5, 3, 3, generator=g, dtype=torch.float64) * 3 + 1
    dy = torch.randn(12, 5, 3, 3, generator=g, dtype=torch.float64)
    sizes = [7, 5]  # unequal shards
    ranks = launch(_sync_bn_vs_torch, 2, (x, dy, sizes, devices), backend=backend, timeout=180)
    print(f"backend {backend} on {devices}")
    for rank in ranks:
        for ours, ref in zip(rank["ours"], rank["torch"]):
            torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-10)


def _train_rank(rank, world, spec, devices, backend):
    from bnrepro.distributed.parallel import session
    from test_train import toy_data

    with session(spec, rank, world, devices[rank], backend):
        torch.manual_seed(0)
        model = LeNet(num_classes=2)
        hist = train(model, toy_data(), epochs=2, batch_size=32, lr=0.1, device=devices[rank])
    return [e["train_loss"] for e in hist.epochs]


def test_data_parallel_sync_bn_on_cuda_trains_like_one_process():
    from bnrepro.core.data_parallel import DataParallel
    from bnrepro.distributed.launch import launch
    from test_train import toy_data

    backend, devices = _backend_and_devices()
    torch.manual_seed(0)
    model = LeNet(num_classes=2)
    one = [e["train_loss"] for e in train(model, toy_data(), epochs=2, batch_size=32, lr=0.1,
                                           device="cuda").epochs]
    two = launch(_train_rank, 2, (DataParallel(2, "sync"), devices, backend), backend=backend, timeout=300)
    assert two[0] == two[1]  # every rank logs the global batches' loss
    assert two[0] == pytest.approx(one, rel=1e-5)
