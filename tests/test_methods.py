"""The difference methods, the step sweep, the convergence verdict and float32 done right."""
from __future__ import annotations

import numpy as np
import pytest
import test_broken as broken
from click.testing import CliRunner
from hypothesis import given, settings

from cnngrad import check
from cnngrad import config as cfg
from cnngrad.cli import main
from cnngrad.compare import metrics
from cnngrad.config import validate
from cnngrad.finite_diff import METHODS, FiniteDifferences
from cnngrad.network import build
from cnngrad.refs import TensorRef
from cnngrad.strategies import configs
from cnngrad.sweep import sweep

# how close each method gets, with its default step, on a smooth float64 problem
ACCURACY = {"central": 1e-7, "forward": 1e-5, "richardson": 1e-9, "ridders": 1e-11, "complex": 1e-13}


def test_methods_are_the_configs_methods():
    assert tuple(METHODS) == cfg.FD_METHODS
    for m in METHODS.values():
        assert set(m.default_eps) == set(m.default_tol) == {"float64", "float32"}


def dense_problem(seed: int = 0):
    """One dense layer with MSE: C = 1/(2N) Σ‖W a + b − y‖², whose gradient is known in
    closed form: ∂C/∂W = (1/N) (z − y)ᵀ a, ∂C/∂b = (1/N) Σ (z − y), ∂C/∂a = (1/N) (z − y) W."""
    raw = {"seed": seed, "input": {"batch": 3, "channels": 2, "height": 2, "width": 2},
           "layers": [{"flatten": {}}, {"dense": {"units": 4}}, {"activation": "softplus"}], "loss": "mse"}
    return build(validate(raw))


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_on_a_closed_form_gradient(method):
    p = dense_problem()
    W, b = p.net.layers[1].params["W"], p.net.layers[1].params["b"]
    a = p.x.reshape(3, -1)
    z = a @ W.T + b
    sig = 1 / (1 + np.exp(-z))
    r = (np.logaddexp(0, z) - p.y) * sig / 3  # ∂C/∂z: softplus' = sigmoid
    exact = {("input",): (r @ W).reshape(p.x.shape), (1, "W"): r.T @ a, (1, "b"): r.sum(0)}
    m = METHODS[method]
    fd = FiniteDifferences(p.net, p.x, p.y, m.default_eps["float64"], method)
    got = fd.numeric([(TensorRef.delta(0), np.arange(p.x.size)), (TensorRef.param(1, "W"), np.arange(W.size)),
                      (TensorRef.param(1, "b"), np.arange(b.size))])
    for (key, want), num in zip(exact.items(), got):
        assert metrics(want.ravel(), num.values).norm_rel < ACCURACY[method], (method, key)


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_on_an_elementwise_closed_form(method):
    """C = 1/(2N) Σ (tanh(x) − y)² through one activation layer: ∂C/∂x = (tanh x − y)(1 − tanh² x)/N."""
    raw = {"seed": 2, "input": {"batch": 2, "channels": 1, "height": 3, "width": 3},
           "layers": [{"activation": "tanh"}], "loss": "mse"}
    p = build(validate(raw))
    t = np.tanh(p.x)
    want = (t - p.y) * (1 - t * t) / 2
    fd = FiniteDifferences(p.net, p.x, p.y, METHODS[method].default_eps["float64"], method)
    assert metrics(want.ravel(), fd.input(np.arange(p.x.size)).values).norm_rel < ACCURACY[method]


SMOOTH = dict(activations=("sigmoid", "tanh", "softplus", "identity"), max_layers=3, max_size=7, max_batch=2)


