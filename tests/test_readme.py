"""The README's examples run as written: every fenced block after a `<!-- test: run -->`
line — python blocks are executed (and the `test_*` functions they define called), bash
blocks run line by line with `cnngrad` being this tree's `python -m cnngrad` — in a
scratch folder holding a copy of configs/, each must succeed."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import hypothesis
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"<!-- test: run -->\n```(python|bash)\n(.*?)```", README, re.S)


def test_the_readme_marks_its_examples() -> None:
    kinds = [kind for kind, _ in BLOCKS]
    assert kinds.count("python") >= 2 and kinds.count("bash") >= 2
    assert "docs/contract.md" in README and "CONVENTIONS.md" not in README  # the contract is in the repository


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("code", [code for kind, code in BLOCKS if kind == "python"],
                         ids=lambda code: code.splitlines()[0][:40])
def test_python_examples_run(scratch: Path, code: str) -> None:
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, "README.md", "exec"), namespace)
    for name, fn in list(namespace.items()):
        if name.startswith("test_") and callable(fn):
            # a property example draws at random each run: here, one fixed draw (CI never flakes on it)
            (hypothesis.seed(0)(fn) if hasattr(fn, "hypothesis") else fn)()


@pytest.mark.parametrize("code", [code for kind, code in BLOCKS if kind == "bash"],
                         ids=lambda code: code.splitlines()[0][:40])
def test_shell_examples_run(scratch: Path, code: str) -> None:
    script = f'set -euo pipefail\ncnngrad() {{ "{sys.executable}" -m cnngrad "$@"; }}\n{code}'
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(["bash", "-c", script], cwd=scratch, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
