"""Where the book is published, in one place: the repository, the released version and what Colab installs.

Every chapter's setup cell installs :data:`INSTALL_SPEC` in Colab and checks :data:`VERSION`; ``_config.yml``'s
repository and launch buttons point at :data:`REPOSITORY` on :data:`TAG`; the README's install line names the
same spec. A setup cell runs before the library is installed, so it cannot import this module: it carries
the values as text, and ``python -m uflow_lib.publication --write`` rewrites those copies from here
(``tests/test_publication.py`` fails while any copy disagrees). Publishing a release: set :data:`VERSION`
(and ``pyproject.toml``'s ``version``), run the command, commit, and tag the commit :data:`TAG`.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from . import __version__

__all__ = ["REPOSITORY", "VERSION", "TAG", "INSTALL_SPEC", "setup_cell_lines", "disagreements", "write"]

#: The public repository (GitHub) of the book and the library.
REPOSITORY = "https://github.com/uflow-book/uflow-book"
#: The library version the chapters are written against (``uflow_lib.__version__``).
VERSION = __version__
#: The git tag of that release: Colab installs it, and the launch buttons open the chapters at it.
TAG = f"v{VERSION}"
#: What a chapter's setup cell installs in Colab.
INSTALL_SPEC = f"uflow_lib @ git+{REPOSITORY}@{TAG}"

_INSTALL = re.compile(r'"uflow_lib @ git\+[^"]*"')
_ASSERT = re.compile(r'assert uflow_lib\.__version__ == "[^"]*"')


def setup_cell_lines() -> tuple[str, str]:
    """The install argument and the version check every setup cell contains, as text."""
    return f'"{INSTALL_SPEC}"', f'assert uflow_lib.__version__ == "{VERSION}"'


def _setup_cell(nb: dict) -> dict | None:
    return next((c for c in nb["cells"] if c["cell_type"] == "code" and "google.colab" in "".join(c["source"])), None)


def _config_values(text: str) -> dict[str, str]:
    """``repository.url`` and ``repository.branch`` of a ``_config.yml`` (read as text: no YAML dependency)."""
    block = re.search(r"^repository:\n((?:[ \t]+.*\n?)+)", text, re.M)
    found = dict(re.findall(r"^\s+(\w+):\s*(\S+)", block.group(1), re.M)) if block else {}
    return {k: found.get(k, "") for k in ("url", "branch")}


def disagreements(root: str | Path) -> list[str]:
    """Every copy under the repository ``root`` that differs from this module, one line each (empty: all agree)."""
    root = Path(root)
    install, check = setup_cell_lines()
    problems = []
    for path in sorted((root / "book").glob("[0-9][0-9]_*.ipynb")):
        cell = _setup_cell(json.loads(path.read_text()))
        text = "" if cell is None else "".join(cell["source"])
        if cell is None:
            problems.append(f"{path.name}: no setup cell (a code cell that installs the library in Colab)")
        elif _INSTALL.findall(text) != [install] or _ASSERT.findall(text) != [check]:
            problems.append(f"{path.name}: setup cell installs {_INSTALL.findall(text)} and checks "
                            f"{_ASSERT.findall(text)}; expected {install} and {check}")
    config = _config_values((root / "_config.yml").read_text())
    if config != {"url": REPOSITORY, "branch": TAG}:
        problems.append(f"_config.yml: repository {config}; expected url {REPOSITORY}, branch {TAG}")
    if f'pip install "{INSTALL_SPEC.split(" @ ")[1]}"' not in (root / "README.md").read_text():
        problems.append(f'README.md: no install line `pip install "{INSTALL_SPEC.split(" @ ")[1]}"`')
    pyproject = re.search(r'^version = "([^"]+)"', (root / "pyproject.toml").read_text(), re.M)
    if pyproject is None or pyproject.group(1) != VERSION:
        problems.append(f"pyproject.toml: version {pyproject and pyproject.group(1)}; expected {VERSION}")
    return problems


def write(root: str | Path) -> list[str]:
    """Rewrite the chapters' setup cells, ``_config.yml`` and the README's install line; returns the files changed."""
    root = Path(root)
    install, check = setup_cell_lines()
    changed = []
    for path in sorted((root / "book").glob("[0-9][0-9]_*.ipynb")):
        raw = path.read_text()
        nb = json.loads(raw)
        cell = _setup_cell(nb)
        if cell is None:
            continue
        cell["source"] = [_ASSERT.sub(check, _INSTALL.sub(install, line)) for line in cell["source"]]
        new = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
        if new != raw:
            path.write_text(new)
            changed.append(path.name)
    config = root / "_config.yml"
    text = config.read_text()
    new = re.sub(r"^(repository:\n(?:[ \t]+.*\n)*?[ \t]+url:\s*)\S+", rf"\g<1>{REPOSITORY}", text, flags=re.M)
    new = re.sub(r"^(repository:\n(?:[ \t]+.*\n)*?[ \t]+branch:\s*)\S+", rf"\g<1>{TAG}", new, flags=re.M)
    if new != text:
        config.write_text(new)
        changed.append(config.name)
    readme = root / "README.md"
    text = readme.read_text()
    new = re.sub(r'pip install "git\+[^"]*"', f'pip install "{INSTALL_SPEC.split(" @ ")[1]}"', text)
    if new != text:
        readme.write_text(new)
        changed.append(readme.name)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m uflow_lib.publication",
                                     description="Check (default) or rewrite the copies of the publication settings.")
    parser.add_argument("--root", default=".", help="repository root (default: the current folder)")
    parser.add_argument("--write", action="store_true", help="rewrite the copies from uflow_lib/publication.py")
    args = parser.parse_args(argv)
    if args.write:
        print("rewrote: " + (", ".join(write(args.root)) or "nothing (all agreed)"))
    problems = disagreements(args.root)
    print("\n".join(problems) or f"all copies agree: {INSTALL_SPEC}, {TAG}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
