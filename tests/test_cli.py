import json
import subprocess
import sys
from pathlib import Path

import pytest

from bnrepro.cli import main
from bnrepro.data import datasets as data_mod


def test_console_script_help():
    exe = Path(sys.executable).with_name("bnrepro")
    assert exe.exists(), "pip install -e . should install the bnrepro console command"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=600)  # a hang guard only
    assert out.returncode == 0 and "run" in out.stdout and "bench" in out.stdout


def test_list(capsys):
    assert main(["list"]) == 0
    assert "lenet" in capsys.readouterr().out


@pytest.mark.parametrize("argv,needle", [
    (["run", "lenet", "--profile", "smoke", "--set", "lr=-1"], "lr=-1.0"),
    (["run", "lenet", "--set", "learning_rate=0.1"], "no field 'learning_rate'"),
    (["run", "lenet", "--set", "lr"], "NAME=VALUE"),
    (["run", "lenet", "--set", "epochs=two"], "epochs='two'"),
    (["run", "resnet9000"], "unknown experiment 'resnet9000'"),
    (["run", "lenet", "--profile", "smoke", "--device", "tpu"], "tpu"),
])
def test_user_mistakes_give_one_clear_line(argv, needle, capsys, tmp_results):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_missing_data_names_the_fixes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BNREPRO_DATA", str(tmp_path / "nodata"))
    monkeypatch.setenv("BNREPRO_CACHE", str(tmp_path / "nocache"))
    monkeypatch.setenv("BNREPRO_OFFLINE", "1")
    monkeypatch.setattr(data_mod, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "nodebian")
    assert main(["data", "fashion-mnist"]) == 2
    err = capsys.readouterr().err
    for fix in ("apt-get install dataset-fashion-mnist", "BNREPRO_DATA", "download"):
        assert fix in err


def test_run_one_config_stores_it(tmp_results, capsys):
    from conftest import have_fashion_mnist

    if not have_fashion_mnist():
        pytest.skip("Fashion-MNIST files absent (run `make data`)")
    argv = ["run", "lenet", "--profile", "smoke", "--set", "n_train=128", "--set", "n_test=64"]
    assert main(argv) == 0
    files = list((tmp_results / "lenet").glob("*.json"))
    assert len(files) == 1
    blob = json.loads(files[0].read_text())
    assert blob["config"]["n_train"] == 128 and blob["provenance"]["torch_version"]
    assert blob["provenance"]["world_size"] == 1 and blob["parallel"]["bn_mode"] == "local"
    mtime = files[0].stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0
    assert "1 of 1 run(s) already stored: loaded, not run again" in capsys.readouterr().out
    assert files[0].stat().st_mtime_ns == mtime


@pytest.mark.parametrize("argv,needle", [
    (["run", "lenet", "--profile", "smoke", "--set", "lr=inf"], "lr=inf: must be a finite number"),
    (["run", "lenet", "--profile", "smoke", "--grid", "lr=0.1,nan"], "lr=nan: must be a finite number"),
    (["run", "lenet", "--profile", "smoke", "--set", "n_train=60001"],
     "n_train=60001: fashion-mnist has 60000 training images"),
])
def test_impossible_values_fail_before_any_run(argv, needle, capsys, tmp_results):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not tmp_results.exists()
