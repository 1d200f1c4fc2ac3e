"""``--tol estimate``: Ridders' error estimate sets each tensor's tolerance, stricter only.

The oracle for "the bug is real" is the test's own loop of central differences (at h and
h/2, extrapolated), not cnngrad's engine."""
from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from importlib import resources

import jsonschema
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from cnngrad import config as cfg
from cnngrad.checker import check
from cnngrad.cli import main
from cnngrad.layers import Activation
from cnngrad.network import build
from cnngrad.tolerance import FLOOR, from_estimate

SCHEMA = json.loads((resources.files("cnngrad") / "schemas" / "report.schema.json").read_text(encoding="utf-8"))
TINY_BUG = 1 + 1e-8


def scaled_backward(monkeypatch, factor: float) -> None:
    """Every activation's δ off by ``factor`` (tests/test_ci.py's slightly_wrong_sigma_prime)."""
    original = Activation.backward
    monkeypatch.setattr(Activation, "backward",
                        lambda self, delta, cache: (original(self, delta, cache)[0] * factor, {}))


def loop_gradient(net, x: np.ndarray, y: np.ndarray, layer: int, name: str, h: float = 1e-3) -> np.ndarray:
    """∂C/∂params[name] of ``net.layers[layer]``, entry by entry: central differences at h
    and h/2, D = (C(θ+h) − C(θ−h)) / 2h, extrapolated as (4·D(h/2) − D(h)) / 3 (error O(h⁴)
    plus rounding ~ε·C/h: ~1e-12 here, far below the 1e-8 bug)."""
    P = net.layers[layer].params[name]
    out = np.empty(P.size)
    for j in range(P.size):
        d = []
        for step in (h, h / 2):
            saved = P.flat[j]
            P.flat[j] = saved + step
            up = net.cost(net.forward(x)[0], y)
            P.flat[j] = saved - step
            down = net.cost(net.forward(x)[0], y)
            P.flat[j] = saved
            d.append((up - down) / (2 * step))
        out[j] = (4 * d[1] - d[0]) / 3
    return out.reshape(P.shape)


def rel(g: np.ndarray, n: np.ndarray) -> float:
    return float(np.linalg.norm(g - n) / (np.linalg.norm(g) + np.linalg.norm(n)))


# --------------------------------------------------------------------------- the rule


def test_the_estimate_only_tightens():
    g = np.array([1.0, -2.0, 0.5])
    assert from_estimate(g, g, np.full(3, 1e-14), 0.0, 1e-6)[0] == pytest.approx(10 * math.sqrt(3) * 1e-14 / 2 /
                                                                                 np.linalg.norm(g))
    assert from_estimate(g, g, np.full(3, 1e3), 0.0, 1e-6)[0] == 1e-6  # a noisy estimate: the default
    assert from_estimate(g, g, np.full(3, np.nan), 0.0, 1e-6)[0] == 1e-6
    assert from_estimate(g, g, np.full(3, np.inf), 0.0, 1e-6)[0] == 1e-6
    assert from_estimate(g, g, np.zeros(3), 0.0, 1e-6)[0] == FLOOR  # a perfect estimate: a few ε
    assert from_estimate(g, g, np.zeros(3), 1e-3, 1e-6)[0] == 1e-6  # a coarse backward: the default
    assert from_estimate(np.zeros(0), np.zeros(0), np.zeros(0), 0.0, 1e-6)[0] == 1e-6


# --------------------------------------------------------------------------- on smooth


def test_smooth_gets_tolerances_below_1e_9_and_passes():
    rep = check("smooth", method="ridders", tol="estimate")
    assert rep.passed and rep.tol == 1e-6 and rep.tol_rule == "estimate"
    for r in rep.rows:
        assert FLOOR <= r.tol <= 1e-9, (r.ref.label, r.tol)
        assert r.metrics.norm_rel <= r.tol and "from the estimate" in r.note


def test_the_tiny_bug_is_real_by_the_tests_own_differences(monkeypatch):
    problem = build(cfg.load("smooth"))
    net, x, y = problem.net, problem.x, problem.y
    _, _, right = net.gradients(x, y)
    scaled_backward(monkeypatch, TINY_BUG)
    _, _, wrong = net.gradients(x, y)
    for layer, name in [(6, "W"), (6, "b"), (0, "b")]:  # below an activation: scaled by (1 + 1e-8)^k
        numeric = loop_gradient(net, x, y, layer, name)
        assert rel(right[layer][name], numeric) < 2e-10, (layer, name)
        assert rel(wrong[layer][name], numeric) > 4e-9, (layer, name)


