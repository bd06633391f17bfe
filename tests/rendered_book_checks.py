"""Checks of a rendered HTML book in a real browser (used by tests/test_rendered_book.py).

A folder is served over HTTP on 127.0.0.1 and each page is opened in a Playwright browser context in which
every request to another host is aborted and recorded (:class:`Tab`). :func:`inspect_page` returns a
:class:`PageReport` whose ``problems`` name the broken element: console errors and uncaught exceptions, HTTP
errors of the page's own resources, equations that MathJax did not typeset or typeset with a TeX error (or with
prose inside, the mark of a ``$`` paired with the wrong ``$``), images that did not load, widgets left as empty
placeholders, dead same-origin links and missing ``#anchors``. :func:`colab_problems` and
:func:`chapter_link_problems` check a chapter's Colab link and the intro's links to the chapters.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urldefrag, urlsplit

import yaml

# Flags for a headless Chromium on a machine with a closed network (Playwright gives it a fresh, temporary
# user-data-dir of its own on every launch; passing --user-data-dir to launch() is refused by Playwright).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
LOCAL_HOSTS = {"127.0.0.1"}
COLAB = "https://colab.research.google.com/github"
NAV_TIMEOUT_MS = 30_000
MATH_TIMEOUT_MS = 30_000  # for the first typeset of a long chapter
MATHJAX_LOAD_MS = 2_000  # MathJax (a deferred script) has run by `load`; this only absorbs a slow start


# ----------------------------------------------------------------------------------------------- the toc


def _toc_files(entries: list[dict[str, Any]]) -> list[str]:
    """Flatten ``chapters``/``parts``/``sections`` of ``_toc.yml`` into the list of ``file`` entries."""
    files: list[str] = []
    for entry in entries:
        if "file" in entry:
            files.append(str(entry["file"]))
        for key in ("chapters", "sections"):
            files += _toc_files(entry.get(key, []))
    return files


def load_toc(repo: Path) -> tuple[str, list[str]]:
    """The toc's root page and its chapters, as source paths without extension (e.g. ``book/intro``)."""
    toc = yaml.safe_load((repo / "_toc.yml").read_text())
    chapters = _toc_files(toc.get("chapters", [])) + _toc_files(toc.get("parts", []))
    return str(toc["root"]), [re.sub(r"\.(md|ipynb)$", "", c) for c in chapters]


def expected_colab_url(chapter: str, repo: Path) -> str:
    """Colab address of ``chapter`` (e.g. ``book/01_feature_extraction``) on the configured branch (the release
    tag, see uflow_lib/publication.py; ``main`` when none is set), from ``_config.yml``."""
    config = yaml.safe_load((repo / "_config.yml").read_text())
    url = str(config["repository"]["url"]).rstrip("/")
    match = re.fullmatch(r"https://github\.com/([^/]+)/([^/]+?)(\.git)?", url)
    assert match, f"_config.yml repository.url is {url!r}, expected https://github.com/<org>/<repo>"
    book_path = str(config["repository"].get("path_to_book") or "").strip("/")
    path = f"{book_path}/{chapter}" if book_path else chapter
    branch = str(config["repository"].get("branch") or "main")
    return f"{COLAB}/{match[1]}/{match[2]}/blob/{branch}/{path}.ipynb"



# ----------------------------------------------------------------------------------------------- serving


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


@dataclass
class Site:
    """A folder served over HTTP on 127.0.0.1 (an ephemeral port), in a daemon thread."""

    root: Path
    base_url: str

    def url(self, rel: str) -> str:
        return f"{self.base_url}/{rel.lstrip('/')}"

    def rel(self, url: str) -> str:
        """The page name used in messages: the path of ``url`` below the site root."""
        return urlsplit(url).path.lstrip("/") or "/"


