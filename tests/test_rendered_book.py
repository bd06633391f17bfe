"""The rendered book works offline: every page of the toc checked in a real (headless) browser.

The book is built once per session from the committed notebook outputs (``execute_notebooks: "off"``, no
re-execution) into a temporary folder, served on 127.0.0.1 and opened in Debian's Chromium, driven by Playwright
for Python with ``executable_path`` (Playwright's own browser download is never used). Every page must load
with no console error and no request leaving 127.0.0.1 (labs are offline: any such request is aborted and
counted as a failure), every same-origin link must answer 200 and its ``#anchor`` must exist, every ``<img>``
must have loaded, every equation must be typeset by the bundled MathJax without a TeX error (and without
prose typeset as math, the mark of a ``$`` paired with the wrong ``$``), no widget may be left as an empty
placeholder, each chapter notebook's Colab link must point at that notebook on ``main``, and
the intro's text must link every chapter of the toc. A screenshot of each page goes to
``_build/screenshots/``.

The students' edition (``make book-student``: the site built from the student copies) is built too, with ``-W``:
no page of it may contain ``### BEGIN SOLUTION``, every chapter must show its stubs and check cells, and its pages
pass the same browser checks, their Colab links opening the student copies.

The second half runs the same checker on small synthetic pages that are broken on purpose (a TeX error, a
missing image, a dead link, ...) to show that each check bites.

Chromium missing: the tests fail with a clear message when ``CI=true`` (``.ci/run`` installs it with apt) and
are skipped elsewhere.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from uflow_lib.assignments import BEGIN
from uflow_lib.student_edition import STUDENT_DIR
from uflow_lib.student_edition import build as build_student_edition

from rendered_book_checks import (
    CHROMIUM_ARGS,
    COLAB,
    LOCAL_HOSTS,
    Site,
    Tab,
    chapter_link_problems,
    colab_problems,
    expected_colab_url,
    load_toc,
    serve,
)

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "_build" / "screenshots"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
ROOT_PAGE, CHAPTERS = load_toc(REPO)
TOC_PAGES = [ROOT_PAGE, *CHAPTERS]
# the students' edition (make book-student): the same toc, pages under assignments/student/
STUDENT_ROOT = ROOT_PAGE.replace("book/", f"{STUDENT_DIR}/", 1)
STUDENT_CHAPTERS = [c.replace("book/", f"{STUDENT_DIR}/", 1) for c in CHAPTERS]
STUDENT_PAGES = [STUDENT_ROOT, *STUDENT_CHAPTERS]


# ----------------------------------------------------------------------------------------------- fixtures


def _unavailable(reason: str) -> None:
    """Fail in CI (where `.ci/run` installs the browser), skip elsewhere."""
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"browser test cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def find_chromium() -> str | None:
    for candidate in CHROMIUM_CANDIDATES:
        path = shutil.which(candidate)
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    chromium = find_chromium()
    if chromium is None:
        _unavailable("Chromium not found (install Debian's package: apt-get install -y chromium; "
                     "`make browser` does it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is missing (pip install -r requirements.txt)")
    playwright = sync_playwright().start()
    try:
        instance = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
    except Exception as err:  # noqa: BLE001 - say which browser failed and why
        playwright.stop()
        _unavailable(f"Chromium at {chromium} did not start under Playwright: {err}")
    yield instance
    instance.close()
    playwright.stop()


@pytest.fixture()
def tab(browser: Any) -> Iterator[Tab]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = Tab(ctx)

    def route(route: Any) -> None:
        parts = urlsplit(route.request.url)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.hostname not in LOCAL_HOSTS:
            tab.external.append(route.request.url)
            route.abort()
        else:
            route.continue_()

    ctx.route("**/*", route)
    yield tab
    ctx.close()


@pytest.fixture(scope="session")
def book_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The book built from the committed outputs (no re-execution) into a temporary folder, served locally."""
    out = tmp_path_factory.mktemp("book")
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    command = [str(jupyter_book if jupyter_book.exists() else "jupyter-book"), "build", str(REPO),
               "--path-output", str(out), "-W", "--keep-going"]  # warnings are defects
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    html = out / "_build" / "html"
    if run.returncode != 0 or not (html / f"{ROOT_PAGE}.html").is_file():
        pytest.fail(f"book build failed ({' '.join(command)}):\n{(run.stdout + run.stderr)[-4000:]}", pytrace=False)
    site, server = serve(html)
    yield site
    server.shutdown()


