"""The publication settings live in uflow_lib/publication.py; every copy (setup cells, _config.yml, README) agrees."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from uflow_lib import __version__, publication

ROOT = Path(__file__).resolve().parents[1]


def test_every_copy_agrees_with_the_one_place():
    assert publication.disagreements(ROOT) == [], "run: python -m uflow_lib.publication --write"


def test_the_spec_installs_the_tagged_release_of_this_version():
    assert publication.VERSION == __version__
    assert publication.INSTALL_SPEC == f"uflow_lib @ git+{publication.REPOSITORY}@v{__version__}"


def test_a_drifted_copy_is_found_and_rewritten(tmp_path):
    for name in ("_config.yml", "README.md", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "book").mkdir()
    chapter = tmp_path / "book" / "06_reproducing_mvtec.ipynb"
    text = (ROOT / "book" / chapter.name).read_text()
    chapter.write_text(text.replace(f"@{publication.TAG}", "@main"))
    readme = tmp_path / "README.md"
    readme.write_text(readme.read_text().replace(f"@{publication.TAG}", "@main"))
    problems = publication.disagreements(tmp_path)
    assert [p.split(":")[0] for p in problems] == [chapter.name, "README.md"]
    assert sorted(publication.write(tmp_path)) == sorted([chapter.name, "README.md"])
    assert publication.disagreements(tmp_path) == []
    assert json.loads(chapter.read_text()) == json.loads(text)  # only the install line changed back
