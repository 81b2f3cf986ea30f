"""Open every page of the built book in headless Chromium and report what a reader would see broken.

    python tests/browser_check.py _build/smoke/_build/html [--screenshots DIR]

Fails (exit 1) when a page has math left unrendered, an image that did not
load, an internal link or anchor that goes nowhere, a cell output showing a
traceback, a warning or a progress bar's control characters, or a request
for a resource that is not there (any request leaving the local server
counts: the book must work offline). Saves screenshots of the intro and of
each chapter's first figure for review.
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
SKIP_PAGES = {"search.html", "genindex.html"}


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
            ids[path] = {el["id"] for el in soup.find_all(id=True)} | {a["name"] for a in soup.find_all("a", attrs={"name": True})}
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


def check_pages(root: Path, chromium: str, screenshots: Path | None) -> list[str]:
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
            for path in pages:
                rel = str(path.relative_to(root))
                page = context.new_page()
                failed: list[str] = []
                page.on("requestfailed", lambda r, f=failed: f.append(f"{r.url} ({r.failure})"))
                page.on("response", lambda r, f=failed: f.append(f"{r.url} (HTTP {r.status})") if r.status >= 400 else None)
                page.on("request", lambda r, f=failed: None if r.url.startswith((base, "data:", "blob:", "about:"))
                        else f.append(f"{r.url} (leaves the book: not available offline)"))
                page.goto(urljoin(base, rel), wait_until="load")
                page.wait_for_load_state("networkidle")
                if page.evaluate("() => !!(window.MathJax && MathJax.startup && MathJax.startup.promise)"):
                    page.evaluate("() => MathJax.startup.promise")
                report = page.evaluate("""() => {
                    const body = document.querySelector('article') || document.body;
                    const clone = body.cloneNode(true);
                    clone.querySelectorAll('pre, code, .highlight, script, style, mjx-container, .cell_output')
                         .forEach(e => e.remove());
                    const outputs = [...document.querySelectorAll('.cell_output, .output')].map(e => e.innerText);
                    const images = [...document.querySelectorAll('img')]
                         .filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute('src'));
                    return {text: clone.innerText, outputs, images,
                            math: document.querySelectorAll('mjx-container').length};
                }""")
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
                problems += [f"{rel}: failed request {f}" for f in failed]
                if screenshots:
                    name = rel.replace("/", "_").removesuffix(".html")
                    if rel.endswith("intro.html"):
                        page.screenshot(path=str(screenshots / f"{name}.png"))
                    figure = page.locator("figure img, .cell_output img").first
                    if figure.count():
                        figure.scroll_into_view_if_needed()
                        figure.screenshot(path=str(screenshots / f"{name}-first-figure.png"))
                print(f"checked {rel}: {report['math']} math element(s), "
                      f"{len(report['outputs'])} output(s), {len(failed)} failed request(s)")
                page.close()
            browser.close()
    finally:
        server.shutdown()
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("html", type=Path, help="the built book's html folder")
    parser.add_argument("--screenshots", type=Path, help="folder for screenshots")
    args = parser.parse_args(argv)
    if not (args.html / "index.html").exists():
        print(f"error: no built book at {args.html} (run `make book` first)", file=sys.stderr)
        return 2
    chromium = find_chromium()
    if chromium is None:
        print("SKIPPED browser check: Chromium not found (Debian: apt-get install chromium)")
        return 0
    problems = check_links(args.html) + check_pages(args.html, chromium, args.screenshots)
    for p in problems:
        print(f"PROBLEM {p}")
    print(f"browser check: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
