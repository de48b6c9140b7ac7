"""The built documentation site, opened in a real browser with no network.

CI (``.ci/run``) builds ``site/`` with ``bash scripts/docs.sh``, then runs this module
(``python -m pytest -m browser tests/test_site_browser.py``). It serves the site from
127.0.0.1, opens a few pages in headless Chromium (Debian's ``/usr/bin/chromium``, driven by
Playwright) with every request that leaves 127.0.0.1 refused, and checks what a reader sees:

* the math is typeset: no raw TeX delimiters (``\\(``, ``\\)``, ``\\[``, ``\\]``, ``$$``, ``$x$``) in the
  page's rendered text outside code blocks, MathJax produced at least one formula per math
  span of the page, and none of them is a TeX error;
* every image loads (``naturalWidth > 0``);
* the page asked for nothing beyond 127.0.0.1 (no CDN, no web fonts) and raised no script error.

Screenshots of each page go to ``artifacts/docs-screenshots/`` (``CTRLALIGN_ARTIFACTS`` overrides)
for a human to look at. ``CTRLALIGN_SITE`` points the test at another built site (for example one
built with the old CDN MathJax, to see this test fail on it). Skipped when there is no built site,
no Chromium or no Playwright; the fast suite (``scripts/test.sh``) deselects it.
"""

from __future__ import annotations

import contextlib
import functools
import html.parser
import http.server
import os
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE = Path(os.environ.get("CTRLALIGN_SITE", ROOT / "site"))
ARTIFACTS = Path(os.environ.get("CTRLALIGN_ARTIFACTS", ROOT / "artifacts" / "docs-screenshots"))
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# Flags for a machine with no network: without the background-networking ones Chromium keeps
# trying (and failing) to reach Google's services.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

#: (name, path) of the pages checked: the landing page, Concepts (the theorem -> test map, math
#: heavy), one tutorial with a figure, one API page with docstring math, the Design page and the
#: generated command-line reference.
PAGES = [
    ("home", ""),
    ("concepts", "concepts/"),
    ("tutorial-toy-gaussian", "tutorials/toy-gaussian/"),
    ("api-controllers", "api/controllers/"),
    ("design", "design/"),
    ("cli", "cli/"),  # generated at build time from the parser; no math
]
NO_MATH = {"cli"}

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = PlaywrightTimeout = None

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (SITE / "index.html").is_file(),
                       reason=f"no built site at {SITE} (bash scripts/docs.sh)"),
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium)"),
    pytest.mark.skipif(sync_playwright is None, reason="no playwright (pip install playwright)"),
]

# Inline TeX left in dollars, e.g. in an HTML block that Markdown never processed.
INLINE_DOLLARS = re.compile(r"\$[^$\n]{1,80}\$")

# The page's rendered text with code blocks hidden (code may legitimately contain `\[`).
RENDERED_TEXT = """() => {
  const code = Array.from(document.querySelectorAll('pre, code'));
  const saved = code.map(e => e.style.display);
  code.forEach(e => { e.style.display = 'none'; });
  const text = document.body.innerText;
  code.forEach((e, i) => { e.style.display = saved[i]; });
  return text;
}"""

# Wait for MathJax's first typeset (if MathJax is there at all) and for every image to settle.
SETTLE = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  const imgs = Array.from(document.images);
  imgs.forEach(img => { img.loading = 'eager'; });
  await Promise.all(imgs.map(img => img.complete ? null :
    new Promise(done => { img.addEventListener('load', done); img.addEventListener('error', done); })));
  return !!window.MathJax;
}"""

PAGE_FACTS = """() => ({
  spans: document.querySelectorAll('.arithmatex').length,
  typeset: document.querySelectorAll('.arithmatex mjx-container').length,
  errors: Array.from(document.querySelectorAll('mjx-merror')).map(e => e.getAttribute('data-mjx-error') || e.textContent),
  images: Array.from(document.images).map(img => ({src: img.getAttribute('src'), width: img.naturalWidth})),
})"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def base_url():
    handler = functools.partial(_Quiet, directory=str(SITE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots of the documentation site: {ARTIFACTS}")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a fresh --user-data-dir
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900})
        yield context
        context.close()


