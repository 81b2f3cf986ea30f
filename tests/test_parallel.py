"""Data-parallel runs of an experiment (bnrepro.runner.parallel, bnrepro.distributed.parallel): N processes
through the one training loop.

Independent truths: synchronized BN over 2 gloo processes must train exactly
like one process on the full batch; per-device BN over 2 processes must see
the same batch statistics (so the same training losses) as one process with
ghost BN of half the batch.
"""

import json
import math

import pytest
import torch

from bnrepro.core.config import ConfigError
from bnrepro.core.data_parallel import DataParallel
from bnrepro.core.store import load, path_for
from bnrepro.distributed.parallel import Session, session
from bnrepro.experiments import get_experiment
from bnrepro.runner import load_or_run, run_parallel
from conftest import needs_fashion_mnist


def _lenet_cfg(**kw):
    # 512 samples in global batches of 64: 8 steps per epoch, 2 epochs. lr 0.1, not d2l's 1.0: at 1.0
    # float32 rounding differences (float64 vs float32 statistics) grow to 1e-5 relative in 16 steps.
    return get_experiment("lenet").config.for_profile("smoke", n_train=512, n_test=256, batch_size=64,
                                                      lr=0.1, **kw)


@pytest.mark.parametrize("kwargs, field", [({"nproc": 0}, "nproc"), ({"nproc": 1.5}, "nproc"),
                                           ({"bn_mode": "global"}, "bn_mode"),
                                           ({"bn_mode": "ghost", "ghost_batch_size": 1}, "ghost_batch_size")])
def test_bad_parallel_settings_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"^{field}="):
        DataParallel(**kwargs)


def test_tags_and_canonical_forms():
    assert DataParallel().tag() == "" and DataParallel(1, "sync").tag() == ""  # sync alone = local
    assert DataParallel(1, "sync").canonical() == DataParallel()
    assert DataParallel(2, "sync", 16).canonical() == DataParallel(2, "sync")  # size only matters for ghost
    assert DataParallel(2, "sync").tag() == "-np2-sync"
    assert DataParallel(4, "local").tag() == "-np4-local"
    assert DataParallel(1, "ghost", 16).tag() == "-np1-ghost16"


@pytest.mark.parametrize("n, world", [(64, 2), (63, 2), (10, 3), (7, 4), (5, 5)])
def test_shards_cover_the_batch_once(n, world):
    rows = [Session(DataParallel(world), rank=r, world_size=world).shard(n) for r in range(world)]
    assert [s.start for s in rows] == [0] + [s.stop for s in rows[:-1]]
    assert rows[-1].stop == n
    assert max(s.stop - s.start for s in rows) - min(s.stop - s.start for s in rows) <= 1


def test_too_small_a_global_batch_is_refused_before_any_process_group_is_needed():
    from bnrepro.data.datasets import TensorData
    from bnrepro.training.loop import train

    data = TensorData("toy", torch.randn(12, 3), torch.zeros(12, dtype=torch.long), torch.randn(4, 3),
                      torch.zeros(4, dtype=torch.long), ["a", "b"], "test", (0.0,), (1.0,))
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    with session(DataParallel(4, "local"), rank=0, world_size=4):  # per-device BN needs 2 per process
        with pytest.raises(ValueError, match="batch_size=6 over 4 processes"):
            train(model, data, batch_size=6, device="cpu")


def test_experiments_that_do_not_train_refuse_nproc(tmp_results):
    cfg = get_experiment("skipinit_paths").config.for_profile("smoke")
    with pytest.raises(ConfigError, match="does not train through bnrepro.training.loop.train"):
        run_parallel(cfg, DataParallel(2, "sync"))


def _epochs(result):
    return result["history"]["epochs"]


