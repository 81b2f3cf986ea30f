"""The built book as a reader meets it, checked in headless Chromium (tests/browser_check.py).

`make test` builds the book at the smoke profile first; run by hand with
`make book PROFILE=smoke && pytest tests/test_book_html.py`.
"""

import os
from pathlib import Path

import pytest

from browser_check import check_links, check_pages, find_chromium

REPO = Path(__file__).resolve().parents[1]
HTML = REPO / "_build" / os.environ.get("BNREPRO_PROFILE", "smoke") / "_build" / "html"


@pytest.fixture(scope="module")
def html():
    if not (HTML / "index.html").exists():
        pytest.skip(f"no built book at {HTML.relative_to(REPO)}: run `make book PROFILE=smoke` first")
    return HTML


def test_internal_links_and_anchors_resolve(html):
    assert check_links(html) == []


def test_pages_in_a_real_browser(html):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium not found (Debian: apt-get install chromium; `make browser` does it)")
    problems = check_pages(html, chromium, REPO / "_build" / "screenshots")
    assert problems == [], "\n".join(problems)


def test_the_check_catches_what_it_should(tmp_path):
    """The checker itself must fail on a broken page (a test that cannot fail proves nothing)."""
    (tmp_path / "index.html").write_text(
        '<html><body><article><p>raw $$x^2$$ math</p><a href="missing.html">x</a>'
        '<a href="#nowhere">y</a><img src="nothing.png">'
        '<div class="cell_output"><pre>UserWarning: careful</pre></div></article></body></html>')
    links = check_links(tmp_path)
    assert any("missing page" in p for p in links) and any("missing anchor" in p for p in links)
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium not found")
    problems = check_pages(tmp_path, chromium, None)
    kinds = " ".join(problems)
    assert "unrendered math" in kinds and "image did not load" in kinds and "Warning" in kinds
    assert "failed request" in kinds


def test_a_page_that_never_gets_ready_is_one_problem_line(tmp_path):
    """A page whose MathJax never finishes typesetting (or fails) is reported by
    name and by what it waited for; the check goes on to the next page. The
    promise below never settles, so the bound is reached on any machine. A
    redirect-only page is not opened (it navigates away), but its target must exist."""
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium not found")
    mathjax = '<script>window.MathJax = {{startup: {{promise: {}}}}};</script><p>x</p>'
    (tmp_path / "index.html").write_text(mathjax.format("new Promise(() => {})"))
    (tmp_path / "rejected.html").write_text(mathjax.format("Promise.reject('no fonts')"))
    (tmp_path / "fine.html").write_text("<html><body><article><p>fine</p></article></body></html>")
    (tmp_path / "moved.html").write_text('<meta http-equiv="Refresh" content="0; url=fine.html" />')
    (tmp_path / "lost.html").write_text('<meta http-equiv="Refresh" content="0; url=gone.html" />')
    problems = check_pages(tmp_path, chromium, None, ready_timeout_s=2)
    assert problems == [
        "index.html: page did not get ready: waited 2 s for MathJax's first typeset (MathJax.startup.promise)",
        "lost.html: redirects to missing page 'gone.html'",
        "rejected.html: page did not get ready: MathJax's first typeset (MathJax.startup.promise) failed: no fonts",
    ], problems


BROKEN = """<html><head><meta charset="utf-8"><title>What \\gamma does</title></head><body>
<nav class="bd-sidebar"><a href="index.html">Training only \\beta</a></nav>
<article style="width: 800px">
<p>Loaded from /home/someone/.cache/bnrepro/fmnist.pt, as issue 12 asked.</p>
<table class="dataframe"><tr><th>0</th><td>1</td></tr><tr><th>...</th><td>...</td></tr></table>
<p>3 rows × 2 columns</p>
<table style="width: 1400px"><tr><td>a table wider than the column</td></tr></table>
<div style="width: 600px; overflow-x: auto"><table style="width: 1200px"><tr><td>scrolls</td></tr></table></div>
<div class="cell_output"><pre style="overflow-x: auto">{long_line}</pre></div>
<svg width="2000" height="10"></svg>
<div class="cell_output"><pre>found stored result, loading: abc
found stored result, loading: def
Name: relative effective lr, dtype: float64
&lt;bnrepro.Result object at 0x7f3a2b&gt;
issue seed: cross-device statistics</pre></div>
</article></body></html>""".replace("{long_line}", "x" * 400)

FINE = """<html><head><meta charset="utf-8"><title>What γ does</title></head><body>
<nav class="bd-sidebar"><a href="index.html">Training only β</a></nav>
<article style="width: 800px">
<p>Every row shown; this page mentions issues of PyTorch and the path /usr/share/datasets.</p>
<table><tr><th>claim</th><td>a claim whose text wraps in the column</td></tr></table>
<div class="math" style="overflow-x: auto; max-width: 100%"><svg width="2000" height="10"></svg></div>
<div class="cell_output docutils container"><div class="output stream highlight-myst-ansi notranslate">
<div class="highlight"><pre>found stored result: 3 runs loaded, 0 run, 12 s of stored compute</pre></div></div></div>
</article></body></html>"""


def test_the_reader_probes_catch_what_they_should(tmp_path):
    """Each of issue 17's probes fails on a small broken page, and none fires on a page that
    does the same things right (a wide equation scrolling inside its own box, one stored-result
    line, paths that are not local folders, "issues" that are not tracker entries)."""
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium not found")
    broken, fine = tmp_path / "broken", tmp_path / "fine"
    broken.mkdir()
    fine.mkdir()
    (broken / "index.html").write_text(BROKEN)
    (fine / "index.html").write_text(FINE)
    problems = check_pages(broken, chromium, None)
    text = "\n".join(problems)
    expected = [
        "truncated table: '3 rows × 2 columns'",
        'truncated table: table.dataframe',
        "raw TeX in the <title>: 'What \\\\gamma does'",
        "raw TeX in the navigation: 'Training only \\\\beta'",
        "local path in the text: ",
        "tracker word in the text: ",
        "tracker word in the outputs: ",
        "2 'found stored result' lines",
        'too wide: table "a table wider than the column": runs',
        'too wide: table "scrolls": is 1200 px wide in a 800 px column',
        "too wide: pre \"xxxx",
        "too wide: svg: runs",
        "too wide: the page scrolls sideways",
    ]
    missing = [e for e in expected if e not in text]
    assert not missing, f"not caught: {missing}\nfound:\n{text}"
    reprs = [p for p in problems if "Python repr" in p]
    assert len(reprs) == 2 and "dtype: float64" in reprs[0] and "object at 0x7f3a2b>" in reprs[1], reprs
    assert check_pages(fine, chromium, None) == []
