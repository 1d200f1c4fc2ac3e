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
    # seed 3's input δ: 9.2e-13 on a Haswell, 1.003e-12 on an AVX-512 EPYC (numpy's tanh and exp
    # kernels round differently by CPU); above 1.5e-12 the tableau would have lost a digit
    assert worst <= 1.5e-12, [(r.ref.label, r.metrics.norm_rel) for r in rep.rows]
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


# --------------------------------------------------------------------------- a layer C¹ only


def _signed_square(tmp_path, bug):
    from oracles import plugin_config

    return plugin_config(tmp_path, "c1_layers", f"class: \"c1_layers:SignedSquare\", bug: {bug or 'null'}",
                         shape="{batch: 2, channels: 2, height: 6, width: 6}", seed=3,
                         before=("conv: {filters: 3, kernel: 3, padding: 1}",),
                         after=("conv: {filters: 2, kernel: 3}", "flatten: {}", "dense: {units: 3}"))


def test_the_c1_layer_is_what_it_says():
    """The plugin's backward against the test's own central differences of y = a·|a| (no unit
    within 1e-4 of 0: C² there), and the layer is no kink: y' is continuous at 0."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("c1_layers", Path(__file__).parent / "plugins" / "c1_layers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    layer = mod.SignedSquare((4,), None)
    a = np.array([[-1.3, -0.2, 0.4, 2.0]])
    delta = np.array([[0.7, -1.1, 0.5, 2.0]])
    h = 1e-6
    numeric = np.array([(np.vdot(delta, layer.forward(a + h * e)[0]) - np.vdot(delta, layer.forward(a - h * e)[0]))
                        / (2 * h) for e in np.eye(4)[:, None, :]])
    np.testing.assert_allclose(layer.backward(delta, layer.forward(a)[1])[0].ravel(), numeric, rtol=1e-8)


@pytest.mark.parametrize("scope", ["network", "layer"])
@pytest.mark.parametrize("method", ["richardson", "ridders"])
def test_a_layer_only_c1_is_not_failed_by_large_steps(tmp_path, method, scope):
    """y = a·|a| under Richardson (h 5e-3) and Ridders (h up to 0.6), no complex step: their
    steps straddle 0 and failed the right backward ("layer 1: backward is wrong"); central
    differences at their own step pass it, and the rows say so.  Its twin 1e-3 off still fails."""
    right = check(_signed_square(tmp_path, None), method=method, scope=scope, plugins=True)
    assert right.passed, [(str(r.ref), r.note) for r in right.rows if not r.passed]
    rescued = [r for r in right.rows if "central differences at their own step 1e-06 agree" in r.note]
    assert rescued and all(f"{method} differences at step" in r.note for r in rescued)
    assert right.localisation is None or "SignedSquare" not in str(right.localisation)
    wrong = check(_signed_square(tmp_path, "gain"), method=method, scope=scope, plugins=True)
    assert not wrong.passed
    failing = [r for r in wrong.rows if r.failed]
    assert any(r.ref.index == 1 and r.ref.is_delta for r in failing)
    assert all("own step 1e-06 fail too" in r.note for r in failing if r.mode == "entries" and r.confirmed is None)


@pytest.mark.parametrize("ratio, said", [(3.5, "falls 3.5x as h halves, less than order 4"), (1.0, "does not shrink"),
                                         (16.0, "truncation error, not a bug")])
def test_what_halving_h_is_said_to_mean(ratio, said):
    """An order-4 error that fell 3.5x as h halved shrank: it was not "does not shrink with h —
    the analytic gradient is wrong" (a C¹ layer under Richardson); one that stayed put was."""
    from cnngrad.compare import judge
    from cnngrad.refs import TensorRef

    analytic = np.array([1.0, -2.0, 3.0])
    c = judge(TensorRef.delta(0), "conv", (3,), np.arange(3), analytic, analytic * (1 + 1e-3), np.zeros(3, bool), 1e-6)
    c.norm_rel_half = c.metrics.norm_rel / ratio
    text = c.convergence(4, "richardson")
    assert said in text and ("gradient is wrong" in text) == (ratio == 1.0), text


@pytest.mark.parametrize("eps", [1e-9, 1e-2])
def test_central_differences_at_another_step_get_the_look_at_their_own(tmp_path, eps):
    """A right tanh the complex step cannot reach (it drops the imaginary part), at --eps 1e-9:
    rounding (ε·C/h ~ 1e-7) failed it (a QA pass: "layer 1: backward is wrong" under "rounding
    error dominates"); at --eps 1e-2: truncation.  Central differences at 1e-6 pass it; its twin
    1e-3 off still fails."""
    from oracles import plugin_config

    def config(bug):
        return plugin_config(tmp_path, "real_tanh", f"class: \"real_tanh:RealTanh\", bug: {bug or 'null'}",
                             shape="{batch: 2, channels: 2, height: 4, width: 4}",
                             before=("conv: {filters: 3, kernel: 3, padding: 1}",),
                             after=("global_pool: {kind: avg}", "dense: {units: 3}"))

    right = check(config(None), eps=eps, plugins=True)
    assert right.passed, [(str(r.ref), r.note) for r in right.rows if not r.passed]
    assert any("own step 1e-06 agree" in r.note for r in right.rows)
    assert not check(config("gain"), eps=eps, plugins=True).passed