@pytest.fixture(scope="session")
def student_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The students' edition (stubs instead of solutions) built with -W, as `make book-student` does."""
    out = tmp_path_factory.mktemp("student_edition")
    try:
        html = build_student_edition(REPO, out)
    except subprocess.CalledProcessError as err:
        pytest.fail(f"students' edition build failed: {err}", pytrace=False)
    assert (html / f"{STUDENT_ROOT}.html").is_file()
    return html


@pytest.fixture(scope="session")
def student_site(student_html: Path) -> Iterator[Site]:
    site, server = serve(student_html)
    yield site
    server.shutdown()


# ----------------------------------------------------------------------------------------------- the book


@pytest.mark.parametrize("rel", TOC_PAGES)
def test_page_works_offline(book_site: Site, tab: Tab, rel: str) -> None:
    shot = SCREENSHOTS / f"{rel.replace('/', '__')}.png"
    report = tab.inspect(book_site, f"{rel}.html", screenshot=shot)
    if rel in CHAPTERS and (REPO / f"{rel}.ipynb").is_file():
        report.problems += colab_problems(report, expected_colab_url(rel, REPO))
    if report.problems:
        pytest.fail(report.message(), pytrace=False)
    assert shot.is_file(), f"{rel}: no screenshot was written to {shot}"


def test_intro_links_every_chapter(book_site: Site, tab: Tab) -> None:
    report = tab.inspect(book_site, f"{ROOT_PAGE}.html")
    problems = chapter_link_problems(book_site, report, CHAPTERS)
    assert CHAPTERS, "_toc.yml lists no chapters"
    if problems:
        pytest.fail(f"{ROOT_PAGE}.html:\n  - " + "\n  - ".join(problems), pytrace=False)


# ------------------------------------------------------------------------------------ the students' edition
def test_students_edition_carries_no_solution(student_html: Path) -> None:
    pages = sorted(student_html.rglob("*.html"))
    assert len(pages) > len(STUDENT_PAGES)
    with_solutions = [str(p.relative_to(student_html)) for p in pages if BEGIN in p.read_text(errors="replace")]
    assert not with_solutions, f"'{BEGIN}' in the students' edition: {with_solutions}"
    notebooks = [rel for rel in STUDENT_CHAPTERS if (REPO / f"{rel}.ipynb").is_file()]
    assert len(notebooks) >= 7
    for rel in notebooks:
        text = (student_html / f"{rel}.html").read_text()
        assert "NotImplementedError" in text and "check_" in text, f"{rel}: stubs or check cells missing"
        assert "✓ Exercise" not in text, f"{rel}: a check's success line (an output of the solutions) is shown"


def test_the_book_does_carry_the_solutions(book_site: Site) -> None:
    """The other side of the test above: the same search finds the solutions in the teachers' (public) book."""
    assert any(BEGIN in (book_site.root / f"{rel}.html").read_text() for rel in CHAPTERS)


@pytest.mark.parametrize("rel", STUDENT_PAGES)
def test_student_page_works_offline(student_site: Site, tab: Tab, rel: str) -> None:
    shot = SCREENSHOTS / "student" / f"{rel.replace('/', '__')}.png"
    report = tab.inspect(student_site, f"{rel}.html", screenshot=shot)
    if rel in STUDENT_CHAPTERS and (REPO / f"{rel}.ipynb").is_file():  # Colab opens the student copy
        report.problems += colab_problems(report, expected_colab_url(rel, REPO))
    if report.problems:
        pytest.fail(report.message(), pytrace=False)


