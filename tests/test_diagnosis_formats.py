"""Diagnoses and localisation travel: JSON (schema 2, validated), JUnit <failure> text and
the markdown summary carry them — not only the terminal table."""
from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree as ET

import jsonschema
from click.testing import CliRunner

from cnngrad.cli import main

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "cnngrad" / "schemas" / "report.schema.json").read_text())
BUG = str(ROOT / "tests" / "zoo" / "pool_avg_divisor_stride.yaml")
TWIN = str(ROOT / "tests" / "zoo" / "twin_pool_avg_3_2.yaml")


def run(fmt: str, *paths: str) -> str:
    result = CliRunner().invoke(main, ["check", *paths, "--plugins", "--format", fmt])
    assert result.exit_code == 1, result.output
    return result.stdout


def test_json_carries_diagnosis_and_localisation():
    data = json.loads(run("json", BUG, TWIN))
    jsonschema.validate(data, SCHEMA)
    assert data["schema_version"] == 2
    bug, twin = data["configs"]
    assert bug["localisation"] == {"layer": 1, "kind": "ZooPool",
                                   "text": "layer 1 (ZooPool): backward is wrong; layers 2-3 check out"}
    (row,) = [r for r in bug["records"] if r["status"] == "fail" and r["layer"] == 1]
    assert row["tensor"] == "input"
    assert all(r["diagnosis"] == [] for r in bug["records"] if r["layer"] != 1)  # only the blamed layer's
    (said,) = row["diagnosis"]
    assert "divided by the stride² (2·2) instead of the window size" in said
    assert twin["localisation"] is None and all(r["diagnosis"] == [] for r in twin["records"])


def test_junit_failure_text_carries_them():
    root = ET.fromstring(run("junit", BUG))
    (failure,) = [f for f in root.iter("failure") if "layer 1 (ZooPool)" in (f.text or "")]
    text = failure.text or ""
    assert "layer 1 (ZooPool): backward is wrong" in text
    assert "diagnosis: δ is each window's δ divided by the stride²" in text


def test_markdown_carries_them():
    out = run("markdown", BUG)
    assert "- localisation: layer 1 (ZooPool): backward is wrong" in out
    assert "diagnosis: δ is each window's δ divided by the stride²" in out


def test_a_failed_adjoint_test_is_a_junit_failure_and_in_the_summary():
    bug = str(ROOT / "tests" / "zoo" / "conv_delta_not_rotated.yaml")
    root = ET.fromstring(run("junit", bug))
    (case,) = [c for c in root.iter("testcase") if c.get("name", "").endswith("adjoint")]
    assert case.find("failure").get("type") == "AdjointMismatch"
    table = CliRunner().invoke(main, ["check", bug, "--plugins"]).stdout
    assert "1 adjoint test failed" in table.splitlines()[-1]
