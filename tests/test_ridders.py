"""``--method ridders``: Ridders' tableau of shrinking steps, an error estimate per entry."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from cnngrad.checker import check
from cnngrad.cli import main
from cnngrad.config import shipped_configs
from cnngrad.finite_diff.methods import METHODS


def tableau_at(f, x: float, method=METHODS["ridders"], h: float = 0.6) -> tuple[float, float]:
    """Ridders' estimate of f'(x) and its error estimate, from f at the method's steps."""
    steps = np.array(method.offsets, dtype=float) * h
    c = np.array([f(x + s) for s in steps])[:, None, None]  # (M, K=1, S=1)
    value, error = method.tableau(c, steps[:, None], np.array([[f(x)]]))
    return float(value[0]), float(error[0])


@pytest.mark.parametrize("f, df, x", [
    (np.exp, np.exp, 0.3), (np.sin, np.cos, 1.0), (np.tanh, lambda t: 1 - np.tanh(t) ** 2, 0.5),
    (lambda t: np.log1p(np.exp(t)), lambda t: 1 / (1 + np.exp(-t)), -0.7)])
def test_the_tableau_on_closed_forms(f, df, x):
    value, error = tableau_at(f, x)
    assert abs(value - df(x)) < 1e-13
    assert 0 < error < 1e-12  # the estimate is small where the result is good …
    assert abs(value - df(x)) <= 10 * error  # … and not far below the error it has


def smooth(seed: int) -> dict:
    raw = yaml.safe_load(shipped_configs()["smooth"].read_text())
    raw["seed"] = seed
    return raw


@pytest.mark.parametrize("seed", [4, 0, 3])  # 4: the shipped one; the others: nets like it
def test_smooth_nets_to_1e_12(seed):
    rep = check(smooth(seed), method="ridders")
    assert rep.passed
    worst = max(r.metrics.norm_rel for r in rep.rows)
    assert worst <= 1e-12, [(r.ref.label, r.metrics.norm_rel) for r in rep.rows]
    for r in rep.rows:  # the estimate is shown, and the error is within reach of it
        assert r.estimate is not None and "Ridders error estimate" in r.note
        assert r.metrics.max_abs <= 100 * r.estimate + 1e-15


def test_the_estimate_travels_in_json_and_the_table():
    result = CliRunner().invoke(main, ["check", "smooth", "--method", "ridders", "--format", "json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)["configs"][0]["records"]
    assert all(r["method"] == "ridders" and 0 < r["error_estimate"] < 1e-12 for r in records)
    table = CliRunner().invoke(main, ["check", "smooth", "--method", "ridders"])
    assert "layers[0] conv W: Ridders error estimate: ≤" in table.stdout


def test_ridders_catches_a_bug():
    zoo = Path(__file__).resolve().parent / "zoo"
    rep = check(str(zoo / "act_tanh_prime_at_a.yaml"), plugins=True, method="ridders")
    assert rep.return_code == 1 and rep.localisation.startswith("layer 1 (ZooAct)")
