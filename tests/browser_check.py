"""Open every page of the built book in headless Chromium and report what a reader would see broken.

    python tests/browser_check.py _build/smoke/_build/html [--screenshots DIR]

Fails (exit 1) when a page has math left unrendered, an image that did not
load, an internal link or anchor that goes nowhere, a cell output showing a
traceback, a warning or a progress bar's control characters, a request
for a resource that is not there (any request leaving the local server
counts: the book must work offline), or a page that does not get ready (load
event, MathJax's first typeset, images, fonts: each wait bounded, and a page
that passes the bound is one problem line naming what it waited for).

What a reader trips over, too (issue 17's probes; each is shown to fail on a
small broken page by tests/test_book_html.py):

* a truncated table: pandas' "N rows × M columns" or a row/column of "..." cells;
* anything wider than the article column at 1280 px: a table, a picture or a code
  block whose box runs past the column (display math may scroll in its own box,
  a table or a printed output may not), or a page that scrolls sideways;
* raw TeX (a backslash command such as \\gamma) in the page's <title>, the
  navigation (sidebars, header, table of contents) or the text;
* a local path (/home/, /tmp/, /work/, /root/, ~/.cache) or a tracker word
  ("issue 12", "issue seed") in the text or the outputs;
* more than one "found stored result" line on a page;
* a Python repr in an output: a pandas Series footer ("Name: x, dtype: float64"),
  "<... object at 0x...>", or a figure printed as "<Figure size ...>".

Saves screenshots of the intro, of each chapter's first figure and of each
page's first claims table for review.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import re
import shutil
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlparse

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
# The probe's flags: without the background-networking ones Chromium calls home and fails offline.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
BAD_OUTPUT = re.compile(r"Traceback \(most recent call last\)|\b\w*Warning\b:|\x1b\[|\r|\d+it/s\]|it/s\]")
RAW_MATH = re.compile(r"\\\(|\\\[|\$\$|\\begin\{")
TRUNCATED = re.compile(r"\b\d+ rows × \d+ columns\b")
RAW_TEX = re.compile(r"\\[A-Za-z]{2,}")
LOCAL_PATH = re.compile(r"(?<![\w.])(/home/|/tmp/|/work/|/root/|/Users/|~/\.cache)")
TRACKER = re.compile(r"\bissues?\s+(#?\d+|seed)\b", re.I)
STORED_LINE = re.compile(r"found stored result", re.I)
PY_REPR = re.compile(r"Name: [^\n]*, dtype: \w+|<[\w.]+ object at 0x[0-9a-fA-F]+>|<Figure size \d+x\d+ with \d+ Axes>")
SKIP_PAGES = {"search.html", "genindex.html"}
# A page that only redirects (Jupyter Book's root index.html) navigates away
# as soon as it loads; its target is checked as a page of its own.
REDIRECT = re.compile(r"""<meta\s+http-equiv=["']?refresh["']?\s+content=["']?\s*\d+\s*;\s*url=([^"'>\s]+)""", re.I)
# Each wait for a page to get ready is bounded by this many seconds. It is a
# bound on a hang, not a guess at how long a page takes: a page that is ready
# sooner is checked at once, and only a page that never gets ready pays it.
READY_TIMEOUT_S = 120.0

# What "ready" means, one condition at a time, each a JavaScript predicate
# polled by Playwright until it returns something truthy. MathJax: its startup
# promise resolves after the first typeset (MathJax 3); we note how it settled.
_MATHJAX_SETTLED = """() => {
    const p = window.MathJax && MathJax.startup && MathJax.startup.promise;
    if (!p) return false;
    if (window.__bnreproMath === undefined) {
        window.__bnreproMath = null;
        p.then(() => { window.__bnreproMath = "ok"; },
               e => { window.__bnreproMath = "failed: " + e; });
    }
    return window.__bnreproMath;
}"""
_HAS_MATHJAX = "() => !!document.querySelector('script[src*=\"mathjax\" i]') || !!window.MathJax"
_IMAGES_COMPLETE = """() => {
    const images = [...document.images];
    images.forEach(i => { if (i.loading === "lazy") i.loading = "eager"; });  // load below the fold too
    return images.every(i => i.complete);
}"""
_FONTS_LOADED = "() => !document.fonts || document.fonts.status === 'loaded'"


def find_chromium() -> str | None:
    for path in CHROMIUM_CANDIDATES:
        if Path(path).exists():
            return path
    return shutil.which("chromium") or shutil.which("chromium-browser")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the report lists failures; no access log
        pass


def _serve(root: Path):
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def check_links(root: Path) -> list[str]:
    """Internal links and anchors, checked on the HTML files themselves."""
    from bs4 import BeautifulSoup

    problems, ids = [], {}

    def ids_of(path: Path) -> set[str]:
        if path not in ids:
            soup = BeautifulSoup(path.read_text(errors="replace"), "html.parser")
            ids[path] = ({el["id"] for el in soup.find_all(id=True)}
                         | {a["name"] for a in soup.find_all("a", attrs={"name": True})})
        return ids[path]

    for page in sorted(root.rglob("*.html")):
        soup = BeautifulSoup(page.read_text(errors="replace"), "html.parser")
        for a in soup.find_all("a", href=True):
            href = a["href"]
            if urlparse(href).scheme or href.startswith(("mailto:", "javascript:", "//")):
                continue
            target, frag = urldefrag(href)
            path = (page.parent / unquote(target)).resolve() if target else page
            if path.is_dir():
                path = path / "index.html"
            rel = page.relative_to(root)
            if not path.exists():
                problems.append(f"{rel}: link to missing page {href!r}")
            elif frag and path.suffix == ".html" and frag not in ids_of(path):
                problems.append(f"{rel}: link to missing anchor {href!r}")
    return problems


def wait_until_ready(page, url: str, timeout_s: float = READY_TIMEOUT_S) -> str | None:
    """Open ``url`` and wait for what the check reads: the load event, MathJax's
    first typeset where MathJax is on the page, every image complete, the fonts
    loaded. Each wait is bounded by ``timeout_s``. Returns None when the page is
    ready, else what it was still waiting for. Never waits for "network idle":
    a page can be ready while a connection stays open, and that event may never
    come (Playwright's documentation discourages it)."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    ms = timeout_s * 1000
    steps = [("the load event", lambda: page.goto(url, wait_until="load", timeout=ms)),
             ("MathJax's first typeset (MathJax.startup.promise)",
              lambda: evaluate(page, _HAS_MATHJAX, timeout_s) and page.wait_for_function(_MATHJAX_SETTLED, timeout=ms)),
             ("every image to complete", lambda: page.wait_for_function(_IMAGES_COMPLETE, timeout=ms)),
             ("the fonts to load (document.fonts)", lambda: page.wait_for_function(_FONTS_LOADED, timeout=ms))]
    for what, wait in steps:
        try:
            handle = wait()
        except PlaywrightTimeout:
            return f"waited {timeout_s:.0f} s for {what}"
        except PlaywrightError as e:
            return f"failed while waiting for {what}: {_first_line(e)}"
        if handle and what.startswith("MathJax") and handle.json_value() != "ok":
            return f"{what} {handle.json_value()}"
    return None


def evaluate(page, js_function: str, timeout_s: float = READY_TIMEOUT_S):
    """``page.evaluate`` with a bound: Playwright's evaluate has no timeout, and a
    page that navigates away while it runs can leave it waiting for ever. The
    function runs once, as the predicate of a bounded ``wait_for_function``."""
    handle = page.wait_for_function(f"() => ({{value: ({js_function})()}})", timeout=timeout_s * 1000)
    return handle.json_value().get("value")


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


_REPORT = """() => {
    const body = document.querySelector('article') || document.body;
    const clone = body.cloneNode(true);
    clone.querySelectorAll('pre, code, .highlight, script, style, mjx-container, .cell_output')
         .forEach(e => e.remove());
    // each output once: myst-nb nests .output inside .cell_output
    const blocks = [...document.querySelectorAll('.cell_output, .output')];
    const outputs = blocks.filter(e => !blocks.some(o => o !== e && o.contains(e))).map(e => e.innerText);
    const images = [...document.querySelectorAll('img')]
         .filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute('src'));
    const navs = [...document.querySelectorAll('nav, .bd-sidebar, .bd-sidebar-primary, .bd-header, '
                                             + '.bd-toc, .bd-sidebar-secondary, .header-article')];
    const nav = navs.filter(e => !navs.some(o => o !== e && o.contains(e))).map(e => e.innerText).join('\\n');
    return {text: clone.innerText, outputs, images, title: document.title, nav,
            math: document.querySelectorAll('mjx-container').length};
}"""

# What runs past the article column (at the page's width, 1280 px), and what elides rows.
# A box that stays within the column is fine, also when its content scrolls inside it, except
# for tables and printed outputs: those must show everything at the column's width.
_LAYOUT = """() => {
    const art = document.querySelector('article') || document.body;
    const a = art.getBoundingClientRect();
    const problems = [];
    const name = e => {
        const cls = (e.getAttribute('class') || '').split(/\\s+/).filter(Boolean).slice(0, 2).join('.');
        const text = (e.innerText || e.getAttribute('src') || '').trim().replace(/\\s+/g, ' ').slice(0, 50);
        return e.tagName.toLowerCase() + (cls ? '.' + cls : '') + (text ? ' "' + text + '"' : '');
    };
    // clipped by an ancestor that scrolls or hides and itself fits the column?
    const clippedBy = e => {
        for (let p = e.parentElement; p && p !== art.parentElement; p = p.parentElement) {
            const ox = getComputedStyle(p).overflowX;
            if (ox !== 'visible') {
                const r = p.getBoundingClientRect();
                if (r.right <= a.right + 1 && r.left >= a.left - 1) return p;
            }
        }
        return null;
    };
    const seen = new Set();
    const wide = (e, how) => { if (!seen.has(e)) { seen.add(e); problems.push(name(e) + ': ' + how); } };
    for (const e of art.querySelectorAll('table, pre, img, svg, mjx-container, figure, .math, iframe')) {
        const r = e.getBoundingClientRect();
        if (r.width === 0 || r.height === 0) continue;
        const past = Math.round(Math.max(r.right - a.right, a.left - r.left));
        const isTable = e.tagName === 'TABLE';
        const isOutput = e.tagName === 'PRE' && e.closest('.cell_output, .output');
        if (past > 1) {
            const clip = clippedBy(e);
            if (!clip) wide(e, `runs ${past} px past the article column (${Math.round(a.width)} px)`);
            else if (isTable || isOutput)
                wide(e, `is ${Math.round(r.width)} px wide in a ${Math.round(a.width)} px column: `
                        + 'the reader must scroll sideways to see all of it');
        } else if ((isTable || isOutput) && e.scrollWidth > e.clientWidth + 1) {
            wide(e, `holds ${e.scrollWidth} px of content in ${e.clientWidth} px: `
                    + 'the reader must scroll sideways to see all of it');
        }
    }
    const doc = document.documentElement;
    if (doc.scrollWidth > doc.clientWidth + 1)
        problems.push(`the page scrolls sideways (${doc.scrollWidth} px of content in ${doc.clientWidth} px)`);
    const elided = [];
    for (const t of art.querySelectorAll('table')) {
        const cells = [...t.querySelectorAll('th, td')].filter(c => /^\\s*(\\.\\.\\.|…)\\s*$/.test(c.innerText));
        if (cells.length) elided.push(name(t) + `: ${cells.length} cell(s) read "..."`);
    }
    return {wide: problems, elided};
}"""


def redirect_target(path: Path) -> str | None:
    """Where a redirect-only page sends the reader, or None for a real page."""
    m = REDIRECT.search(path.read_text(errors="replace")[:2000])
    return m.group(1) if m else None


def _snippet(text: str, m: re.Match, width: int = 50) -> str:
    return text[max(0, m.start() - width): m.end() + width].replace("\n", " ").strip()


def reader_problems(rel: str, report: dict) -> list[str]:
    """What the text of a page shows that a reader should not meet (see the module's docstring):
    pandas' elision note, raw TeX in the title or navigation or text, local paths, tracker words,
    repeated stored-result lines, Python reprs. ``report``: the page's title, navigation, text
    (no code, no math) and cell outputs."""
    problems = []
    outputs = "\n".join(report["outputs"])
    for m in TRUNCATED.finditer(report["text"] + "\n" + outputs):
        problems.append(f"{rel}: truncated table: {m.group(0)!r}")
    for where, text in (("<title>", report.get("title", "")), ("navigation", report.get("nav", "")),
                        ("text", report["text"])):
        for m in RAW_TEX.finditer(text):
            problems.append(f"{rel}: raw TeX in the {where}: {_snippet(text, m, 30)!r}")
    for where, text in (("text", report["text"]), ("outputs", outputs)):
        for m in LOCAL_PATH.finditer(text):
            problems.append(f"{rel}: local path in the {where}: {_snippet(text, m)!r}")
        for m in TRACKER.finditer(text):
            problems.append(f"{rel}: tracker word in the {where}: {_snippet(text, m)!r}")
        for m in PY_REPR.finditer(text):
            problems.append(f"{rel}: Python repr in the {where}: {_snippet(text, m, 30)!r}")
    stored = len(STORED_LINE.findall(outputs))
    if stored > 1:
        problems.append(f"{rel}: {stored} 'found stored result' lines (one summary line per page at most)")
    return problems


def _check_page(page, rel: str, url: str, ready_timeout_s: float, screenshots: Path | None) -> list[str]:
    """What a reader would see broken on one page, once it is ready."""
    not_ready = wait_until_ready(page, url, ready_timeout_s)
    if not_ready:
        return [f"{rel}: page did not get ready: {not_ready}"]
    report = evaluate(page, _REPORT, ready_timeout_s)
    problems = []
    for m in RAW_MATH.finditer(report["text"]):
        snippet = report["text"][max(0, m.start() - 30): m.end() + 30].replace("\n", " ")
        problems.append(f"{rel}: unrendered math near {snippet!r}")
    for src in report["images"]:
        problems.append(f"{rel}: image did not load: {src}")
    for out in report["outputs"]:
        m = BAD_OUTPUT.search(out)
        if m:
            snippet = out[max(0, m.start() - 60): m.end() + 60]
            problems.append(f"{rel}: cell output shows {m.group(0)!r}: {snippet!r}")
    problems += reader_problems(rel, report)
    layout = evaluate(page, _LAYOUT, ready_timeout_s)
    problems += [f"{rel}: too wide: {w}" for w in layout["wide"]]
    problems += [f"{rel}: truncated table: {e}" for e in layout["elided"]]
    if screenshots:
        name = rel.replace("/", "_").removesuffix(".html")
        if rel.endswith("intro.html"):
            page.screenshot(path=str(screenshots / f"{name}.png"))
        figure = page.locator("figure img, .cell_output img").first
        if figure.count():
            figure.scroll_into_view_if_needed()
            figure.screenshot(path=str(screenshots / f"{name}-first-figure.png"))
        claims = page.locator("table.bnrepro-claims").first
        if claims.count():
            claims.scroll_into_view_if_needed()
            page.screenshot(path=str(screenshots / f"{name}-claims.png"))
    print(f"checked {rel}: {report['math']} math element(s), {len(report['outputs'])} output(s)")
    return problems


def check_pages(root: Path, chromium: str, screenshots: Path | None,
                ready_timeout_s: float = READY_TIMEOUT_S) -> list[str]:
    """Every page in headless Chromium; one line per problem, never a traceback
    for a page that misbehaves."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    pages = sorted(p for p in root.rglob("*.html") if p.name not in SKIP_PAGES and "_static" not in p.parts)
    problems: list[str] = []
    server = _serve(root)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    if screenshots:
        screenshots.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.set_default_timeout(ready_timeout_s * 1000)  # every action: a bound on a hang
            for path in pages:
                rel = str(path.relative_to(root))
                target = redirect_target(path)
                if target is not None:
                    if not (path.parent / unquote(urldefrag(target)[0])).is_file():
                        problems.append(f"{rel}: redirects to missing page {target!r}")
                    print(f"checked {rel}: redirects to {target}")
                    continue
                page = context.new_page()
                failed: list[str] = []
                page.on("requestfailed", lambda r, f=failed: f.append(f"{r.url} ({r.failure})"))
                page.on("response", lambda r, f=failed: f.append(f"{r.url} (HTTP {r.status})")
                        if r.status >= 400 else None)
                page.on("request", lambda r, f=failed: None if r.url.startswith((base, "data:", "blob:", "about:"))
                        else f.append(f"{r.url} (leaves the book: not available offline)"))
                try:
                    problems += _check_page(page, rel, urljoin(base, rel), ready_timeout_s, screenshots)
                except PlaywrightError as e:
                    problems.append(f"{rel}: could not be checked: {_first_line(e)}")
                problems += [f"{rel}: failed request {f}" for f in failed]
                page.close()
            browser.close()
    finally:
        server.shutdown()
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("html", type=Path, help="the built book's html folder")
    parser.add_argument("--screenshots", type=Path, help="folder for screenshots")
    parser.add_argument("--ready-timeout", type=float, default=READY_TIMEOUT_S, metavar="S",
                        help="bound in seconds on each wait for a page to get ready (default %(default)s)")
    args = parser.parse_args(argv)
    if not (args.html / "index.html").exists():
        print(f"error: no built book at {args.html} (run `make book` first)", file=sys.stderr)
        return 2
    chromium = find_chromium()
    if chromium is None:
        print("SKIPPED browser check: Chromium not found (Debian: apt-get install chromium)")
        return 0
    problems = check_links(args.html) + check_pages(args.html, chromium, args.screenshots, args.ready_timeout)
    for p in problems:
        print(f"PROBLEM {p}")
    print(f"browser check: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