@settings(max_examples=15)
@given(configs(**SMOOTH))
def test_every_method_passes_random_smooth_networks(raw):
    config = validate(raw)
    for method in METHODS:
        report = check(config, method=method)
        # a max pool's tie with a padded border can lie within Ridders' widest steps: such a row
        # compares nothing and fails for that (it says so) — every row that compared passes
        compared = [r for r in report.rows if r.checked > 0 or r.kinks == 0]
        # or UNRESOLVED at the backward's own rounding: a saturated softmax (loss 6e-9) leaves
        # gradients of 1e-8 whose rounding, 3e-16, is 4e-9 of them — over the complex step's tol
        assert all(r.passed or r.unresolved and "the backward's own rounding" in r.reason for r in compared) \
            and report.passed and not report.faults and not report.structural, (
                method, [(r.layer, r.tensor, r.metrics.norm_rel, r.note, r.reason) for r in report.rows])
        assert all(r.kinks > 0 and "crossed a kink" in r.reason for r in report.rows if r not in compared)
    exact = check(config, method="complex")
    # max pooling is smooth almost everywhere too: no kink lies within an imaginary step.  The
    # complex step is exact; what is left is the backward's own rounding: ~1e-16 of the loss's
    # terms (p − y ≤ 1 for softmax), which in a gradient of 3e-6 is 2e-11 relative (found here)
    assert all(r.metrics.norm_rel < 1e-12 or r.metrics.max_abs < 1e-15 for r in exact.rows), [
        (str(r.ref), r.metrics.norm_rel, r.metrics.max_abs) for r in exact.rows]


def test_smooth_config_figures():
    """The issue's yardsticks on the shipped smooth net: complex ≤ 1e-13 on every tensor;
    richardson ~1e-11 (the input δ, tiny beside the loss, sets the floor); central ~1e-9."""
    worst = {m: max(r.metrics.norm_rel for r in check("smooth", method=m).rows) for m in METHODS}
    assert worst["complex"] <= 1e-13
    assert worst["richardson"] <= 3e-11
    assert worst["ridders"] <= 1e-12  # issue 12: the tableau's extrapolation, from h = 0.6 down
    assert worst["central"] <= 1e-7
    assert worst["complex"] < worst["ridders"] < worst["richardson"] < worst["central"] < worst["forward"]


def test_config_eps_is_for_the_configs_own_method():
    """lenet.yaml says eps 1e-6 for central; another method uses its own step."""
    assert check("seed", samples=5).eps == 1e-6
    assert check("seed", method="complex", samples=5).eps == METHODS["complex"].default_eps["float64"]
    assert check("seed", method="richardson", samples=5, eps=2e-3).eps == 2e-3


# --------------------------------------------------------------------------- directional


def test_directional_mode_passes_correct_code_with_few_passes():
    report = check("lenet", directions=4)
    assert report.passed
    assert all(r.mode == "directions" and r.checked == 4 for r in report.rows)
    assert report.numeric["layers.7.W"].size and np.all(np.isnan(report.numeric["layers.7.W"]))  # no entries


def test_random_directions_are_unit_rows_and_miss_as_the_readme_says():
    """``finite_diff.directions``: K unit rows, the same for the same seed; and a wrong gradient
    whose error is r = 20 times tol passes one of them with probability (2/π)·atan(1/r) ≈ 3.2%
    (README, *Directions are a sample*) — here over 4,000 draws of a fixed seed, each judged as
    the check judges a direction (norm rel of the two projections against tol)."""
    from cnngrad.finite_diff import directions

    V = directions(np.random.default_rng(4), 4000, 300)
    assert V.shape == (4000, 300) and np.allclose(np.linalg.norm(V, axis=1), 1.0)
    assert np.array_equal(V, directions(np.random.default_rng(4), 4000, 300))
    rng = np.random.default_rng(5)
    g, e, tol, r = rng.standard_normal(300), rng.standard_normal(300), 1e-6, 20.0
    e *= 2 * r * tol * np.linalg.norm(g) / np.linalg.norm(e)  # norm rel of g + e against g: r·tol
    a, n = V @ (g + e), V @ g
    missed = float(np.mean(np.abs(a - n) / (np.abs(a) + np.abs(n)) <= tol))
    assert abs(missed - 2 / np.pi * np.arctan(1 / r)) < 0.01, missed


