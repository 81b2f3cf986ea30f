"""Sweeps through the results store: a local process pool (default) or submitit, killed and resumed."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bnrepro.cli import main
from bnrepro.experiments import get_experiment
from bnrepro.store import path_for, read
from bnrepro.sweep import run_sweep
from conftest import REPO, needs_fashion_mnist

SEEDS = "0,1,2,3,4,5"


def _lenet_configs(seeds):
    base = get_experiment("lenet").config.for_profile("smoke", n_train=1024, n_test=256)
    return [base.replace(seed=s) for s in seeds]


def _bnrepro(args, results, **kw):
    env = dict(os.environ, BNREPRO_RESULTS=str(results), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "bnrepro", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@needs_fashion_mnist
def test_a_killed_sweep_resumes_without_losing_or_repeating_finished_runs(tmp_results):
    args = ["run", "lenet", "--profile", "smoke", "--set", "n_train=1024", "--set", "n_test=256",
            "--grid", f"seed={SEEDS}", "--jobs", "2"]
    base = get_experiment("lenet").config.for_profile("smoke", n_train=1024, n_test=256)
    configs = [base.replace(seed=int(s)) for s in SEEDS.split(",")]
    paths = [path_for(c) for c in configs]
    proc = _bnrepro(args, tmp_results, start_new_session=True)  # its own process group: kill it whole
    hang_guard = time.monotonic() + 1800  # a bound on a hang, far above a run on a busy machine
    while not any(p.exists() for p in paths):
        assert proc.poll() is None, f"sweep ended before any run finished:\n{proc.stdout.read()}"
        assert time.monotonic() < hang_guard, "no run finished: the sweep hangs"
        time.sleep(0.05)  # polling for the first stored file, not waiting for time to pass
    os.killpg(proc.pid, signal.SIGKILL)  # the parent and its pool workers, mid-run, no clean-up
    proc.wait()
    proc.stdout.close()

    finished = {p: p.stat().st_mtime_ns for p in paths if p.exists()}
    assert 1 <= len(finished) < len(paths), "the kill must land mid-sweep for this test to mean anything"
    for p in finished:  # what was written is whole: atomic writes, a kill leaves no half file
        assert read(p, configs[paths.index(p)]).data["history"]["epochs"]

    resumed = _bnrepro(args, tmp_results)
    out, _ = resumed.communicate(timeout=1800)  # a hang guard only
    assert resumed.returncode == 0, out
    assert f"{len(finished)} of {len(paths)} run(s) already stored" in out
    assert f"running {len(paths) - len(finished)} run(s)" in out
    assert all(p.exists() for p in paths)
    for p, mtime in finished.items():  # finished runs were loaded, not recomputed
        assert p.stat().st_mtime_ns == mtime
    for cfg, p in zip(configs, paths):
        assert json.loads(p.read_text())["config"]["seed"] == cfg.seed


@needs_fashion_mnist
def test_submitit_local_executor_runs_and_resumes_a_sweep(tmp_results, capsys):
    pytest.importorskip("submitit", reason="submitit is installed by `make setup` ('.[sweep]')")
    configs = _lenet_configs([0, 1])
    report = run_sweep(configs[:1], executor="submitit", jobs=2, cluster="local")
    assert report.ok and report.ran == 1 and report.stored == 0
    report = run_sweep(configs, executor="submitit", jobs=2, cluster="local")
    assert report.ok and (report.ran, report.stored) == (1, 1)
    for cfg in configs:
        assert read(path_for(cfg), cfg).provenance["world_size"] == 1
    out = capsys.readouterr().out
    assert "submitit: cluster 'local'" in out and (tmp_results / ".submitit").is_dir()


def test_one_failing_run_does_not_stop_the_sweep(tmp_results, monkeypatch):
    import bnrepro.store as store

    configs = _lenet_configs([0, 1, 2])

    def fake(cfg, **kw):
        if cfg.seed == 1:
            raise RuntimeError("out of memory")
        store.save(store.Result(cfg.experiment, cfg.to_dict(), {"ok": 1}, {}), cfg)

    monkeypatch.setattr(store, "load_or_run", fake)
    report = run_sweep(configs, log=lambda *a, **k: None)
    assert (report.ran, len(report.failed)) == (2, 1)
    assert "out of memory" in next(iter(report.failed.values()))
    assert path_for(configs[0]).exists() and path_for(configs[2]).exists()


@pytest.mark.parametrize("args, message", [
    (["run", "skipinit_paths", "--nproc", "2"], "does not train through bnrepro.train.train"),
    (["run", "lenet", "--grid", "seed"], "write it as NAME=V1,V2"),
    (["run", "lenet", "--grid", "sed=1,2"], "has no field 'sed'"),
    (["run", "lenet", "--grid", "seed=1,x"], "expected a value of type int"),
    (["run", "lenet", "--nproc", "0"], "nproc=0"),
    (["run", "lenet", "--jobs", "0"], "jobs=0"),
    (["run", "lenet", "--submitit-param", "partition"], "write it as NAME=VALUE"),
])
def test_bad_sweep_arguments_are_clear_errors(args, message, tmp_results, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not tmp_results.exists() or not any(tmp_results.rglob("*.json"))
