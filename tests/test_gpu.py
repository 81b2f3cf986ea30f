"""Checks that need a CUDA device (marked `gpu`: skipped, with the reason shown, elsewhere)."""

import pytest
import torch
import torch.nn.functional as F

from bnrepro.data import Batches
from bnrepro.device import get_device
from bnrepro.models import LeNet
from bnrepro.train import train

pytestmark = pytest.mark.gpu


def test_default_device_is_cuda(monkeypatch):
    monkeypatch.delenv("BNREPRO_DEVICE", raising=False)
    assert get_device().type == "cuda"


def test_package_bn_matches_torch_on_cuda():
    from bnrepro.norm import BatchNorm

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
