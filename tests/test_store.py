import json
import os
import time
import warnings

import pytest

from bnrepro.core import store
from bnrepro.core.claims import rules_hash
from bnrepro.core.store import Result, load, path_for, read, save
from bnrepro.experiments.lenet import LeNetConfig
from bnrepro.runner import load_or_run

CFG = LeNetConfig.for_profile("smoke")


def fake(cfg, value=1.0):
    data = {"history": {"epochs": []}, "parameters": 1, "data_source": "test",  # what every lenet result holds
            "value": value, "nan": float("nan")}
    return Result(cfg.experiment, cfg.to_dict(), data, {"device": "cpu (2 threads)", "wall_time_s": 0.1,
                                                         "rules_hash": rules_hash(cfg.experiment)})


@pytest.fixture
def fake_runner(monkeypatch):
    """Replace the lenet experiment's run by a recorder; returns its call list."""
    import bnrepro.experiments as exps

    exp = exps.get_experiment("lenet")

    def install(value):
        calls = []

        def run(cfg, device=None):
            calls.append(cfg)
            return fake(cfg, value)

        monkeypatch.setitem(exps._REGISTRY, "lenet", exp.__class__(exp.name, exp.config, run, exp.sweep))
        return calls

    return install


def test_save_then_load_roundtrip(tmp_results):
    path = save(fake(CFG), CFG)
    assert path == tmp_results / "lenet" / f"{CFG.hash()}.json"
    got = load(CFG)
    assert got.loaded and got["value"] == 1.0 and got["nan"] is None
    assert got.config == CFG.to_dict()
    assert not list(path.parent.glob("*.tmp")), "no temporary file is left behind"