@pytest.mark.parametrize("name,path", PAGES, ids=[p[0] for p in PAGES])
def test_page_renders_offline(browser, base_url, name, path):
    outside, script_errors = [], []

    def route(r):
        host = urlsplit(r.request.url).hostname
        if r.request.url.startswith(("data:", "blob:")) or host == "127.0.0.1":
            r.continue_()
        else:  # the machine has no network; the site must not need any
            outside.append(r.request.url)
            r.abort()

    page = browser.new_page()
    page.route("**/*", route)
    page.on("pageerror", lambda e: script_errors.append(str(e)))
    try:
        response = page.goto(base_url + path, wait_until="load")
        assert response is not None and response.ok, f"{path}: HTTP {response and response.status}"
        with contextlib.suppress(PlaywrightTimeout):  # no MathJax: the raw-TeX assert says so
            page.wait_for_function("() => !!(window.MathJax && MathJax.startup && "
                                   "MathJax.startup.promise)", timeout=15_000)
        page.evaluate(SETTLE)
        facts = page.evaluate(PAGE_FACTS)
        text = page.evaluate(RENDERED_TEXT)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    finally:
        page.close()

    raw = [d for d in ("\\(", "\\)", "\\[", "\\]", "$$") if d in text]
    raw += sorted(set(INLINE_DOLLARS.findall(text)))[:3]  # `$x$` that never reached the math engine
    where = [line.strip()[:100] for line in text.splitlines() if any(d in line for d in raw)][:3]
    assert not raw, f"{path}: raw TeX {raw} in the rendered text, e.g. {where}"
    if name not in NO_MATH:
        assert facts["spans"] > 0, f"{path}: no math on the page (the test expects some)"
    assert facts["typeset"] >= facts["spans"], \
        f"{path}: {facts['typeset']} typeset formulas for {facts['spans']} math spans"
    assert not facts["errors"], f"{path}: TeX errors {facts['errors'][:3]}"
    broken = [img["src"] for img in facts["images"] if img["width"] <= 0]
    assert not broken, f"{path}: images that did not load: {broken}"
    assert not outside, f"{path}: requests beyond 127.0.0.1: {outside[:5]}"
    assert not script_errors, f"{path}: script errors: {script_errors[:3]}"


class _Text(html.parser.HTMLParser):
    """The text of a page outside code, scripts and the math spans MathJax will typeset."""

    SKIP = frozenset({"pre", "code", "script", "style", "textarea"})

    def __init__(self):
        super().__init__()
        self.stack, self.parts = [], []

    def handle_starttag(self, tag, attrs):
        if tag in ("br", "img", "input", "meta", "link", "hr"):
            return
        classes = (dict(attrs).get("class") or "").split()
        self.stack.append(tag in self.SKIP or "arithmatex" in classes)

    def handle_endtag(self, tag):
        if self.stack and tag not in ("br", "img", "input", "meta", "link", "hr"):
            self.stack.pop()

    def handle_data(self, data):
        if not any(self.stack):
            self.parts.append(data)


def test_no_unprocessed_tex_on_any_page():
    """Every page of the site, without a browser: TeX outside a math span would stay raw."""
    bad = {}
    for page in sorted(SITE.rglob("*.html")):
        if "vendor" in page.parts:
            continue
        parser = _Text()
        parser.feed(page.read_text(errors="replace"))
        text = "".join(parser.parts)
        hits = [d for d in ("\\(", "\\[", "$$") if d in text] + INLINE_DOLLARS.findall(text)
        if hits:
            bad[page.relative_to(SITE).as_posix()] = hits[:3]
    assert not bad, f"TeX outside math spans: {bad}"
