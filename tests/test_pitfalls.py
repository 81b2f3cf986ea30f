"""The framework-pitfall checks (bnrepro.measure.pitfalls): they compute, a correct model passes
them, and a model with the pitfall (or a broken fix) fails them. Synthetic data, tiny runs, CPU."""

import pytest
import torch

from bnrepro.chapters import bn_first_principles as first_principles
from bnrepro.core.claims import REPRODUCED
from bnrepro.measure import pitfalls
from conftest import needs_fashion_mnist

PITFALL_IDS = ("no-update-ops-collapses", "update-ops-fix", "saver-trainable-only", "saver-state-dict",
               "requires-grad-false-moves-stats", "trainable-false-is-eval")
SPECS = {s.id: s for s in first_principles.SPECS}
STEPS = 150


def synthetic_data(seed=0, dim=20, n_train=600, n_test=300):
    """Two 5-class tasks of Gaussian clusters with a positive offset (like pixels, not centred):
    task B's clusters sit elsewhere, so its statistics differ from task A's."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for task, shift in (("A", 0.0), ("B", 1.5)):
        centres = torch.rand(5, dim, generator=g) * 2 + shift
        parts = []
        for n in (n_train, n_test):
            y = torch.randint(0, 5, (n,), generator=g)
            parts += [centres[y] + 0.5 * torch.randn(n, dim, generator=g) + 2.0, y]
        out[task] = tuple(parts)
    return out


@pytest.fixture(scope="module")
def data():
    return synthetic_data()


@pytest.fixture(scope="module")
def runs(data):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ops = pitfalls.update_ops_pitfall(data, STEPS, seed=0)
        out = {"update_ops": ops, "saver": pitfalls.saver_pitfall(ops["fixed"], *data["A"][2:]),
               "freezing": pitfalls.freezing_pitfall(ops["fixed"], data, STEPS // 3, seed=0)}
    finally:
        torch.set_num_threads(threads)
    return out


def verdicts(runs, **replace):
    """The chapter's pitfall checks scored on one seed's ``runs`` (parts replaced by ``replace``)."""
    one = {"seed": 0, "update_ops": runs["update_ops"], "saver": runs["saver"], "freezing": runs["freezing"],
           **replace}
    values = pitfalls.pitfall_values([one], "smoke")
    return {k: SPECS[k].score(*values[k]).verdict for k in PITFALL_IDS}


def test_the_pitfall_checks_are_the_chapters_checks():
    values = pitfalls.pitfall_values([], "smoke")
    assert tuple(values) == PITFALL_IDS
    ids = [s.id for s in first_principles.SPECS]
    assert set(PITFALL_IDS) <= set(ids) and len(ids) == len(set(ids))
    for k in PITFALL_IDS:
        assert SPECS[k].kind == "check" and SPECS[k].source in ("seed_feature_scaling", "keras_batchnorm",
                                                               "pytorch_batchnorm") and SPECS[k].where


def test_a_correct_model_passes_every_check(runs):
    ops = runs["update_ops"]
    assert ops["weight_diff"] == 0           # the running statistics never feed back into training
    assert ops["eval_no_updates"] == runs["saver"]["eval_params_only"]   # the same network: weights + (0, 1)
    assert runs["freezing"]["bn_eval"]["eval_A"] == runs["freezing"]["eval_A_before"]
    assert verdicts(runs) == {k: REPRODUCED for k in PITFALL_IDS}


def test_without_the_updates_the_fix_check_fails(runs):
    """The 'fixed' model itself trained without updates: no collapse to detect, and its eval
    accuracy is far from its train-mode accuracy."""
    ops = runs["update_ops"]
    broken = {**ops, "eval_fixed": ops["eval_no_updates"]}
    v = verdicts(runs, update_ops=broken)
    assert v["no-update-ops-collapses"] != REPRODUCED and v["update-ops-fix"] != REPRODUCED


def test_a_model_without_statistics_to_lose_fails_the_saver_check(data, runs):
    """A parameters-only checkpoint of a model whose statistics were never updated loses nothing:
    the check that the parameters-only checkpoint collapses fails, as it should."""
    saver = pitfalls.saver_pitfall(runs["update_ops"]["no_updates"], *data["A"][2:])
    assert saver["logit_dev_params_only"] == 0
    assert verdicts(runs, saver=saver)["saver-trainable-only"] != REPRODUCED


def test_a_checkpoint_that_drops_buffers_fails_the_state_dict_check(runs):
    saver = {**runs["saver"], "logit_dev_state_dict": runs["saver"]["logit_dev_params_only"]}
    assert saver["logit_dev_state_dict"] > 0.1
    assert verdicts(runs, saver=saver)["saver-state-dict"] != REPRODUCED


def test_freezing_without_eval_fails_the_trainable_false_check(data, runs, monkeypatch):
    """A 'TF2 trainable=False' that forgets eval(): its statistics move and the check fails; the
    requires_grad=False-only variant moves them in every case."""
    sgd = pitfalls._sgd
    monkeypatch.setattr(pitfalls, "_sgd", lambda *a, bn_eval=False, **k: sgd(*a, **k))
    broken = pitfalls.freezing_pitfall(runs["update_ops"]["fixed"], data, STEPS // 3, seed=0)
    assert broken["bn_eval"]["stats_change"] > 0.1 and broken["requires_grad"]["stats_change"] > 0.1
    assert verdicts(runs, freezing=broken)["trainable-false-is-eval"] != REPRODUCED
    # the original model itself is never touched by the fine-tuning
    assert runs["freezing"]["eval_A_before"] == pitfalls.accuracy(runs["update_ops"]["fixed"], *data["A"][2:])


def test_requires_grad_false_alone_moves_the_statistics_but_not_the_weights(data, runs):
    model = runs["update_ops"]["fixed"]
    weights = [p.detach().clone() for p in model.parameters()]
    out = pitfalls.freezing_pitfall(model, data, 20, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    assert out["requires_grad"]["stats_change"] > 0.1 and out["bn_eval"]["stats_change"] == 0


def test_train_mode_accuracy_leaves_the_running_statistics_alone(data, runs):
    model = runs["update_ops"]["fixed"]
    before = [b.clone() for b in model.buffers()]
    pitfalls.accuracy(model, *data["A"][2:], batch_stats=True)
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers())) and not model.training


@needs_fashion_mnist
def test_pitfall_data_splits_fashion_mnist_into_two_five_class_tasks():
    d = pitfalls.pitfall_data(n_train=500, n_test=200)
    for task in ("A", "B"):
        x, y, xt, yt = d[task]
        assert x.shape[1] == 784 and set(y.tolist()) == set(range(5)) and 0 <= x.min() and x.max() <= 1
    assert sum(len(d[t][0]) for t in "AB") == 500 and sum(len(d[t][2]) for t in "AB") == 200