@pytest.mark.parametrize("corrupt", [
    lambda text: text[: len(text) // 2],                                  # truncated write
    lambda text: text.replace('"complete": true', '"complete": false'),   # no completion marker
    lambda text: "",                                                      # empty file
    lambda text: text.replace('"value": 1.0', '"value": 1.0, "x": ') ,    # not JSON
])
def test_corrupt_file_is_not_loaded_but_recomputed(tmp_results, fake_runner, corrupt):
    path = save(fake(CFG, 1.0), CFG)
    path.write_text(corrupt(path.read_text()))
    with pytest.warns(RuntimeWarning, match="unusable"):
        assert load(CFG) is None

    calls = fake_runner(2.0)
    with pytest.warns(RuntimeWarning, match="unusable"):
        result = load_or_run(CFG, verbose=False)
    assert calls == [CFG] and result["value"] == 2.0 and not result.loaded
    assert read(path, CFG)["value"] == 2.0  # the recomputed result replaced the corrupt file


def test_result_of_another_config_is_rejected(tmp_results):
    other = CFG.replace(seed=5)
    path = save(fake(other), other)
    path.rename(path_for(CFG))  # a file at the wrong key
    with pytest.warns(RuntimeWarning, match="another config"):
        assert load(CFG) is None


def test_load_or_run_uses_store_and_says_so(tmp_results, fake_runner, capsys):
    calls = fake_runner(1.0)
    first = load_or_run(CFG)
    assert "running" in capsys.readouterr().out and not first.loaded
    second = load_or_run(CFG)
    assert "found stored result, loading" in capsys.readouterr().out and second.loaded
    assert calls == [CFG]
    load_or_run(CFG, force=True, verbose=False)
    assert len(calls) == 2


def test_results_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("BNREPRO_RESULTS", str(tmp_path / "r"))
    assert store.results_dir() == tmp_path / "r"


def test_stored_json_is_plain(tmp_results):
    path = save(fake(CFG), CFG)
    blob = json.loads(path.read_text())
    assert blob["complete"] is True and blob["config_hash"] == CFG.hash()
    assert set(blob) >= {"config", "data", "provenance", "experiment", "format"}


def _edit_blob(path, change):
    blob = json.loads(path.read_text())
    change(blob)
    path.write_text(json.dumps(blob))


@pytest.mark.parametrize("change, reason", [
    (lambda b: b.update(data={}), "holds no measurements"),
    (lambda b: b.update(data=5), "'data' is int, not dict"),
    (lambda b: b.update(data=[1, 2]), "'data' is list, not dict"),
    (lambda b: b["data"].pop("history"), "'data' lacks 'history'"),
    (lambda b: b.update(format=999), "format 999"),
    (lambda b: b.pop("format"), "format None"),
    (lambda b: b.update(experiment="bn_only"), "made by experiment 'bn_only'"),
    (lambda b: b.update(provenance=[]), "'provenance' is list"),
    (lambda b: b.update(config="lenet"), "'config' is str"),
    (lambda b: b.update(parallel=3), "'parallel' is int"),
])
def test_a_result_of_the_wrong_shape_is_not_loaded_but_recomputed(tmp_results, fake_runner, change, reason):
    path = save(fake(CFG, 1.0), CFG)
    _edit_blob(path, change)
    with pytest.warns(RuntimeWarning, match=reason):
        assert load(CFG) is None
    calls = fake_runner(2.0)
    with pytest.warns(RuntimeWarning, match="unusable"):
        result = load_or_run(CFG, verbose=False)
    assert calls == [CFG] and result["value"] == 2.0
    assert read(path, CFG)["value"] == 2.0


def _committed_results():
    from conftest import REPO

    return sorted((REPO / "results").glob("*/*.json"))


@pytest.mark.parametrize("path", _committed_results(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_committed_result_passes_the_schema_and_loads_without_warnings(path):
    from bnrepro.core.data_parallel import DataParallel
    from bnrepro.experiments import get_experiment

    blob = json.loads(path.read_text())
    cfg = get_experiment(path.parent.name).config(**blob["config"])
    spec = DataParallel(**blob["parallel"]) if blob.get("parallel") else None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = load(cfg, root=path.parents[1], parallel=spec)
    assert found is not None and found.loaded and path_for(cfg, path.parents[1], spec) == path


def test_committed_results_are_found():
    assert len(_committed_results()) > 100


# ------------------------------------------------------------ the results folder, checked before a run
def test_a_results_path_that_is_a_file_fails_before_the_run(tmp_path, monkeypatch, fake_runner):
    calls = fake_runner(1.0)
    for where in (tmp_path / "results-file", tmp_path / "results-file" / "below"):
        (tmp_path / "results-file").write_text("not a folder")
        monkeypatch.setenv("BNREPRO_RESULTS", str(where))
        with pytest.raises(store.ResultsFolderError, match=r"results-file is a file, not a folder.*BNREPRO_RESULTS"):
            load_or_run(CFG, verbose=False)
    assert calls == [], "nothing is trained when it could not be stored"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions, not root")
def test_an_unwritable_results_folder_fails_before_the_run(tmp_results, fake_runner):
    calls = fake_runner(1.0)
    tmp_results.mkdir()
    tmp_results.chmod(0o555)
    try:
        with pytest.raises(store.ResultsFolderError, match=r"cannot write results into .*BNREPRO_RESULTS"):
            load_or_run(CFG, verbose=False)
    finally:
        tmp_results.chmod(0o755)
    assert calls == []


def test_a_result_whose_save_fails_after_the_run_is_kept(tmp_results, tmp_path, monkeypatch):
    import bnrepro.experiments as exps

    monkeypatch.setattr(store, "rescue_dir", lambda: tmp_path / "rescued")
    exp = exps.get_experiment("lenet")

    def run(cfg, device=None):  # the folder is taken away while the run trains
        (tmp_results / "lenet").rmdir()
        (tmp_results / "lenet").write_text("")
        return fake(cfg, 3.0)

    monkeypatch.setitem(exps._REGISTRY, "lenet", exp.__class__(exp.name, exp.config, run, exp.sweep))
    with pytest.raises(store.ResultsFolderError, match=r"could not store the result .* it is kept in .*rescued"):
        load_or_run(CFG, verbose=False)
    monkeypatch.setenv("BNREPRO_RESULTS", str(tmp_path / "rescued"))
    assert load(CFG)["value"] == 3.0


def test_stale_temporaries_of_killed_saves_are_removed(tmp_results, fake_runner):
    folder = tmp_results / "lenet"
    folder.mkdir(parents=True)
    stale, fresh = folder / f"{CFG.hash()}.jsonab12.tmp", folder / f"{CFG.hash()}.jsoncd34.tmp"
    for tmp in (stale, fresh):
        tmp.write_text('{"half": ')
    old = time.time() - store.STALE_TMP_S - 60
    os.utime(stale, (old, old))
    fake_runner(1.0)
    load_or_run(CFG, verbose=False)
    assert not stale.exists(), "a temporary older than any save is left over from a killed one"
    assert fresh.exists(), "a recent temporary may be another process's save in progress"
    assert read(path_for(CFG), CFG)["value"] == 1.0


def test_the_cli_names_the_fix_for_a_results_path_that_is_a_file(tmp_path, monkeypatch, fake_runner, capsys):
    from bnrepro.cli import main

    calls = fake_runner(1.0)
    (tmp_path / "r").write_text("")
    monkeypatch.setenv("BNREPRO_RESULTS", str(tmp_path / "r"))
    assert main(["run", "lenet", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "BNREPRO_RESULTS" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and calls == []


def test_a_read_only_store_that_holds_every_result_still_loads(tmp_results, fake_runner):
    save(fake(CFG), CFG)
    calls = fake_runner(2.0)
    from unittest import mock

    with mock.patch.object(store, "prepare_folder", side_effect=AssertionError("no check when nothing runs")):
        assert load_or_run(CFG, verbose=False)["value"] == 1.0
    assert calls == []
