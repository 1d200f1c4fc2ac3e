"""cnngrad in CI: many configs, machine-readable formats, baselines, reproducers."""
from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import jsonschema
import junitparser
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings

import cnngrad
from cnngrad.cli import main
from cnngrad.config import shipped_configs
from cnngrad.layers import Activation
from cnngrad.strategies import configs

SCHEMA = json.loads((resources.files("cnngrad") / "schemas" / "report.schema.json").read_text(encoding="utf-8"))
CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def slightly_wrong_sigma_prime(monkeypatch, factor: float) -> None:
    original = Activation.backward
    monkeypatch.setattr(Activation, "backward",
                        lambda self, delta, cache: (original(self, delta, cache)[0] * factor, {}))


@pytest.fixture()
def shipped(tmp_path: Path) -> Path:
    """A copy of the shipped configs to change at will."""
    folder = tmp_path / "configs"
    folder.mkdir()
    for name, res in shipped_configs().items():
        (folder / f"{name}.yaml").write_text(res.read_text(encoding="utf-8"), encoding="utf-8")
    return folder


# --------------------------------------------------------------------------- many configs


def test_a_folder_checks_every_config_and_sums_up():
    result = run("check", CONFIGS, "--samples", "20")
    assert result.exit_code == 0, result.output
    for name in shipped_configs():
        assert f"cnngrad check: {name}" in result.stdout
    assert "cnngrad: all configs" in result.stdout
    assert result.stdout.count("PASSED:") == len(shipped_configs())