@needs_fashion_mnist
def test_sync_bn_over_two_processes_trains_like_one_process(tmp_results):
    cfg = _lenet_cfg()
    one = load_or_run(cfg, device="cpu", verbose=False)
    two = load_or_run(cfg, device="cpu", verbose=False, parallel=DataParallel(2, "sync"))
    assert len(_epochs(one)) == len(_epochs(two)) == 2
    for a, b in zip(_epochs(one), _epochs(two)):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["train_acc"] == pytest.approx(a["train_acc"], abs=2 / 512)  # at most 2 argmax ties flip
        assert b["test_acc"] == pytest.approx(a["test_acc"], abs=2 / 256)
    steps_one = dict(map(tuple, one["history"]["steps"]))
    for step, loss in two["history"]["steps"]:
        assert loss == pytest.approx(steps_one[step], rel=1e-5)
    # The store keeps both, apart, and records how the second was run.
    assert path_for(cfg, parallel=DataParallel(2, "sync")).name.endswith("-np2-sync.json")
    blob = json.loads(path_for(cfg, parallel=DataParallel(2, "sync")).read_text())
    assert blob["parallel"] == {"nproc": 2, "bn_mode": "sync", "ghost_batch_size": 32}
    assert blob["provenance"]["world_size"] == 2 and blob["provenance"]["backend"] == "gloo"
    assert load(cfg, parallel=DataParallel(2, "local")) is None  # another setting is not confused with it


@needs_fashion_mnist
def test_per_device_bn_over_two_processes_is_ghost_bn_of_half_the_batch(tmp_results):
    cfg = _lenet_cfg()
    local = load_or_run(cfg, device="cpu", verbose=False, parallel=DataParallel(2, "local"))
    ghost = load_or_run(cfg, device="cpu", verbose=False, parallel=DataParallel(1, "ghost", 32))
    full = load_or_run(cfg, device="cpu", verbose=False)
    for a, b, c in zip(_epochs(local), _epochs(ghost), _epochs(full)):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["train_acc"] == pytest.approx(b["train_acc"], abs=2 / 512)
        # ... and it is not the full-batch run: the check can tell the two apart.
        assert not math.isclose(a["train_loss"], c["train_loss"], rel_tol=1e-4)


@needs_fashion_mnist
def test_torchrun_processes_store_what_nproc_stores(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    from conftest import REPO

    args = ["run", "lenet", "--profile", "smoke", "--set", "n_train=512", "--set", "n_test=256",
            "--set", "batch_size=64", "--set", "lr=0.1", "--bn-mode", "sync", "--device", "cpu"]
    env = dict(os.environ, BNREPRO_RESULTS=str(tmp_path / "torchrun"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "bnrepro", *args]
    hang_guard = 1800  # seconds: a bound on a hang, far above a run on a busy machine
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=hang_guard)
    assert out.returncode == 0, out.stdout + out.stderr
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=hang_guard)
    assert again.returncode == 0 and "found stored result" in again.stdout, again.stdout + again.stderr

    spec = DataParallel(2, "sync")
    cfg = _lenet_cfg()
    from bnrepro.core.store import read

    via_torchrun = read(path_for(cfg, tmp_path / "torchrun", spec), cfg, spec)
    assert via_torchrun.provenance["launcher"] == "torchrun" and via_torchrun.provenance["world_size"] == 2
    monkeypatch.setenv("BNREPRO_RESULTS", str(tmp_path / "nproc"))
    via_nproc = load_or_run(cfg, device="cpu", verbose=False, parallel=spec)
    for a, b in zip(_epochs(via_torchrun), _epochs(via_nproc)):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["test_acc"] == b["test_acc"]


# --------------------------------------------------------------------------- uneven batches, odd BN, provenance
def _toy_run(n_train=23, batch_size=7, seed=0):
    from bnrepro.data.datasets import TensorData

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + 8, 5, generator=g)
    y = (x[:, 0] > 0).long()
    data = TensorData("toy", x[:n_train], y[:n_train], x[n_train:], y[n_train:], ["a", "b"], "generated",
                      (0.0,), (1.0,))
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(),
                                torch.nn.Linear(6, 2))
    return model, data


