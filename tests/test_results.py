"""Results: built by one helper that checks the experiment's measurements, read by attribute."""

import ast
import json

import pytest

from bnrepro.core.claims import rules_hash
from bnrepro.core.results import Measurements, MissingMeasurement, Result, make_result
from bnrepro.core.store import load, save
from bnrepro.experiments.lenet import LeNetConfig
from conftest import REPO


def test_make_result_checks_the_promised_measurements_and_stamps_provenance():
    cfg = LeNetConfig.for_profile("smoke")
    with pytest.raises(ValueError, match=r"lenet: run\(\) returned no 'parameters', 'data_source'"):
        make_result(cfg, {"history": {}}, device="cpu", started=0.0, seeds={"init": 0})
    r = make_result(cfg, {"history": {"epochs": []}, "parameters": 1, "data_source": "x"},
                    device="cpu", started=0.0, seeds={"init": 0}, extra={"world_size": 1})
    assert r.experiment == "lenet" and r.config == cfg.to_dict()
    assert r.provenance["seeds"] == {"init": 0} and r.provenance["world_size"] == 1
    assert r.provenance["wall_time_s"] > 0 and "git_revision" in r.provenance


def test_measurements_read_by_attribute_and_name_what_is_missing(tmp_results):
    cfg = LeNetConfig.for_profile("smoke")
    data = {"history": {"epochs": [{"test_acc": 0.5}], "diverged": False}, "parameters": 7, "data_source": "x"}
    save(Result(cfg.experiment, cfg.to_dict(), data, {"device": "cpu", "rules_hash": rules_hash(cfg.experiment)}), cfg)
    r = load(cfg)
    assert r.data.history.epochs[-1].test_acc == 0.5 and r["history"]["diverged"] is False
    with pytest.raises(MissingMeasurement, match=r"result of lenet \(.*\.json\)\.history has no measurement "
                                                 r"'images_per_s'; it holds: 'diverged', 'epochs'"):
        r.data.history.images_per_s
    with pytest.raises(KeyError):  # still a KeyError for code that reads by key
        r["nothing"]
    assert json.loads(json.dumps(r.to_json()))["data"] == data  # still plain JSON


def test_measurements_are_plain_dicts_for_json_and_pickle():
    import pickle

    m = Measurements({"a": {"b": [1, {"c": 2}]}}, "result of x")
    assert m.a.b[1].c == 2 and json.dumps(m) == '{"a": {"b": [1, {"c": 2}]}}'
    assert pickle.loads(pickle.dumps(m)) == m


def test_every_experiment_builds_its_result_with_make_result():
    """No experiment assembles a Result (and its provenance) by hand."""
    by_hand = []
    for path in sorted((REPO / "bnrepro" / "experiments").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("Result", "provenance"):
                by_hand.append(f"{path.name}:{node.lineno}")
    assert by_hand == []
