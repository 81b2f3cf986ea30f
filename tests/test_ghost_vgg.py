"""The ghost-BN VGG uses the package's one GhostBatchNorm and gives the numbers its stored runs were made with.

The stored ``ghost_bn`` runs (``results/ghost_bn``) were computed with a ghost-BN
class of the VGG module's own: ``nn.BatchNorm2d`` applied to each ghost batch in
turn. :class:`OldGhostBatchNorm` below is that class, verbatim. The VGG now builds
:class:`bnrepro.nn.GhostBatchNorm` with ``torch_kernel=True``; these tests show
that it gives the old class's outputs, input and parameter gradients, running
statistics and ``num_batches_tracked`` *bit for bit* (``torch.equal``), on the
shapes and ghost sizes of the stored runs (cpu profile: Fashion-MNIST 28x28,
VGG "tiny", hidden 64, batches of 128 and a last batch of 80, ghost batches of
4, 16 and 128), and that the whole model trains identically through the
training loop with the same ``state_dict`` keys.
"""

import pytest
import torch
from torch import nn

from bnrepro.data import TensorData
from bnrepro.experiments.ics import GhostConfig, sweep_ghost
from bnrepro.models import NoisyVGG
from bnrepro.nn import GhostBatchNorm
from bnrepro.training.loop import train


class OldGhostBatchNorm(nn.BatchNorm2d):
    """The VGG module's former ghost BN (the class of the stored runs), verbatim."""

    def __init__(self, num_features: int, ghost_batch_size: int = 32, **kwargs):
        super().__init__(num_features, **kwargs)
        if ghost_batch_size < 2:
            raise ValueError(f"ghost_batch_size={ghost_batch_size}: BN needs >= 2 samples per ghost batch")
        self.ghost_batch_size = int(ghost_batch_size)

    def _check_input_dim(self, input):
        if input.dim() not in (2, 4):
            raise ValueError(f"expected a 2D or 4D input, got {input.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] <= self.ghost_batch_size:
            return super().forward(x)
        chunks = list(x.split(self.ghost_batch_size))
        if len(chunks) > 1 and chunks[-1].shape[0] < 2:  # a 1-sample ghost batch has zero variance
            chunks[-2] = torch.cat(chunks[-2:])
            chunks.pop()
        return torch.cat([super(OldGhostBatchNorm, self).forward(c) for c in chunks])


#: The BN inputs of the stored runs' VGG "tiny" (8-16-32-32 channels on 28x28, hidden 64).
STORED_SHAPES = ((8, 28, 28), (16, 14, 14), (32, 7, 7), (64,))
STORED_GHOST_SIZES = sorted({c.ghost_batch_size for c in sweep_ghost("cpu") if c.norm == "ghost"})


def test_the_stored_runs_are_the_configurations_tested_here():
    configs = [c for c in sweep_ghost("cpu") if c.norm == "ghost"]
    assert STORED_GHOST_SIZES == [4, 128]
    assert {(c.vgg, c.hidden, c.batch_size, c.n_train, c.dataset) for c in configs} == {
        ("tiny", 64, 128, 2000, "fashion-mnist")}
    assert 2000 % 128 == 80  # the last batch of every epoch


def test_the_vgg_builds_the_one_ghost_batchnorm():
    model = NoisyVGG("tiny", norm="ghost", ghost_batch_size=4, hidden=64)
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(layers) == 5 and all(type(m) is GhostBatchNorm for m in layers)
    assert all(m.torch_kernel and m.ghost_batch_size == 4 for m in layers)


@pytest.mark.parametrize("ghost", STORED_GHOST_SIZES)
@pytest.mark.parametrize("shape", STORED_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_ghost_bn_is_the_old_class_bit_for_bit(shape, ghost):
    c = shape[0]
    old, new = OldGhostBatchNorm(c, ghost), GhostBatchNorm(c, ghost, torch_kernel=True)
    assert list(new.state_dict()) == list(old.state_dict())
    g = torch.Generator().manual_seed(ghost)
    with torch.no_grad():  # gamma and beta away from 1 and 0, the same in both
        old.weight.copy_(torch.rand(c, generator=g) + 0.5)
        old.bias.copy_(torch.rand(c, generator=g) - 0.5)
    new.load_state_dict(old.state_dict())
    for n in (128, 128, 80):  # two full batches and the last batch of an epoch
        x = torch.randn((n, *shape), generator=g) * 2 + 1
        dy = torch.randn((n, *shape), generator=g)
        got = []
        for m in (old, new):
            m.zero_grad(set_to_none=True)
            xi = x.clone().requires_grad_()
            y = m(xi)
            y.backward(dy)
            got.append((y, xi.grad, m.weight.grad, m.bias.grad))
        for name, a, b in zip(("output", "input grad", "gamma grad", "beta grad"), *got):
            assert torch.equal(a, b), f"{name} differs for batch {n}, shape {shape}, ghost {ghost}"
        for name, a in old.state_dict().items():
            assert torch.equal(a, new.state_dict()[name]), f"{name} differs after batch {n}"
    old.eval(), new.eval()
    x = torch.randn((32, *shape), generator=g)
    assert torch.equal(old(x), new(x))


def _with_old_ghost_bn(model: nn.Module) -> nn.Module:
    """``model`` with each GhostBatchNorm replaced by the old class holding the same state."""
    for name, child in list(model.named_children()):
        if isinstance(child, GhostBatchNorm):
            old = OldGhostBatchNorm(child.num_features, child.ghost_batch_size)
            old.load_state_dict(child.state_dict())
            setattr(model, name, old)
        else:
            _with_old_ghost_bn(child)
    return model


@pytest.mark.parametrize("ghost", STORED_GHOST_SIZES)
def test_ghost_vgg_trains_as_with_the_old_class(ghost):
    """The stored runs' model and training loop (fewer images): identical histories and weights."""
    cfg = GhostConfig.for_profile("cpu", ghost_batch_size=ghost)
    g = torch.Generator().manual_seed(0)
    n = 2 * cfg.batch_size + 80
    data = TensorData("synthetic", torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g),
                      torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g),
                      [str(i) for i in range(10)], "synthetic", (0.0,), (1.0,))
    models, hists = [], []
    for old in (False, True):
        torch.manual_seed(cfg.seed)
        model = NoisyVGG(cfg.vgg, norm=cfg.norm, num_classes=10, in_channels=1, image_size=28, hidden=cfg.hidden,
                         ghost_batch_size=cfg.ghost_batch_size)
        if old:
            model = _with_old_ghost_bn(model)
            assert not any(isinstance(m, GhostBatchNorm) for m in model.modules())
        hists.append(train(model, data, epochs=2, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
                           seed=cfg.seed, device="cpu").to_dict())
        models.append(model)
    new_sd, old_sd = (m.state_dict() for m in models)
    assert list(new_sd) == list(old_sd)
    assert all(torch.equal(new_sd[k], old_sd[k]) for k in new_sd)
    assert hists[0]["steps"] == hists[1]["steps"] and hists[0]["epochs"] == hists[1]["epochs"]
    for m in models:
        m.eval()
    with torch.no_grad():
        assert torch.equal(models[0](data.x_test), models[1](data.x_test))
