"""One home per chapter: book/X.ipynb <-> bnrepro/chapters/X.py, listed once, in the book's order."""

import inspect

import yaml

from bnrepro import scorecard
from bnrepro.chapters import CHAPTERS, SUMMARY_PAGES, chapters
from conftest import REPO


def toc_pages() -> list[str]:
    """Every page of ``_toc.yml`` in reading order: the root first, then each part's chapters."""
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    return [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]


def test_the_chapter_list_is_the_toc_in_order():
    """The intro (the book's root), the scorecard and the references summarize the chapters and
    score no claims of their own; every other page of the table of contents is a chapter, in this order."""
    pages = toc_pages()
    assert set(SUMMARY_PAGES) <= set(pages), "a summary page is missing from _toc.yml"
    assert pages[0] == "book/intro" and pages[-2:] == ["book/scorecard", "book/references"]
    assert [doc for doc, _, _ in CHAPTERS] == [p for p in pages if p not in SUMMARY_PAGES]


def test_each_chapter_has_one_module_named_as_its_notebook():
    modules = sorted(p.stem for p in (REPO / "bnrepro" / "chapters").glob("*.py") if p.stem != "__init__")
    assert sorted(module for _, _, module in CHAPTERS) == modules, "a chapter module that is not listed, or vice versa"
    for doc, title, module in CHAPTERS:
        assert doc == f"book/{module}" and (REPO / f"{doc}.ipynb").exists(), doc
        assert title and len({t for _, t, _ in CHAPTERS}) == len(CHAPTERS)


def test_every_chapter_has_the_one_claims_signature():
    for chapter in chapters():
        params = inspect.signature(chapter.claims).parameters
        assert list(params) == ["profile", "device"], chapter.module
        assert params["device"].default is None, chapter.module


def test_the_scorecard_reads_the_chapters_in_book_order(monkeypatch):
    from bnrepro.core.claims import CHECK, ClaimSpec, at_least

    assert [c.doc for c in scorecard.chapters()] == [doc for doc, _, _ in CHAPTERS]
    fake = [scorecard.Chapter(doc, title, module,
                              lambda profile, device=None, m=module: [
                                  ClaimSpec(f"{m}-1", CHECK, "s", "p", at_least(0.5), "why").score(1.0, profile)])
            for doc, title, module in CHAPTERS]
    monkeypatch.setattr(scorecard, "chapters", lambda: fake)
    table = scorecard.collect("smoke")
    assert list(table["doc"]) == [doc for doc, _, _ in CHAPTERS]
    assert list(table["chapter"]) == [title for _, title, _ in CHAPTERS]
    assert scorecard.counts(table, kinds=(CHECK,))["reproduced"] == len(CHAPTERS)
    assert sum(scorecard.counts(table).values()) == 0  # checks are not paper claims


def test_experiments_know_nothing_of_chapters_or_the_scorecard():
    """Chapters read experiments; an experiment never imports a chapter or the scorecard back
    (not even inside a function)."""
    from test_layering import import_graph

    graph = import_graph()
    up = sorted(f"{m} imports {d}" for m, deps in graph.items() if m.startswith("bnrepro.experiments")
                for d in deps if d.startswith(("bnrepro.chapters", "bnrepro.scorecard")))
    assert up == []


def test_chapters_name_their_sweeps_and_load_through_the_runner():
    """No chapter goes through the experiment registry, or around the runner to the store's loader."""
    import ast

    for _, _, module in CHAPTERS:
        path = REPO / "bnrepro" / "chapters" / f"{module}.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = {a.name for a in node.names}
                assert not (node.module == "experiments" and node.level == 2 and "get_experiment" in names), path
                assert not (node.module == "core.store" and "load_or_run" in names), path
