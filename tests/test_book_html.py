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
