"""docs/contract.md says what the code does: its lists of JSON keys, `.npz` keys and layer
declarations are checked against a real run; and importing cnngrad has no process-wide side
effect (malloc tuning is the CLI's, and CNNGRAD_NO_MALLOC_TUNING still stops it)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

import cnngrad
from cnngrad.checker import save_npz
from cnngrad.formats import to_dict

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "contract.md").read_text(encoding="utf-8")


def listed(after: str) -> list[str]:
    """The backquoted names of the bullet right after the line starting with ``after``."""
    block = DOC.split(after, 1)[1]
    bullet = next(ln for ln in block.splitlines() if ln.startswith("- "))
    return re.findall(r"`([a-z_]+)`", bullet)


def test_json_keys_are_the_documented_ones() -> None:
    data = to_dict([cnngrad.check("seed", samples=5)])
    assert listed("`schema_version`. Top level:") == list(data)
    assert listed("Each entry of `configs`:") == list(data["configs"][0])
    assert listed("Each entry of `records`") == list(data["configs"][0]["records"][0])


def test_npz_keys_are_the_documented_ones(tmp_path: Path) -> None:
    report = cnngrad.check("lenet", samples=5)
    save_npz(report, tmp_path / "run.npz")
    keys = set(np.load(tmp_path / "run.npz").files)
    want = {"x", "y", "loss", "grad.input", "numgrad.input"}
    for i, P in [(0, "W"), (0, "b"), (3, "W"), (3, "b"), (7, "W"), (7, "b"), (9, "W"), (9, "b")]:
        want |= {f"layers.{i}.{P}", f"grad.layers.{i}.{P}", f"numgrad.layers.{i}.{P}"}
    assert keys == want
    for key in ("`x`", "`y`", "`loss`", "`layers.{i}.{P}`", "`grad.layers.{i}.{P}`", "`numgrad.layers.{i}.{P}`",
                "`grad.input`", "`numgrad.input`"):
        assert key in DOC


def test_the_declarations_are_the_ones_the_code_reads() -> None:
    network = (ROOT / "cnngrad" / "network.py").read_text() + (ROOT / "cnngrad" / "complex_probe.py").read_text()
    for name in ("per_sample", "complex_safe", "kink_state"):
        assert f"`{name}" in DOC and name in network


def test_exit_codes_and_no_external_files() -> None:
    for code in ("| 0 |", "| 1 |", "| 2 |"):
        assert code in DOC
    assert "../shared" not in DOC and "CONVENTIONS.md" not in DOC


PROBE = """
import ctypes, json, os, sys
calls = []
real = ctypes.CDLL
class Recorder:
    def __init__(self, *a, **k):
        self._lib = real(*a, **k)
    def __getattr__(self, name):
        if name in ("mallopt", "malloc_trim"):
            calls.append(name)
        return getattr(self._lib, name)
ctypes.CDLL = Recorder
import cnngrad, cnngrad.cli, cnngrad.pytest_plugin, cnngrad.strategies
cnngrad.check("seed", samples=3)
after_import = list(calls)
if sys.argv[1] == "cli":
    try:
        cnngrad.cli.main(["examples"], standalone_mode=False)
    except SystemExit:
        pass
print(json.dumps({"import": after_import, "all": calls}))
"""


def probe(mode: str, **env: str) -> dict:
    """The malloc calls seen by importing cnngrad and checking (and, mode "cli", running the CLI)."""
    import json

    base = {k: v for k, v in os.environ.items() if k != "CNNGRAD_NO_MALLOC_TUNING"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**base, **env}, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_changes_no_malloc_setting_the_cli_does() -> None:
    assert probe("library") == {"import": [], "all": []}
    cli = probe("cli")
    assert cli["import"] == [] and "mallopt" in cli["all"]
    assert probe("cli", CNNGRAD_NO_MALLOC_TUNING="1")["all"] == []


def test_py_typed_ships() -> None:
    assert (ROOT / "cnngrad" / "py.typed").exists()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'cnngrad = \[[^\]]*"py.typed"', pyproject)