def test_directional_values_are_v_dot_gradient():
    p = build(cfg.load("strided"))
    _, dx, grads = p.net.gradients(p.x, p.y)
    fd = FiniteDifferences(p.net, p.x, p.y, 1e-6)
    V = np.random.default_rng(0).standard_normal((3, grads[2]["W"].size))
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    num, kinks = fd.directional(TensorRef.param(2, "W"), V)
    np.testing.assert_allclose(num, V @ grads[2]["W"].ravel(), rtol=1e-7, atol=1e-10)
    U = np.random.default_rng(1).standard_normal((2, dx.size))
    num, _ = fd.directional(TensorRef.delta(0), U)
    np.testing.assert_allclose(num, U @ dx.ravel(), rtol=1e-7, atol=1e-10)


# --------------------------------------------------------------------------- convergence, confirmation


def test_convergence_columns_and_truncation_verdict():
    result = CliRunner().invoke(main, ["check", "seed", "--convergence"])
    assert result.exit_code == 0 and "at h/2" in result.stdout and "ratio" in result.stdout
    # a step far too large: central differences fail, halving h shows truncation error,
    # and the complex step shows the gradient right — so the check passes, and says why
    result = CliRunner().invoke(main, ["check", "seed", "--eps", "0.3"])
    assert result.exit_code == 0, result.output
    assert "truncation error, not a bug" in result.stdout and "falls 4.0x" in result.stdout
    assert "the complex step, free of rounding, agrees" in result.stdout


def test_rounding_bound_failure_is_rescued_by_the_complex_step():
    """Tiny input gradients beside a large MSE loss: central differences at 1e-6 sit at
    their rounding floor above tol; the complex step shows the gradient right."""
    raw = {"seed": 7, "input": {"batch": 1, "channels": 1, "height": 3, "width": 7},
           "layers": [{"conv": {"filters": 1, "kernel": 1}}, {"conv": {"filters": 1, "kernel": 1, "padding": [1, 0]}}],
           "loss": "mse"}
    report = check(validate(raw))
    assert report.passed
    row = report.rows[0]
    assert "grows as h shrinks" in row.note and "the complex step, free of rounding, agrees" in row.note
    assert row.metrics.norm_rel < 1e-12


# --------------------------------------------------------------------------- sweep


