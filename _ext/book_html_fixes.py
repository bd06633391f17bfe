"""Sphinx extension of the book's build: keep each page's inline scripts unique.

With Sphinx 7.4, an inline script (``app.add_js_file(None, body=...)``) registered after the HTML builder has
started is written into every page twice: once as added (filename ``None``) and once more when the builder
copies the registry at ``prepare_writing`` (filename ``''``), and the two do not compare equal. This is
sphinx-doc/sphinx#13402, fixed in Sphinx 8, which Jupyter Book 1 cannot use (it needs Sphinx 7). sphinx-thebe's
``const THEBE_JS_URL = ...`` is such a script, so every page threw ``SyntaxError: Identifier 'THEBE_JS_URL'
has already been declared`` in the browser (found by tests/test_rendered_book.py). This drops the second copy.
"""

from __future__ import annotations

from typing import Any

from sphinx.application import Sphinx


def _key(script: Any) -> tuple[Any, ...]:
    attributes = getattr(script, "attributes", {})
    return (getattr(script, "filename", script) or "", getattr(script, "priority", 0), tuple(sorted(attributes.items())))


def drop_duplicate_scripts(app: Sphinx, pagename: str, templatename: str, context: dict[str, Any],
                           doctree: Any) -> None:
    """Remove repeated entries (same file or body, priority and attributes) from the page's script list."""
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen: set[tuple[Any, ...]] = set()
    unique = []
    for script in scripts:
        key = _key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique  # in place: the builder restores its own list before the next page


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("html-page-context", drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