def test_student_intro_links_every_chapter(student_site: Site, tab: Tab) -> None:
    report = tab.inspect(student_site, f"{STUDENT_ROOT}.html")
    problems = chapter_link_problems(student_site, report, STUDENT_CHAPTERS)
    if problems:
        pytest.fail(f"{STUDENT_ROOT}.html:\n  - " + "\n  - ".join(problems), pytrace=False)


def test_colab_url_comes_from_config() -> None:
    """Golden value: the address that the chapter pages are compared against."""
    assert expected_colab_url("book/01_feature_extraction", REPO) == (
        "https://colab.research.google.com/github/uflow-book/uflow-book/blob/v0.1.0/book/01_feature_extraction.ipynb")


# ----------------------------------------------------------------------------------------------- the checks bite

def _png(width: int = 2, height: int = 2) -> bytes:
    """A small grey PNG, for the synthetic pages."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))  # filter byte + 8-bit grey pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


_MATHJAX_TAG = '<script defer src="mathjax/tex-chtml.js"></script>'


def _page(body: str, head: str = _MATHJAX_TAG) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>t</title>{head}</head>"
            f"<body><article class='bd-article'>{body}</article></body></html>")


SYNTHETIC = {
    "good.html": _page(
        '<h1 id="top">Good</h1><p>Inline <span class="math">\\(\\log p(x) = \\sum_i z_i^2\\)</span>.</p>'
        '<div class="math" id="eq-1">\\[\\mathrm{NFA} = N_{\\text{tests}} \\cdot \\mathbb{P}(X \\ge x)\\]</div>'
        '<img src="dot.png" alt="a dot"><a href="#top">top</a> <a href="other.html#sec">other</a>'
        f' <a href="{COLAB}/org/repo/blob/main/book/ch.ipynb">Colab</a>'),
    "other.html": _page('<h2 id="sec">Section</h2><a href="good.html">back</a>', head=""),
    "broken_equation.html": _page('<p><span class="math">\\(x^2^3\\)</span>, '
                                  '<span class="math">\\(\\notamacro x\\)</span> and '
                                  '<span class="math" id="eq-open">\\(\\frac{1}{2\\)</span></p>'),
    "prose_math.html": _page('<p>maps <span class="math">\\(n\\)</span> to <span class="math">\\('
                             'n_\\text{out} = n + 1, the number of positions where the kernel fits\\)</span></p>'),
    "no_mathjax.html": _page('<p><span class="math">\\(x^2\\)</span></p>', head=""),
    "missing_image.html": _page('<img src="figures/missing.png" alt="Figure 1.1">', head=""),
    "dead_link.html": _page('<a href="chapter_99.html">chapter 99</a> <a href="other.html#no-such-section">x</a>'
                            ' <a href="#nowhere">y</a>', head=""),
    "external.html": _page("<p>x</p>", head='<script src="https://cdn.example.org/lib.js"></script>'),
    "console_error.html": _page("<p>x</p>", head="<script>console.error('boom from the page')</script>"),
    "widget.html": _page('<script type="application/vnd.jupyter.widget-view+json">{"model_id": "1"}</script>',
                         head=""),
}


@pytest.fixture(scope="module")
def synthetic_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Small pages served like the book, with the same bundled MathJax (from sphinx-mathjax-offline)."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("sphinx-mathjax-offline")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("sphinx-mathjax-offline is not installed (pip install -r requirements.txt)", pytrace=False)
    mathjax = Path(list(spec.submodule_search_locations)[0]) / "static" / "mathjax"
    root = tmp_path_factory.mktemp("synthetic")
    (root / "mathjax").symlink_to(mathjax, target_is_directory=True)
    (root / "dot.png").write_bytes(_png())
    for name, html in SYNTHETIC.items():
        (root / name).write_text(html)
    site, server = serve(root)
    yield site
    server.shutdown()


def _problems(tab: Tab, site: Site, rel: str) -> list[str]:
    return tab.inspect(site, rel).problems


def test_checker_passes_a_good_page(synthetic_site: Site, tab: Tab) -> None:
    report = tab.inspect(synthetic_site, "good.html")
    assert not report.problems, report.message()
    assert report.equations == 2 and report.images == 1
    assert not colab_problems(report, f"{COLAB}/org/repo/blob/main/book/ch.ipynb")
    assert not chapter_link_problems(synthetic_site, report, ["other"])


def test_checker_catches_a_broken_equation(synthetic_site: Site, tab: Tab) -> None:
    problems = _problems(tab, synthetic_site, "broken_equation.html")
    assert problems == [
        'equation not typeset (no mjx-container): #eq-open "\\(\\frac{1}{2\\)"',
        'TeX error in equation "x^2^3": Double exponent: use braces to clarify',
        'TeX error in equation "\\notamacro x": undefined control sequence \\notamacro',
    ], "\n".join(problems)


def test_checker_catches_prose_typeset_as_math(synthetic_site: Site, tab: Tab) -> None:
    problems = _problems(tab, synthetic_site, "prose_math.html")
    assert problems == ['prose typeset as math (a $ paired with the wrong $?): "the number of positions" in '
                        'equation "n_\\text{out} = n + 1, the number of positions where the kernel fits"'], \
        "\n".join(problems)


def test_checker_catches_equations_left_as_raw_tex(synthetic_site: Site, tab: Tab) -> None:
    problems = _problems(tab, synthetic_site, "no_mathjax.html")
    assert problems == ["MathJax did not load: 1 equation(s) left as raw TeX"], "\n".join(problems)


def test_checker_catches_a_missing_image(synthetic_site: Site, tab: Tab) -> None:
    problems = _problems(tab, synthetic_site, "missing_image.html")
    assert "image not loaded: src='figures/missing.png' alt='Figure 1.1'" in problems, "\n".join(problems)
    assert "HTTP 404 for resource figures/missing.png" in problems, "\n".join(problems)


def test_checker_catches_dead_links(synthetic_site: Site, tab: Tab) -> None:
    problems = _problems(tab, synthetic_site, "dead_link.html")
    assert problems == ["dead link: chapter_99.html (HTTP 404)",
                        "link to missing anchor: other.html#no-such-section",
                        "link to missing anchor on this page: #nowhere"], "\n".join(problems)


def test_checker_catches_network_requests_and_console_errors(synthetic_site: Site, tab: Tab) -> None:
    problems = _problems(tab, synthetic_site, "external.html")
    assert "network request to a non-local host (the book must work offline): https://cdn.example.org/lib.js" \
        in problems, "\n".join(problems)
    problems = _problems(tab, synthetic_site, "console_error.html")
    assert problems == ["console error: boom from the page (at console_error.html)"], "\n".join(problems)


def test_checker_catches_blank_widgets_and_wrong_colab_and_missing_chapter_links(
        synthetic_site: Site, tab: Tab) -> None:
    problems = _problems(tab, synthetic_site, "widget.html")
    assert any("widget output(s) left as an empty placeholder" in p for p in problems), "\n".join(problems)
    report = tab.inspect(synthetic_site, "good.html")
    wrong = f"{COLAB}/org/repo/blob/master/book/ch.ipynb"
    assert colab_problems(report, wrong) == [
        f"Colab link {COLAB}/org/repo/blob/main/book/ch.ipynb points elsewhere, expected {wrong}"]
    assert chapter_link_problems(synthetic_site, report, ["other", "ch9"]) == [
        "the intro's text does not link chapter ch9 (ch9.html)"]