def _toy_rank(rank, world, mode, n_train, batch_size):
    from bnrepro.training.loop import train

    model, data = _toy_run(n_train, batch_size)
    with session(DataParallel(world, mode), rank, world, "cpu", "gloo"):
        hist = train(model, data, epochs=2, batch_size=batch_size, lr=0.1, device="cpu")
    return hist.total_steps, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("world, n_train", [(2, 23), (3, 23)])  # last batch of 2: shards 1+1, and 1+1+0
def test_sync_bn_takes_one_process_steps_even_with_a_ragged_last_batch(world, n_train):
    from bnrepro.distributed.launch import launch
    from bnrepro.training.loop import train

    model, data = _toy_run(n_train, 7)
    one = train(model, data, epochs=2, batch_size=7, lr=0.1, device="cpu")
    ranks = launch(_toy_rank, world, ("sync", n_train, 7))
    assert one.total_steps == 8 and all(steps == 8 for steps, _ in ranks)  # 4 batches per epoch
    for steps, params in ranks:
        for a, b in zip(params, model.parameters()):
            torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)


def test_per_device_bn_drops_a_last_batch_too_small_for_every_process():
    from bnrepro.distributed.launch import launch

    ranks = launch(_toy_rank, 2, ("local", 23, 7))  # last batch 2 < 2 per process
    assert [steps for steps, _ in ranks] == [6, 6]  # 3 batches per epoch, not 4


def test_bn_modes_refuse_a_model_with_bn_of_its_own_kind():
    from bnrepro.models.vgg import NoisyVGG

    for mode in ("ghost", "sync"):
        model = NoisyVGG(norm="ghost", ghost_batch_size=4)
        with pytest.raises(ConfigError, match="BN layers of its own kind .*GhostBatchNorm"):
            Session(DataParallel(2 if mode == "sync" else 1, mode), world_size=1).prepare(model)
    plain = NoisyVGG(norm="bn")  # plain BN converts, and the BN layers stay visible to bnrepro.nn.freeze
    from bnrepro.nn.freeze import batchnorm_layers

    n = len(batchnorm_layers(plain))
    Session(DataParallel(1, "ghost", 4)).prepare(plain)
    assert n > 0 and len(batchnorm_layers(plain)) == n


def test_measurements_keep_their_own_provenance(tmp_results, monkeypatch):
    import dataclasses

    from bnrepro import experiments
    from bnrepro.core.config import ExperimentConfig
    from bnrepro.core.store import Result

    @dataclasses.dataclass(frozen=True)
    class StubConfig(ExperimentConfig):
        experiment = "stub_measurement"
        x: int = 0

    def run(cfg, device=None):
        return Result(cfg.experiment, cfg.to_dict(), {"x": 1}, {"world_size": 2, "backend": "gloo"})

    monkeypatch.setitem(experiments._REGISTRY, "stub_measurement",
                        experiments.Experiment("stub_measurement", StubConfig, run, lambda p: [StubConfig()]))
    result = load_or_run(StubConfig(), verbose=False)
    assert result.provenance == {"world_size": 2, "backend": "gloo"} and result.parallel is None


def test_torchrun_ranks_stop_before_training_when_results_cannot_be_stored(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import REPO

    (tmp_path / "r").write_text("not a folder")
    env = dict(os.environ, BNREPRO_RESULTS=str(tmp_path / "r"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "bnrepro", "run", "lenet", "--profile", "smoke", "--bn-mode", "sync", "--device", "cpu"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)  # a hang guard
    assert out.returncode != 0
    assert "is a file, not a folder" in out.stderr and "BNREPRO_RESULTS" in out.stderr, out.stderr
    assert "running lenet" not in out.stdout, "no rank trains what could not be stored"
