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
