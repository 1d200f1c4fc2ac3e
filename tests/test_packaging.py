"""What `pip install .` ships: every subpackage of cnngrad (an explicit list in pyproject.toml
once left cnngrad/diagnose and cnngrad/layer_scope out of a non-editable install)."""
from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_installed() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    listed = setuptools.get("packages")
    found = sorted(".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "cnngrad").rglob("__init__.py"))
    assert len(found) > 1
    if isinstance(listed, list):
        missing = [name for name in found if name not in listed]
    else:
        include = listed["find"]["include"]
        missing = [name for name in found if not any(fnmatch.fnmatch(name, pat) for pat in include)]
    assert not missing, f"pyproject.toml does not ship {missing}"
