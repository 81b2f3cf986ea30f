"""The verdict standards (see bnrepro.core.claims): what a skeptical reader relies on.

* every committed result comes from a clean, committed revision and was run to
  test the claims' rules now in the code (a rule changed after its results
  were stored fails here: re-run, never edit);
* claim ids are unique across the book; every paper claim cites a key of
  ``book/references.bib``; no source cites the tracker or ourselves.
"""

import json
import re
import subprocess

import pytest

from bnrepro.chapters import chapters
from bnrepro.core.claims import CHECK, PAPER_KINDS, ClaimSpec, registered_claims, rules_hash
from bnrepro.experiments import list_experiments
from conftest import REPO

RESULTS = REPO / "results"


def committed_results():
    return sorted(p for p in RESULTS.glob("*/*.json") if p.parent.name != "gpu")


def all_specs() -> list[tuple[str, ClaimSpec]]:
    import importlib

    out = []
    for ch in chapters():
        module = importlib.import_module(f"bnrepro.chapters.{ch.module}")
        out += [(ch.module, s) for s in module.SPECS]
    return out


def bib_keys() -> set[str]:
    bib = REPO / "book" / "references.bib"
    return set(re.findall(r"@\w+\s*\{\s*([^,\s]+)\s*,", bib.read_text())) if bib.exists() else set()


def test_every_committed_result_is_from_a_clean_committed_revision():
    bad = []
    in_repo = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=REPO,
                             capture_output=True, text=True).returncode == 0
    for path in committed_results():
        rev = json.loads(path.read_text())["provenance"].get("git_revision", "unknown")
        if rev == "unknown" or rev.endswith("+dirty"):
            bad.append(f"{path.relative_to(REPO)}: {rev}")
        elif in_repo and subprocess.run(["git", "merge-base", "--is-ancestor", rev, "HEAD"], cwd=REPO,
                                        capture_output=True).returncode != 0:
            bad.append(f"{path.relative_to(REPO)}: {rev} is not in this branch's history")
    assert bad == [], "re-run these from committed code (make reproduce on a clean checkout):\n" + "\n".join(bad)


def test_every_committed_result_tests_the_rules_now_in_the_code():
    list_experiments()  # import every experiment: each registers its claims
    stale = []
    for path in committed_results():
        blob = json.loads(path.read_text())
        then, now = blob["provenance"].get("rules_hash"), rules_hash(blob["experiment"])
        if then != now:
            stale.append(f"{path.relative_to(REPO)}: rules {then} at run time, {now} now")
    assert stale == [], ("these results were run to test other rules than the code's: re-run them "
                         "(make reproduce), never edit them:\n" + "\n".join(stale))


def test_registered_claims_are_scored_by_a_chapter():
    list_experiments()
    scored = {s.id for _, s in all_specs()}
    registered = {s.id for exp, specs in registered_claims().items() for s in specs
                  if not exp.startswith("_test")}
    assert registered - scored == set()


def test_claim_ids_are_unique_across_the_book():
    ids = [s.id for _, s in all_specs()]
    assert sorted({i for i in ids if ids.count(i) > 1}) == []


def test_sources_are_citations():
    keys = bib_keys()
    bad = []
    for module, s in all_specs():
        if s.kind in PAPER_KINDS and s.source not in keys:
            bad.append(f"{module}:{s.id}: source {s.source!r} is not a key of book/references.bib")
        if s.kind == CHECK and s.source is not None and s.source not in keys:
            bad.append(f"{module}:{s.id}: source {s.source!r} is not a key of book/references.bib")
        text = " ".join([s.where, s.statement, s.paper, s.reason]).lower()
        if re.search(r"\bissue\s*\d|\bour target\b|\bas we recall|\(ours\)|\bseed:", text):
            bad.append(f"{module}:{s.id}: cites the tracker or ourselves: {text[:80]!r}")
    assert bad == []


@pytest.mark.parametrize("name", [e.name for e in list_experiments()])
def test_each_experiment_result_records_its_rules_hash(name):
    from bnrepro.core.results import make_result

    exp = [e for e in list_experiments() if e.name == name][0]
    cfg = exp.config.for_profile("smoke")
    data = {k: None for k in cfg.result_keys}
    r = make_result(cfg, data, device="cpu", started=0.0, seeds={})
    assert r.provenance["rules_hash"] == rules_hash(name)


def test_reproduce_knows_each_chapters_experiments_and_refuses_a_modified_checkout(monkeypatch):
    from bnrepro import reproduce as rep

    assert rep.chapter_experiments("lenet") == ["lenet"]
    with pytest.raises(ValueError, match="unknown chapter 'nope'; the chapters are: lenet, "):
        rep.reproduce("cpu", "nope")
    monkeypatch.delenv("BNREPRO_RESULTS", raising=False)
    monkeypatch.setattr(rep, "git_revision", lambda: "abc+dirty")
    with pytest.raises(rep.DirtyCheckout, match="Commit first, or pass --allow-dirty"):
        rep.check_clean("cpu")
    rep.check_clean("smoke")  # smoke runs are throw-away
    rep.check_clean("cpu", allow_dirty=True)
    monkeypatch.setattr(rep, "git_revision", lambda: "abc")
    rep.check_clean("cpu")


def test_a_result_without_the_current_rules_hash_is_recomputed(tmp_results):
    from bnrepro.core.results import Result
    from bnrepro.core.store import load, save
    from bnrepro.experiments.lenet import LeNetConfig

    cfg = LeNetConfig.for_profile("smoke")
    data = {"history": {"epochs": []}, "parameters": 1, "data_source": "x"}
    save(Result(cfg.experiment, cfg.to_dict(), data, {"device": "cpu", "rules_hash": rules_hash("lenet")}), cfg)
    assert load(cfg) is not None
    for stale in ({"device": "cpu"}, {"device": "cpu", "rules_hash": "0" * 16}):
        save(Result(cfg.experiment, cfg.to_dict(), data, stale), cfg)
        with pytest.warns(RuntimeWarning, match="run under other claim rules"):
            assert load(cfg) is None