def test_the_tiny_bug_passes_the_default_and_fails_the_estimate(monkeypatch):
    scaled_backward(monkeypatch, TINY_BUG)
    assert check("smooth").passed  # central differences, tol 1e-6: blind to it
    assert check("smooth", method="ridders").passed  # Ridders at the default tol: blind too
    rep = check("smooth", method="ridders", tol="estimate")
    assert rep.return_code == 1
    assert rep.localisation.startswith("layer 7 (activation)"), rep.localisation
    below = [r for r in rep.rows if r.ref.index < 7]
    assert below and all(r.failed and r.tol <= 1e-9 for r in below)
    assert all(r.passed for r in rep.rows if r.ref.index == 8)  # the last dense layer is right


def test_without_ridders_it_is_a_usage_error():
    for args in (["check", "smooth", "--tol", "estimate"],
                 ["check", "smooth", "--tol", "estimate", "--method", "central"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "--tol estimate needs --method ridders" in lines[0], result.stderr
        assert "Traceback" not in result.output
    result = CliRunner().invoke(main, ["check", "smooth", "--method", "ridders", "--tol", "estimate",
                                       "--directions", "2"])
    assert result.exit_code == 2 and "--tol estimate" in result.stderr
    result = CliRunner().invoke(main, ["check", "smooth", "--tol", "loose"])
    assert result.exit_code == 2 and "'loose' is not a number" in result.stderr
    assert "estimate" in CliRunner().invoke(main, ["check", "--help"]).output


def test_json_and_junit_carry_each_rows_tol(monkeypatch, tmp_path):
    result = CliRunner().invoke(main, ["check", "smooth", "--method", "ridders", "--tol", "estimate",
                                       "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    jsonschema.validate(data, SCHEMA)
    records = data["configs"][0]["records"]
    assert all(r["tol"] <= 1e-9 and r["norm_rel"] <= r["tol"] and "from the estimate" in r["note"] for r in records)
    scaled_backward(monkeypatch, TINY_BUG)
    out = tmp_path / "report.xml"
    result = CliRunner().invoke(main, ["check", "smooth", "--method", "ridders", "--tol", "estimate",
                                       "--format", "junit", "--output", str(out)])
    assert result.exit_code == 1, result.output
    failures = ET.parse(out).getroot().iter("failure")
    messages = [f.get("message", "") for f in failures]
    tols = [float(m.rsplit("> tol ", 1)[1]) for m in messages if "> tol " in m]
    assert tols and all(t <= 1e-9 for t in tols), messages


def test_the_layer_scope_sets_each_links_tol_from_its_estimate(monkeypatch):
    """Each link (the layer alone) has an estimate of its own; the end-to-end row, along
    directions, keeps the default."""
    rep = check("smooth", method="ridders", tol="estimate", scope="layer")
    assert rep.passed
    links = [r for r in rep.rows if "end to end" not in r.note]
    assert links and all(r.estimate is not None and FLOOR <= r.tol <= 1e-9 for r in links)
    assert all(r.tol == 1e-6 for r in rep.rows if "end to end" in r.note)
    scaled_backward(monkeypatch, TINY_BUG)
    assert check("smooth", method="ridders", scope="layer").passed  # the default tol: blind
    rep = check("smooth", method="ridders", tol="estimate", scope="layer")
    assert rep.return_code == 1 and rep.localisation.startswith("layer 7 (activation)")
    assert {r.kind for r in rep.failures if "end to end" not in r.note} == {"activation"}


def test_a_float32_backward_keeps_tolerances_above_its_own_rounding():
    raw = yaml.safe_load(cfg.shipped_configs()["smooth"].read_text())
    raw["dtype"] = "float32"
    rep = check(raw, method="ridders", tol="estimate")
    assert rep.passed and rep.tol == 1e-4
    assert all(1e-7 <= r.tol <= 1e-4 for r in rep.rows)


def test_a_config_can_ask_for_it_and_a_reproducer_keeps_it(monkeypatch, tmp_path):
    raw = yaml.safe_load(cfg.shipped_configs()["smooth"].read_text())
    raw["check"] = {"method": "ridders", "tol": "estimate"}
    rep = check(raw)
    assert rep.passed and rep.tol_rule == "estimate" and all(r.tol <= 1e-9 for r in rep.rows)
    assert check(raw, tol=1e-6).tol_rule == "fixed"  # a number given overrides it
    with pytest.raises(cfg.ConfigError, match="check.tol: estimate needs --method ridders"):
        check({**raw, "check": {"tol": "estimate"}})
    with pytest.raises(cfg.ConfigError, match="check.tol"):
        cfg.validate({**raw, "check": {"tol": "loose"}})
    scaled_backward(monkeypatch, TINY_BUG)
    result = CliRunner().invoke(main, ["check", "smooth", "--method", "ridders", "--tol", "estimate",
                                       "--reproducer", str(tmp_path)])
    assert result.exit_code == 1, result.output
    written = list(tmp_path.glob("*.yaml"))
    assert len(written) == 1 and yaml.safe_load(written[0].read_text())["check"]["tol"] == "estimate"
    assert CliRunner().invoke(main, ["check", str(written[0])]).exit_code == 1  # it reproduces the failure