def test_exit_code_is_the_worst_of_all(tmp_path: Path, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: {batch: 1, channels: 1, height: 4, width: 4}\nlayers: [{convv: {}}]\n")
    result = run("check", "seed", str(bad), "--samples", "5")
    assert result.exit_code == 2
    assert result.stderr.count("Error:") == 1 and "convv" in result.stderr
    assert "ERROR" in result.stdout and "PASSED" in result.stdout
    slightly_wrong_sigma_prime(monkeypatch, 2.0)
    assert run("check", "seed", "lenet", "--samples", "5").exit_code == 1
    assert run("check", "seed", str(bad), "--samples", "5").exit_code == 2


def test_quiet_prints_failures_and_summaries_only(monkeypatch):
    result = run("check", "seed", "strided", "--quiet", "--samples", "10")
    assert result.exit_code == 0
    assert "┃ layer" not in result.stdout and result.stdout.count("PASSED:") == 2
    slightly_wrong_sigma_prime(monkeypatch, 2.0)
    result = run("check", "seed", "--quiet")
    assert result.exit_code == 1 and "analytic" in result.stdout and "┃ layer" not in result.stdout


def strip_timings(text: str) -> dict:
    data = json.loads(text)
    for c in data["configs"]:
        c.pop("seconds")
    return data


def test_jobs_give_the_same_json_as_one_process():
    one = run("check", CONFIGS, "--format", "json", "--jobs", "1")
    two = run("check", CONFIGS, "--format", "json", "--jobs", "2")
    assert one.exit_code == two.exit_code == 0
    assert json.dumps(strip_timings(one.stdout)) == json.dumps(strip_timings(two.stdout))


# --------------------------------------------------------------------------- formats


def test_json_validates_against_the_shipped_schema(tmp_path: Path, monkeypatch):
    ok = run("check", CONFIGS, "--format", "json", "--samples", "10")
    data = json.loads(ok.stdout)
    jsonschema.validate(data, SCHEMA)
    assert data["schema_version"] == 2 and data["cnngrad_version"] == cnngrad.__version__
    rec = data["configs"][0]["records"][0]
    assert {"layer", "kind", "tensor", "checked", "status", "max_abs", "max_rel", "norm_rel",
            "method", "eps", "seed", "dtype"} <= set(rec)
    bad = tmp_path / "bad.yaml"
    bad.write_text("layers: []\n")
    slightly_wrong_sigma_prime(monkeypatch, 2.0)
    failing = run("check", "seed", str(bad), "--format", "json")
    data = json.loads(failing.stdout)
    jsonschema.validate(data, SCHEMA)
    assert [c["return_code"] for c in data["configs"]] == [1, 2] and not data["passed"]
    assert any(r["status"] == "fail" for r in data["configs"][0]["records"])
    assert "missing required key" in data["configs"][1]["error"]


def test_junit_parses_with_a_real_junit_parser(tmp_path: Path, monkeypatch):
    slightly_wrong_sigma_prime(monkeypatch, 2.0)
    out = tmp_path / "report.xml"
    result = run("check", "seed", "strided", "--format", "junit", "--output", str(out), "--samples", "10")
    assert result.exit_code == 1 and result.stdout == ""
    xml = junitparser.JUnitXml.fromfile(str(out))
    suites = {s.name: s for s in xml}
    assert set(suites) == {"seed", "strided"}
    cases = {c.name: c for c in suites["seed"]}
    # 5 tensors, and the δ at each inner layer boundary that the failure's localisation adds
    assert len(cases) == 8 and "layers[0] conv W" in cases and "layers[3] activation δ input" in cases
    failed = [c for c in suites["seed"] if not c.is_passed]
    assert failed and all(isinstance(c.result[0], junitparser.Failure) for c in failed)
    assert "norm_rel=" in failed[0].result[0].text
    assert suites["seed"].failures == len(failed) and suites["seed"].tests == 8


def test_markdown_renders_tables():
    result = run("check", "seed", "lenet", "--format", "markdown", "--samples", "10")
    lines = result.stdout.splitlines()
    assert lines[0].startswith("## cnngrad: all gradients check out")
    assert "| config | tensors | worst norm rel | verdict | time |" in lines
    assert "### seed" in lines and "### lenet" in lines
    rows = [ln for ln in lines if ln.startswith("| ") and "conv" in ln]
    assert rows and all(ln.count("|") == 10 for ln in rows)


def test_output_is_written_whole_and_a_bad_path_is_exit_2(tmp_path: Path):
    out = tmp_path / "r.json"
    assert run("check", "seed", "--format", "json", "--output", str(out)).exit_code == 0
    jsonschema.validate(json.loads(out.read_text()), SCHEMA)
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left behind
    table = tmp_path / "r.txt"
    assert run("check", "seed", "--output", str(table)).exit_code == 0
    assert "PASSED" in table.read_text()
    assert run("check", "seed", "--output", str(tmp_path / "no" / "r.json")).exit_code == 2


# --------------------------------------------------------------------------- baselines


def test_baseline_record_pass_degrade_and_change(shipped: Path, tmp_path: Path, monkeypatch):
    base = tmp_path / "baseline.json"
    rec = run("baseline", "record", str(shipped), "-o", str(base))
    assert rec.exit_code == 0, rec.output
    recorded = json.loads(base.read_text())
    assert set(recorded["configs"]) == set(shipped_configs())
    assert run("check", str(shipped), "--baseline", str(base), "--quiet").exit_code == 0

    # a backward made slightly wrong: still under tol, but 100x its baseline error
    with monkeypatch.context() as mp:
        slightly_wrong_sigma_prime(mp, 1 + 2e-7)
        grew = run("check", str(shipped / "seed.yaml"), "--baseline", str(base))
    assert grew.exit_code == 1, grew.output
    assert "grew" in grew.stdout and "over the baseline" in grew.stdout and "still under tol" in grew.stdout
    assert "tensors within tol" in grew.stdout  # every tensor under tol, yet the run fails

    # a config that changed is flagged, not compared
    seed = shipped / "seed.yaml"
    seed.write_text(seed.read_text().replace("seed: 0", "seed: 1"))
    changed = run("check", str(seed), "--baseline", str(base))
    assert changed.exit_code == 0
    assert "changed since the baseline was recorded" in changed.stdout


def test_the_committed_baseline_matches_the_shipped_configs():
    """.ci/run checks configs/ against baseline.json: it must be current."""
    committed = json.loads((Path(CONFIGS).parent / "baseline.json").read_text())
    for name in shipped_configs():
        report = cnngrad.check(str(Path(CONFIGS) / f"{name}.yaml"))
        assert committed["configs"][name]["digest"] == report.digest, f"record baseline.json again ({name})"


# --------------------------------------------------------------------------- reproducers, public API


def test_reproducer_is_a_config_that_fails_the_same_way(tmp_path: Path, monkeypatch):
    slightly_wrong_sigma_prime(monkeypatch, 2.0)
    result = run("check", "seed", "--reproducer", str(tmp_path / "repro"), "--seed", "3")
    assert result.exit_code == 1
    (path,) = (tmp_path / "repro").iterdir()
    text = path.read_text()
    assert text.startswith("# cnngrad reproducer: layers[")
    assert yaml.safe_load(text)["seed"] == 3
    again = run("check", str(path))
    assert again.exit_code == 1


@settings(max_examples=10)
@given(configs(max_layers=3, max_size=6))
def test_public_api_in_a_users_property_test(raw):
    """What a user writes: strategies build valid configs, cnngrad.check takes the dict."""
    report = cnngrad.check(raw)
    assert report.passed, [(r.layer, r.tensor, r.metrics.norm_rel) for r in report.failures]


def test_write_reproducer_from_the_api(tmp_path: Path):
    report = cnngrad.check("seed", samples=3)
    path = report.write_reproducer(tmp_path)
    again = cnngrad.check(str(path))  # samples=3 travels in the reproducer's check: block
    assert [(r.layer, r.tensor, r.checked, r.metrics.norm_rel) for r in again.rows] == \
        [(r.layer, r.tensor, r.checked, r.metrics.norm_rel) for r in report.rows]
    shutil.rmtree(tmp_path)