def test_sweep_draws_a_v_and_names_the_best_step(tmp_path):
    result = sweep(cfg.load("seed"))
    for row in result.errors:
        low = np.nanmin(row)
        assert row[0] > 100 * low and row[-1] > 100 * low  # truncation on the left, rounding on the right
    assert 1e-7 <= result.best() <= 1e-3
    out = CliRunner().invoke(main, ["sweep", "seed", "--plot", str(tmp_path / "v.png")])
    assert out.exit_code == 0, out.output
    assert f"best step for every tensor at once: {result.best():.0e}" in out.stdout
    assert (tmp_path / "v.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert CliRunner().invoke(main, ["sweep", "seed", "--plot", str(tmp_path / "v.svg")]).exit_code == 0
    assert (tmp_path / "v.svg").read_text().lstrip().startswith("<?xml")
    bad = CliRunner().invoke(main, ["sweep", "seed", "--plot", str(tmp_path / "v.gif")])
    assert bad.exit_code == 2


def test_sweep_of_a_wrong_gradient_is_flat(monkeypatch):
    from cnngrad.layers import Activation

    monkeypatch.setattr(Activation, "backward", lambda self, delta, cache: (delta, {}))
    result = sweep(cfg.load("seed"), samples=20)
    first_w = result.labels.index("0 conv W")
    row = result.errors[first_w]
    assert np.nanmax(row[:-3]) / np.nanmin(row[:-3]) < 10  # no V: the error is the bug, not the step
    assert np.nanmin(row) > 1e-2


def test_sweep_of_a_gradient_zero_in_truth_is_unresolved_not_wrong(monkeypatch):
    """A QA pass: `cnngrad sweep bn-train` exited 1 calling the conv bias before the train-mode
    batch norm "flat: the gradient is wrong" — its gradient is 0 in truth (torch gives exactly 0),
    and `cnngrad check` says UNRESOLVED.  The sweep now says so too, exit 0; a bias gradient made
    non-zero there is still flat."""
    result = CliRunner().invoke(main, ["sweep", "bn-train"])
    assert result.exit_code == 0, result.output
    assert "0 conv b: unresolved: both sides ~0" in result.stdout and "flat" not in result.stdout
    from cnngrad.layers import Conv

    original = Conv.backward
    monkeypatch.setattr(Conv, "backward", lambda self, d, c: (lambda r: (r[0], {**r[1], "b": r[1]["b"] + 0.5}))(
        original(self, d, c)))
    wrong = sweep(cfg.load("bn-train"))
    assert wrong.verdicts()[wrong.labels.index("0 conv b")] == "flat"


def test_sweep_does_not_excuse_a_small_wrong_gradient_at_a_tiny_step(tmp_path):
    """A second QA pass: a doubled ∂s of ~6e-4 (the layer after a 0.001 scale) was called
    unresolved — at h = 1e-12 the resolution 10·ε·S/h is ~4e-3 and covers it — and the sweep
    exited 0 while `cnngrad check` fails it.  Only the step a check would take may excuse a
    tensor as ~0: the sweep says flat, exit 1."""
    import shutil
    from pathlib import Path

    shutil.copy(Path(__file__).parent / "plugins" / "complex_layers.py", tmp_path / "complex_layers.py")
    path = tmp_path / "small.yaml"
    path.write_text("seed: 0\ninput: {batch: 2, channels: 2, height: 4, width: 4}\nlayers:\n"
                    "  - conv: {filters: 2, kernel: 3}\n  - activation: tanh\n"
                    "  - custom: {class: \"complex_layers:Scale\", init: 0.001}\n"
                    "  - custom: {class: \"complex_layers:Scale\", bug: double}\n"
                    "  - flatten: {}\n  - dense: {units: 3}\nloss: softmax_cross_entropy\n")
    assert check(str(path), plugins=True).return_code == 1
    result = CliRunner().invoke(main, ["sweep", str(path), "--plugins"])
    assert result.exit_code == 1 and "3 Scale s: flat: the gradient is wrong" in result.stdout, result.output


# --------------------------------------------------------------------------- float32


@pytest.mark.parametrize("fd_dtype", ["float64", "native"])
def test_float32_config_has_no_false_failures_over_100_seeds(fd_dtype):
    config = cfg.load("float32")
    failed = []
    for seed in range(100):
        config.seed = seed
        report = check(config, fd_dtype=fd_dtype)
        if not report.passed:
            failed.append((seed, [(r.layer, r.tensor, r.metrics.norm_rel) for r in report.failures]))
    assert failed == []


def test_float32_numeric_side_is_float64_by_default_and_says_so():
    report = check("float32")
    assert report.fd_dtype == "float64" and report.tol == 1e-4 and report.eps == 1e-6
    result = CliRunner().invoke(main, ["check", "float32"])
    assert "float32 (numeric in float64)" in result.stdout
    native = check("float32", fd_dtype="native")
    assert native.fd_dtype == "float32" and native.eps == 1e-2 and native.tol == 1e-2


@pytest.mark.parametrize("name, eps", [("smooth", 1e-4), ("lenet", 1e-2), ("maxpool", 1.0), ("float32", 1.0)])
def test_a_complex_step_at_a_users_large_step_gets_the_second_look(name, eps):
    """--method complex --eps 1e-4: the complex step's truncation, O(h²), is over its tol of 1e-9;
    every other method's failures get a second look and pass, the complex step's went straight
    to the localisation, which blamed a right layer (a QA pass).  Now the complex step at its
    own step (1e-20) looks again, as for the others."""
    rep = check(name, method="complex", eps=eps)
    assert rep.passed and rep.return_code == 0, rep.localisation
    assert check(name, method="complex").passed  # the numbers at its own step: the backward is right


def test_a_wrong_backward_still_fails_the_complex_step_at_a_large_step(monkeypatch):
    broken._no_sigma_prime(monkeypatch)
    rep = check("smooth", method="complex", eps=1e-4)
    assert rep.return_code == 1 and rep.localisation.startswith("layer"), rep.localisation
    assert any("the complex step confirms it" in r.note for r in rep.rows if r.failed)


@pytest.mark.parametrize("method", ["central", "richardson"])
def test_directions_of_a_linear_layers_parameters_are_a_plain_loop_of_the_whole_network(method):
    """Along a direction of a conv's or a dense layer's W or b the engine runs one pass of the
    layer a direction and takes the other steps' outputs from it (z is affine in the
    parameter): the quotient must be the method's formula over real passes of the whole
    network written out here — C at θ + o·h·v for each offset o — and v·∂C/∂θ."""
    from cnngrad.finite_diff.methods import get_method

    p = build(cfg.validate({
        "name": "affine", "seed": 2, "input": {"batch": 3, "channels": 2, "height": 9, "width": 9},
        "layers": [{"conv": {"filters": 3, "kernel": 3}}, {"activation": "relu"},
                   {"pool": {"kind": "max", "size": 2}}, {"conv": {"filters": 4, "kernel": 2, "bias": "untied"}},
                   {"activation": "tanh"}, {"flatten": {}}, {"dense": {"units": 5}}],
        "loss": "softmax_cross_entropy"}))
    net, x, y = p.net, p.x, p.y
    _, _, grads = net.gradients(x, y)
    h = 1e-5
    fd = FiniteDifferences(net, x, y, h, method)
    offsets = np.asarray(get_method(method).offsets).real
    rng = np.random.default_rng(3)
    for l, layer in enumerate(net.layers):
        for name, P in layer.params.items():
            V = rng.uniform(-1, 1, (2, P.size))
            V /= np.linalg.norm(V, axis=1, keepdims=True)
            along, kinks = fd.directional(TensorRef.param(l, name), V)
            assert not kinks.any()
            for k, v in enumerate(V):
                costs = []
                for o in offsets:
                    layer.params[name] = P + o * h * v.reshape(P.shape)
                    costs.append(net.cost(net.forward(x)[0], y))
                layer.params[name] = P
                central2 = (costs[0] - costs[1]) / (2 * h)
                want = central2 if method == "central" else (4 * (costs[2] - costs[3]) / h - central2) / 3
                assert abs(along[k] - want) <= 1e-7 * abs(want) + 1e-9, (l, name, along[k], want)
                assert abs(along[k] - v @ grads[l][name].ravel()) <= 1e-6 * np.linalg.norm(grads[l][name]), (l, name)


def test_native_directions_of_a_linear_layers_parameters_stay_in_the_nets_float(monkeypatch):
    """``--fd-dtype native`` runs the differences in the network's own float: along a direction
    of a conv's or a dense layer's W or b, the steps' outputs taken from one pass (z affine in
    the parameter) stay float32 too — a float64 ratio of the steps promoted them (a QA pass),
    and the rest of the network ran in float64 for those rows."""
    from cnngrad.layers import Activation

    p = build(cfg.load("float32"))
    net, x, y = p.net, p.x, p.y
    fd = FiniteDifferences(net, x, y, 1e-2)  # the net's float: float32
    seen = []
    real = Activation.forward

    def forward(self, a):
        seen.append(a.dtype)
        return real(self, a)

    monkeypatch.setattr(Activation, "forward", forward)
    rng = np.random.default_rng(0)
    for l, layer in enumerate(net.layers):
        for name, P in layer.params.items():
            fd.directional(TensorRef.param(l, name), rng.uniform(-1, 1, (1, P.size)))
    assert seen and set(seen) == {np.dtype(np.float32)}, set(seen)
