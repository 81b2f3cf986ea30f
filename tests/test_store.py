import json
import warnings

import pytest

from bnrepro import store
from bnrepro.experiments.lenet import LeNetConfig
from bnrepro.store import Result, load, load_or_run, path_for, read, save

CFG = LeNetConfig.for_profile("smoke")


def fake(cfg, value=1.0):
    return Result(cfg.experiment, cfg.to_dict(), {"value": value, "nan": float("nan")},
                  {"device": "cpu (2 threads)", "wall_time_s": 0.1})


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
