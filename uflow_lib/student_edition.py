"""The students' edition of the rendered book: the same site built from the student copies.

The book in ``book/`` carries every solution. For a graded course, ``make book-student`` builds the site from
``assignments/student/*.ipynb`` instead (solutions replaced by stubs, check cells kept, their outputs removed),
together with the book's Markdown pages, into ``_build/student/_build/html``. The pages sit under
``assignments/student/`` in the staged source, so each chapter's Colab button opens the student copy.

    python -m uflow_lib.student_edition [--out _build/student]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

__all__ = ["STUDENT_DIR", "stage", "build", "student_toc"]

REPO = Path(__file__).resolve().parents[1]
#: Where the pages of the students' edition live, relative to the staged source (and to the repository).
STUDENT_DIR = "assignments/student"


def student_toc(toc: dict) -> dict:
    """The book's table of contents with every ``book/...`` page moved to :data:`STUDENT_DIR`."""

    def move(node):
        if isinstance(node, dict):
            return {k: (v.replace("book/", f"{STUDENT_DIR}/", 1) if k in ("file", "root") and isinstance(v, str)
                        else move(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [move(item) for item in node]
        return node

    return move(toc)


def stage(repo: Path, dest: Path) -> Path:
    """Write the source of the students' edition to ``dest`` (emptied first); returns ``dest``."""
    students = repo / STUDENT_DIR
    copies = sorted(students.glob("[0-9][0-9]_*.ipynb"))
    if not copies:
        raise FileNotFoundError(f"no student copies in {students}: run `make assignments` first")
    if dest.exists():
        shutil.rmtree(dest)
    pages = dest / STUDENT_DIR
    pages.mkdir(parents=True)
    config = yaml.safe_load((repo / "_config.yml").read_text())
    config["title"] = f"{config['title']} (students' edition)"
    config["exclude_patterns"] = [p for p in config.get("exclude_patterns", []) if not p.startswith("assignments")]
    (dest / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    toc = student_toc(yaml.safe_load((repo / "_toc.yml").read_text()))
    (dest / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False, allow_unicode=True))
    shutil.copytree(repo / "_ext", dest / "_ext", ignore=shutil.ignore_patterns("__pycache__"))
    for page in sorted((repo / "book").glob("*.md")):
        shutil.copy2(page, pages / page.name)
    if (repo / "book" / "figures").is_dir():  # static figures the pages include (e.g. the intro's pipeline)
        shutil.copytree(repo / "book" / "figures", pages / "figures")
    for copy in copies:
        shutil.copy2(copy, pages / copy.name)
    return dest


def build(repo: Path = REPO, out: Path | None = None) -> Path:
    """Stage and build the students' edition with ``jupyter-book build -W``; returns the HTML folder."""
    out = Path(out) if out is not None else repo / "_build" / "student"
    source = stage(repo, out / "source")
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    command = [str(jupyter_book if jupyter_book.exists() else "jupyter-book"), "build", str(source),
               "--path-output", str(out), "-W", "--keep-going"]
    subprocess.run(command, check=True)
    return out / "_build" / "html"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m uflow_lib.student_edition", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "_build" / "student"), help="build folder (default: _build/student)")
    html = build(REPO, Path(ap.parse_args(argv).out))
    print(f"students' edition: {html / 'index.html'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
