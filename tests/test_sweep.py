"""Sweeps through the results store: a local process pool (default) or submitit, killed and resumed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnrepro.cli import main
from bnrepro.core.store import path_for, read
from bnrepro.experiments import get_experiment
from bnrepro.runner.sweep import run_sweep
from conftest import REPO, needs_fashion_mnist

SEEDS = "0,1,2,3,4,5"
# Seconds: a bound on a hang, far above what any step of these tests takes on a busy,
# slow machine. Waits end as soon as what they wait for happens; only a hang pays it.
HANG_GUARD_S = 1800


def _lenet_configs(seeds):
    base = get_experiment("lenet").config.for_profile("smoke", n_train=1024, n_test=256)
    return [base.replace(seed=s) for s in seeds]


def _bnrepro(args, results, **kw):
    env = dict(os.environ, BNREPRO_RESULTS=str(results), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "bnrepro", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


SWEEP_ARGS = ["run", "lenet", "--profile", "smoke", "--set", "n_train=1024", "--set", "n_test=256",
              "--grid", f"seed={SEEDS}", "--jobs", "2"]


def _wait_until(done, why: str, proc=None) -> None:
    """Poll ``done()`` until it holds; fail if ``proc`` ends first or the hang guard passes."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not done():
        if proc is not None:
            assert proc.poll() is None, f"the sweep ended first:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, why
        time.sleep(0.05)  # polling for a change, not waiting for time to pass


def _sweep_with_a_finished_run(results):
    """A pooled sweep of six LeNet runs in its own process group, once its first run is stored:
    (process, the six result paths, their configs)."""
    configs = _lenet_configs(int(s) for s in SEEDS.split(","))
    paths = [path_for(c) for c in configs]
    proc = _bnrepro(SWEEP_ARGS, results, start_new_session=True)  # its own process group: kill it whole
    _wait_until(lambda: any(p.exists() for p in paths), "no run finished: the sweep hangs", proc)
    return proc, paths, configs


@needs_fashion_mnist
def test_a_killed_sweep_resumes_without_losing_or_repeating_finished_runs(tmp_results):
    proc, paths, configs = _sweep_with_a_finished_run(tmp_results)
    os.killpg(proc.pid, signal.SIGKILL)  # the parent and its pool workers, mid-run, no clean-up
    proc.wait()
    proc.stdout.close()

    finished = {p: p.stat().st_mtime_ns for p in paths if p.exists()}
    assert 1 <= len(finished) < len(paths), "the kill must land mid-sweep for this test to mean anything"
    for p in finished:  # what was written is whole: atomic writes, a kill leaves no half file
        assert read(p, configs[paths.index(p)]).data["history"]["epochs"]

    resumed = _bnrepro(SWEEP_ARGS, tmp_results)
    out, _ = resumed.communicate(timeout=HANG_GUARD_S)
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
    import bnrepro.core.store as store
    import bnrepro.runner.sweep as sweep

    configs = _lenet_configs([0, 1, 2])

    def fake(cfg, **kw):
        if cfg.seed == 1:
            raise RuntimeError("out of memory")
        store.save(store.Result(cfg.experiment, cfg.to_dict(), {"ok": 1}, {}), cfg)

    monkeypatch.setattr(sweep, "load_or_run", fake)
    report = run_sweep(configs, log=lambda *a, **k: None)
    assert (report.ran, len(report.failed)) == (2, 1)
    assert "out of memory" in next(iter(report.failed.values()))
    assert path_for(configs[0]).exists() and path_for(configs[2]).exists()


