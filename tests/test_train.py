import math

import pytest
import torch

from bnrepro.data.datasets import TensorData
from bnrepro.models import LeNet
from bnrepro.training.loop import History, evaluate, load_checkpoint, lr_factor, save_checkpoint, train


def toy_data(n=256, seed=0):
    """Two linearly separable blobs as 1x28x28 images: a model must reach high accuracy."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 1, 28, 28, generator=g) * 0.5
    x[:, :, :14] += (2 * y - 1).view(-1, 1, 1, 1).float()
    return TensorData("toy", x[: n * 3 // 4], y[: n * 3 // 4], x[n * 3 // 4:], y[n * 3 // 4:],
                      ["a", "b"], "generated", (0.0,), (1.0,))


def run(seed=0, **kw):
    torch.manual_seed(seed)
    model = LeNet(norm=kw.pop("norm", "bn"), activation=kw.pop("activation", "sigmoid"), num_classes=2)
    return model, train(model, toy_data(), **{"epochs": 2, "batch_size": 32, "lr": 0.5, "seed": seed, **kw})


def test_learns_a_separable_problem():
    _, hist = run(epochs=5)
    assert not hist.diverged
    assert hist.final("train_acc") > 0.9 and hist.final("test_acc") > 0.9
    assert hist.epochs[-1]["train_loss"] < hist.epochs[0]["train_loss"]
    assert hist.images_per_s > 0 and hist.total_steps == 5 * 6


def test_same_seed_gives_identical_results():
    m1, h1 = run(seed=3)
    m2, h2 = run(seed=3)
    assert h1.epochs == h2.epochs and h1.steps == h2.steps
    for p1, p2 in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(p1, p2)
    _, h3 = run(seed=4)
    assert h3.steps != h1.steps


def test_divergence_is_recorded_not_raised():
    _, hist = run(norm="none", activation="relu", lr=1e8, epochs=3)
    assert hist.diverged and hist.diverged_at_step is not None
    assert hist.total_steps == hist.diverged_at_step
    assert math.isnan(hist.final("test_acc")) or len(hist.epochs) < 3


def test_max_steps_and_schedule():
    _, hist = run(max_steps=5, schedule="step", epochs=3)
    assert hist.total_steps == 5
    assert lr_factor("step", 0, 100) == 1.0
    assert lr_factor("step", 50, 100) == pytest.approx(0.1)
    assert lr_factor("step", 75, 100) == pytest.approx(0.01)
    assert lr_factor("cosine", 100, 100) == pytest.approx(0.0)
    assert lr_factor("constant", 10, 100, warmup_steps=20) == pytest.approx(11 / 20)


@pytest.mark.parametrize("kw,needle", [({"lr": -0.1}, "lr=-0.1"), ({"epochs": 0}, "epochs=0"),
                                       ({"optimizer": "lbfgs"}, "optimizer='lbfgs'"),
                                       ({"schedule": "poly"}, "schedule='poly'")])
def test_bad_arguments_name_the_field(kw, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        run(**kw)


def test_frozen_parameters_are_not_updated():
    torch.manual_seed(0)
    model = LeNet(num_classes=2)
    first = model[0].weight
    first.requires_grad_(False)
    before = first.detach().clone()
    train(model, toy_data(), epochs=1, batch_size=32, lr=0.5, weight_decay=0.1, momentum=0.9)
    assert torch.equal(first, before)


def test_evaluate_restores_mode():
    model = LeNet(num_classes=2).train()
    data = toy_data()
    out = evaluate(model, data.x_test, data.y_test)
    assert model.training and 0 <= out["acc"] <= 1


def test_checkpoint_roundtrip_weights_only(tmp_path):
    model, _ = run(epochs=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    path = save_checkpoint(tmp_path / "ck.pt", model, opt, epoch=1)
    other = LeNet(num_classes=2)
    extra = load_checkpoint(path, other, torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9))
    assert extra == {"epoch": 1}
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)


def test_history_serialises():
    _, hist = run(epochs=1)
    d = hist.to_dict()
    assert set(d) >= {"epochs", "steps", "diverged", "images_per_s"}
    assert History(**d).final("train_acc") == hist.final("train_acc")


class _HalfHook:
    """A stand-in data-parallel hook in one process: no launcher, no store, no experiment."""

    world_size, per_device_bn = 2, False

    def __init__(self):
        self.forwards = 0

    def prepare(self, model):
        def forward(x):
            self.forwards += 1
            return model(x)
        return model, forward

    def shard(self, n):
        return slice(0, (n + 1) // 2)

    def all_sum(self, *values):
        return list(values)


def test_the_loop_trains_through_an_installed_data_parallel_hook():
    """training/ defines the protocol; whoever spreads a run (distributed/) installs it."""
    from bnrepro.training.hooks import active_hook, data_parallel

    hook, seen = _HalfHook(), []
    torch.manual_seed(0)
    with data_parallel(hook):
        assert active_hook() is hook
        hist = train(LeNet(num_classes=2), toy_data(), epochs=1, batch_size=32, lr=0.1, device="cpu",
                     callbacks=[lambda s: seen.append(len(s.targets))])
    assert active_hook() is None
    assert hook.forwards == hist.total_steps == 6 and set(seen) == {16}  # this "rank" trains on its half