@functools.lru_cache(maxsize=None)
def _fetch(url: str) -> tuple[int, str]:
    """Status and text of a same-origin URL (cached: pages share their navigation links)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        return err.code, ""
    text = body.decode("utf-8", "replace") if url.split("?")[0].endswith((".html", "/")) else ""
    return status, text


class _AnchorParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.anchors: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and (name == "id" or (name == "name" and tag == "a")):
                self.anchors.add(value)


def _anchors_of(url: str) -> set[str]:
    parser = _AnchorParser()
    parser.feed(_fetch(url)[1])
    return parser.anchors


def serve(root: Path) -> tuple[Site, http.server.ThreadingHTTPServer]:
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return Site(root, f"http://127.0.0.1:{server.server_address[1]}"), server


# ----------------------------------------------------------------------------------------------- checking

# Runs in the page after `load`: waits for MathJax's first typeset, then reports what is not typeset.
_MATH_JS = r"""
async ([loadMs, timeoutMs]) => {
  const els = Array.from(document.querySelectorAll('.math'));
  const out = {count: els.length, loaded: true, problems: []};
  if (!els.length) return out;
  const ready = () => window.MathJax && window.MathJax.startup && window.MathJax.startup.promise;
  const t0 = Date.now();
  while (!ready() && Date.now() - t0 < loadMs) await new Promise(r => setTimeout(r, 50));
  if (!ready()) { out.loaded = false; return out; }
  await Promise.race([MathJax.startup.promise, new Promise(r => setTimeout(r, timeoutMs))]);
  const quote = (text) => '"' + String(text).trim().slice(0, 80) + '"';
  const label = (el) => (el.id ? '#' + el.id + ' ' : '') + quote(el.textContent);
  els.forEach((el) => {
    const raw = Array.from(el.childNodes).filter(n => n.nodeType === 3).map(n => n.textContent).join('');
    if (!el.querySelector('mjx-container'))
      out.problems.push('equation not typeset (no mjx-container): ' + label(el));
    else if (/\\\(|\\\[|\$\$/.test(raw))
      out.problems.push('raw TeX delimiters left in equation: ' + label(el));
  });
  // TeX errors: MathJax renders a parse error as <merror>, an undefined macro as red <mtext> (noundefined).
  // Prose typeset as math: four plain words in a row outside \text{...} (a $ paired with the wrong $).
  const textArgs = /\\(text\w*|math(rm|it|sf|tt)|operatorname|mbox|hbox)\s*\{[^{}]*\}/g;
  const prose = /(?:(?<![\\A-Za-z])[A-Za-z]{2,}[\s,.;:'"]+){4}/;
  for (const item of MathJax.startup.document.math) {
    const words = prose.exec(String(item.math).replace(textArgs, ' '));
    if (words)
      out.problems.push('prose typeset as math (a $ paired with the wrong $?): "' + words[0].trim() +
                        '" in equation ' + quote(item.math));
    const mml = MathJax.startup.toMML(item.root);
    const err = /<merror[^>]*data-mjx-error="([^"]*)"/.exec(mml);
    const undef = /<mtext[^>]*mathcolor="red"[^>]*>(\\[^<]*)<\/mtext>/.exec(mml);
    if (err || undef || /<merror/.test(mml)) {
      const why = err ? err[1] : (undef ? 'undefined control sequence ' + undef[1] : 'TeX error');
      out.problems.push('TeX error in equation ' + quote(item.math) + ': ' + why);
    }
  }
  return out;
}
"""

_IMAGES_JS = r"""
async (timeoutMs) => {
  const imgs = Array.from(document.images);
  imgs.forEach(img => { if (img.loading === 'lazy') img.loading = 'eager'; });
  await Promise.race([
    Promise.all(imgs.map(img => img.complete ? null :
      new Promise(r => { img.addEventListener('load', r); img.addEventListener('error', r); }))),
    new Promise(r => setTimeout(r, timeoutMs))]);
  return imgs.filter(img => !(img.complete && img.naturalWidth > 0)).map(img =>
    ({src: (img.getAttribute('src') || '').slice(0, 120), alt: img.getAttribute('alt') || ''}));
}
"""

_LINKS_JS = r"""
() => {
  const content = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  const hrefs = (root) => Array.from(root.querySelectorAll('a[href]')).map(a => a.href);
  return {all: hrefs(document), content: hrefs(content),
          ids: Array.from(document.querySelectorAll('[id], a[name]')).map(e => e.id || e.getAttribute('name')),
          widgets: document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length};
}
"""


@dataclass
class PageReport:
    """What the browser saw on one page; ``problems`` is empty when the page passed every check."""

    name: str
    problems: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    content_links: list[str] = field(default_factory=list)
    equations: int = 0
    images: int = 0

    def message(self) -> str:
        return f"{self.name}: {len(self.problems)} problem(s)\n  - " + "\n  - ".join(self.problems)


def check_links(site: Site, page_url: str, hrefs: list[str], dom_ids: set[str]) -> list[str]:
    """Every same-origin link answers 200 and its ``#anchor`` exists (on this page: in the live DOM)."""
    problems: list[str] = []
    origin = urlsplit(site.base_url).netloc
    page_path = urlsplit(page_url).path
    for href in dict.fromkeys(hrefs):  # unique, in page order
        parts = urlsplit(href)
        if parts.scheme not in ("http", "https") or parts.netloc != origin:
            continue
        target, fragment = urldefrag(href)
        anchor = unquote(fragment)
        if parts.path == page_path:
            if anchor and anchor not in dom_ids:
                problems.append(f"link to missing anchor on this page: #{anchor}")
            continue
        status, _ = _fetch(target)
        if status != 200:
            problems.append(f"dead link: {site.rel(target)} (HTTP {status})")
        elif anchor and anchor not in _anchors_of(target):
            problems.append(f"link to missing anchor: {site.rel(target)}#{anchor}")
    return problems


def inspect_page(context: Any, site: Site, rel: str, screenshot: Path | None = None) -> PageReport:
    """Open ``rel`` of ``site`` in a new tab of ``context`` and run every offline/rendering check on it."""
    report = PageReport(rel)
    page = context.new_page()
    origin = urlsplit(site.base_url).netloc

    def on_console(msg: Any) -> None:
        if msg.type != "error":
            return
        source = (msg.location or {}).get("url") or ""
        if urlsplit(source).path == "/favicon.ico":
            return  # the browser's own request for a site icon, which no page asks for
        where = f" (at {site.rel(source)})" if urlsplit(source).netloc == origin else ""
        report.problems.append(f"console error: {msg.text}{where}")

    def on_response(response: Any) -> None:
        if response.status >= 400 and urlsplit(response.url).netloc == origin:
            report.problems.append(f"HTTP {response.status} for resource {site.rel(response.url)}")

    def on_request_failed(request: Any) -> None:
        if urlsplit(request.url).netloc == origin:
            report.problems.append(f"request failed: {site.rel(request.url)} ({request.failure})")

    page.on("console", on_console)
    page.on("pageerror", lambda err: report.problems.append(f"uncaught JavaScript error: {err}"))
    page.on("response", on_response)
    page.on("requestfailed", on_request_failed)
    try:
        url = site.url(rel)
        response = page.goto(url, wait_until="load", timeout=NAV_TIMEOUT_MS)
        if response is None or response.status != 200:
            report.problems.append(f"page did not load (HTTP {response.status if response else '-'})")
            return report
        math = page.evaluate(_MATH_JS, [MATHJAX_LOAD_MS, MATH_TIMEOUT_MS])
        report.equations = math["count"]
        if not math["loaded"]:
            report.problems.append(f"MathJax did not load: {math['count']} equation(s) left as raw TeX")
        report.problems += math["problems"]
        broken = page.evaluate(_IMAGES_JS, NAV_TIMEOUT_MS)
        report.images = page.evaluate("document.images.length")
        report.problems += [f"image not loaded: src={b['src']!r} alt={b['alt']!r}" for b in broken]
        links = page.evaluate(_LINKS_JS)
        report.links, report.content_links = links["all"], links["content"]
        if links["widgets"]:
            report.problems.append(f"{links['widgets']} widget output(s) left as an empty placeholder "
                                   "(widget views need the ipywidgets manager from a CDN)")
        report.problems += check_links(site, url, report.links, set(links["ids"]))
        try:  # late requests (fonts MathJax asks for, ...) are seen by the listeners above
            page.wait_for_load_state("networkidle", timeout=10_000)
        except Exception:  # noqa: BLE001 - a page that never idles has already reported its requests
            pass
        if screenshot is not None:  # the top of the page as a reader first sees it (1280x900)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
            if os.environ.get("UFLOW_FULL_SCREENSHOTS"):  # the whole page (a chapter: ~20,000 px, ~4 MB)
                page.screenshot(path=str(screenshot.with_suffix(".full.png")), full_page=True)
    finally:
        page.close()
    return report


def colab_problems(report: PageReport, expected: str) -> list[str]:
    """The page's Colab launch link(s) all point at ``expected``."""
    colab = [link for link in dict.fromkeys(report.links) if link.startswith(COLAB)]
    if not colab:
        return [f"no Colab link (expected {expected})"]
    return [f"Colab link {link} points elsewhere, expected {expected}" for link in colab if link != expected]


def chapter_link_problems(site: Site, report: PageReport, chapters: list[str]) -> list[str]:
    """The page's own text (not the sidebar) links every chapter of the toc."""
    linked = {site.rel(urldefrag(link)[0]) for link in report.content_links}
    return [f"the intro's text does not link chapter {c} ({c}.html)" for c in chapters if f"{c}.html" not in linked]


@dataclass
class Tab:
    """A fresh browser context in which every request to a host other than 127.0.0.1 is aborted and recorded."""

    context: Any
    external: list[str] = field(default_factory=list)

    def inspect(self, site: Site, rel: str, screenshot: Path | None = None) -> PageReport:
        """:func:`inspect_page`, plus a problem for each request that tried to leave 127.0.0.1."""
        self.external.clear()
        report = inspect_page(self.context, site, rel, screenshot)
        report.problems += [f"network request to a non-local host (the book must work offline): {url}"
                            for url in dict.fromkeys(self.external)]
        return report
