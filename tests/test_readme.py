"""README's module table lists every module of the package, and nothing that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

import uflow_lib

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path(uflow_lib.__file__).parent


def _modules() -> set[str]:
    """Dotted names of the package's modules; a subpackage counts once (its chapter modules are one row)."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__main__" or "exercises" in parts[:-1] and parts[-1] != "__init__":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts != ["uflow_lib"]:
            names.add(".".join(parts))
    return names


def _table_rows(text: str) -> set[str]:
    table = text[text.index("## The library at a glance"):text.index("## Command line")]
    return set(re.findall(r"^\| `(uflow_lib[\w.]*)` \|", table, re.M))


def test_readme_table_lists_exactly_the_modules():
    rows = _table_rows((REPO / "README.md").read_text())
    modules = _modules()
    assert rows == modules, (f"missing from README's table: {sorted(modules - rows)}; "
                             f"in the table but not a module: {sorted(rows - modules)}")


def test_the_check_sees_a_missing_row():
    text = (REPO / "README.md").read_text()
    rows = _table_rows(text.replace("| `uflow_lib.runtime` |", "| runtime |"))
    assert "uflow_lib.runtime" in _modules() - rows