@pytest.mark.parametrize("args, message", [
    (["run", "skipinit_paths", "--nproc", "2"], "does not train through bnrepro.training.loop.train"),
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


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (Linux /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for kid in parents.get(todo.pop(), []):
            found.add(kid)
            todo.append(kid)
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@needs_fashion_mnist
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from Linux /proc")
def test_sigterm_ends_a_pooled_sweep_and_its_workers_like_ctrl_c(tmp_results):
    proc, paths, _ = _sweep_with_a_finished_run(tmp_results)  # the workers are busy with runs
    try:
        workers = _descendants(proc.pid)
        assert workers, "a pooled sweep runs in worker processes"
        os.kill(proc.pid, signal.SIGTERM)  # the parent only, as `kill PID` or a job scheduler does
        try:  # end of output: no process is left holding the sweep's stdout
            out, _ = proc.communicate(timeout=HANG_GUARD_S)
        except subprocess.TimeoutExpired:
            pytest.fail("the sweep's output stayed open after SIGTERM: a worker outlived it")
        assert proc.returncode == 128 + signal.SIGTERM, out
        assert "terminated. Finished runs are stored; run the same command again to resume" in out
        _wait_until(lambda: not any(_running(pid) for pid in workers),
                    f"workers still running after the sweep ended: {workers}")
        stored = [p for p in paths if p.exists()]
        assert len(stored) < len(paths), "the runs not yet finished were not run by orphans"
        for p in stored:
            assert read(p).data["history"]["epochs"]
    finally:
        if proc.poll() is None or _descendants(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()


@needs_fashion_mnist
def test_jobs_do_not_change_the_threads_or_the_numbers_of_a_run(tmp_path, monkeypatch):
    configs = [c.replace(n_train=256, n_test=64, epochs=1) for c in _lenet_configs([0, 1])]
    stored = {}
    for jobs in (1, 2):
        monkeypatch.setenv("BNREPRO_RESULTS", str(tmp_path / f"jobs{jobs}"))
        assert run_sweep(configs, jobs=jobs, log=lambda *a, **k: None).ok
        stored[jobs] = [read(path_for(c), c) for c in configs]
    for one, two in zip(stored[1], stored[2]):
        assert one.provenance["threads"] == two.provenance["threads"] == 1  # the pinned default
        assert one.data["history"]["epochs"] == two.data["history"]["epochs"]
        assert one.data["history"]["steps"] == two.data["history"]["steps"]


@needs_fashion_mnist
def test_another_thread_count_changes_numbers_only_within_the_documented_tolerance(tmp_path, monkeypatch):
    import math

    from bnrepro.core.device import THREAD_TOLERANCE

    cfg = _lenet_configs([0])[0].replace(n_train=1024, n_test=128, epochs=2)
    runs = {}
    for threads in ("1", "2"):
        monkeypatch.setenv("BNREPRO_THREADS", threads)
        monkeypatch.setenv("BNREPRO_RESULTS", str(tmp_path / threads))
        assert run_sweep([cfg], log=lambda *a, **k: None).ok
        runs[threads] = read(path_for(cfg), cfg)
        assert runs[threads].provenance["threads"] == int(threads)
    (a, b) = (r.data["history"] for r in runs.values())
    pairs = [(x[1], y[1]) for x, y in zip(a["steps"], b["steps"])]
    pairs += [(x[k], y[k]) for x, y in zip(a["epochs"], b["epochs"]) for k in ("train_loss", "test_loss")]
    assert len(pairs) >= 5
    for x, y in pairs:
        assert math.isclose(x, y, rel_tol=THREAD_TOLERANCE), (x, y)


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_thread_count_is_one_clear_error(value, tmp_results, monkeypatch, capsys):
    monkeypatch.setenv("BNREPRO_THREADS", value)
    assert main(["run", "lenet", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    assert f"BNREPRO_THREADS={value!r}" in err and len(err.strip().splitlines()) == 1
    assert not tmp_results.exists()


def test_an_unusable_results_folder_stops_a_pooled_sweep_before_any_run(tmp_path, monkeypatch):
    import bnrepro.runner.sweep as sweep
    from bnrepro.core.store import ResultsFolderError

    (tmp_path / "r").write_text("")
    monkeypatch.setenv("BNREPRO_RESULTS", str(tmp_path / "r"))
    monkeypatch.setattr(sweep, "_pool", lambda *a, **k: pytest.fail("a run was started"))
    with pytest.raises(ResultsFolderError, match="is a file, not a folder.*BNREPRO_RESULTS"):
        run_sweep(_lenet_configs([0, 1]), jobs=2, log=lambda *a, **k: None)


@needs_fashion_mnist
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from Linux /proc")
def test_workers_of_a_sweep_killed_with_sigkill_end_too(tmp_results):
    proc, paths, _ = _sweep_with_a_finished_run(tmp_results)
    try:
        workers = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # the parent only: no handler of it runs
        proc.wait(timeout=30)
        _wait_until(lambda: not any(_running(pid) for pid in workers),
                    "orphaned workers still running: they outlive their sweep")
        assert sum(p.exists() for p in paths) < len(paths), "the orphans did not go on with the queued runs"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.stdout.close()


def test_sigterm_stops_an_in_process_sweep_and_restores_the_handler(tmp_results, monkeypatch):
    import bnrepro.core.store as store
    import bnrepro.runner.sweep as sweep
    from bnrepro.runner.sweep import Terminated

    configs = _lenet_configs([0, 1, 2])
    ran = []

    def fake(cfg, **kw):
        ran.append(cfg.seed)
        if cfg.seed == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` does, mid-run
        store.save(store.Result(cfg.experiment, cfg.to_dict(), {"ok": 1}, {}), cfg)

    monkeypatch.setattr(sweep, "load_or_run", fake)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated):
        run_sweep(configs, log=lambda *a, **k: None)
    assert ran == [0, 1], "no run starts after SIGTERM"
    assert path_for(configs[0]).exists() and not path_for(configs[1]).exists()
    assert signal.getsignal(signal.SIGTERM) is before
