"""The adjoint (dot-product) test: ⟨L u, v⟩ = ⟨u, Lᵀ v⟩ for every layer linear in its input,
exact to rounding for a right backward, O(1) off for a rotated-kernel slip."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from cnngrad import adjoint, formats
from cnngrad.checker import check
from cnngrad.layers import Activation, Conv, Dense, Flatten, Pool
from cnngrad.refs import TensorRef

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "tests" / "zoo"
SCHEMA = json.loads((ROOT / "cnngrad" / "schemas" / "report.schema.json").read_text())


@pytest.mark.parametrize("make, shape", [
    (lambda s, r: Conv(s, r, filters=3, kernel=3, stride=2, padding=1, dilation=2), (2, 11, 11)),
    (lambda s, r: Conv(s, r, filters=2, kernel=[2, 3], mode="convolution", bias="untied"), (3, 6, 7)),
    (lambda s, r: Pool(s, r, kind="avg", size=3, stride=2), (2, 9, 9)),
    (lambda s, r: Flatten(s, r), (2, 3, 3)),
    (lambda s, r: Dense(s, r, units=5), (7,)),
])
def test_built_in_linear_layers_are_adjoint_to_rounding(make, shape):
    rng = np.random.default_rng(0)
    layer = make(shape, rng)
    assert adjoint.is_linear(layer)
    x = rng.standard_normal((3,) + shape)
    result, out = adjoint.check_layer(layer, x, rng, TensorRef.delta(0), layer.kind)
    assert np.array_equal(out, layer.forward(x)[0])  # the next layer's input
    assert result.worst < 1e-14 and not result.failed, result.line()
    # the left side is what it says: ⟨L u, v⟩ computed here independently, by the loop of its definition
    rng2 = np.random.default_rng(5)
    u = rng2.standard_normal(x.shape)
    Lu = layer.forward(u)[0] - layer.forward(np.zeros_like(u))[0]
    v = rng2.standard_normal(Lu.shape)
    lhs = sum(float(Lu.flat[i] * v.flat[i]) for i in range(v.size))
    assert np.isclose(lhs, float(np.vdot(u, layer.backward(v, layer.forward(u)[1])[0])), rtol=1e-12)


@pytest.mark.parametrize("make", [lambda s, r: Pool(s, r, kind="max"), lambda s, r: Activation(s, r, function="relu")])
def test_nonlinear_layers_are_not_tested(make):
    assert not adjoint.is_linear(make((2, 4, 4), np.random.default_rng(0)))


def test_a_rotated_kernel_slip_shows_at_order_one():
    bug = check(str(ZOO / "conv_delta_not_rotated.yaml"), plugins=True)
    (conv,) = [a for a in bug.adjoint if a.kind == "ZooConv"]
    assert conv.rel > 1e-2 and conv.failed and "FAIL" in conv.line()
    twin = check(str(ZOO / "twin_conv_1_1_1.yaml"), plugins=True)
    assert twin.return_code == 0 and all(a.worst < 1e-14 for a in twin.adjoint) and len(twin.adjoint) == 3


def test_a_rotated_weight_gradient_shows_in_its_parameter():
    (conv,) = [a for a in check(str(ZOO / "conv_dw_rotated.yaml"), plugins=True).adjoint if a.kind == "ZooConv"]
    assert conv.rel < 1e-14 and conv.params["W"] > 1e-2 and conv.params["b"] < 1e-14


def test_a_scale_below_the_differences_resolution_is_still_caught():
    rep = check(str(ZOO / "conv_delta_tiny_scale.yaml"), plugins=True)  # 1 + 1e-5: 5e-6 in norm rel
    (conv,) = [a for a in rep.adjoint if a.kind == "ZooConv"]
    assert 1e-7 < conv.rel < 1e-4 and conv.failed


def test_json_reports_one_adjoint_record_per_linear_layer():
    rep = check("lenet")
    data = formats.to_dict([rep])
    jsonschema.validate(data, SCHEMA)
    records = data["configs"][0]["adjoint"]
    assert [r["layer"] for r in records] == [0, 2, 3, 5, 6, 7, 9]  # conv, avg pool, conv, avg pool, flatten, dense ×2
    assert all(r["status"] == "pass" and r["rel"] < 1e-14 for r in records)


def test_a_slip_only_the_dot_product_test_sees_is_located(monkeypatch):
    """δ of the conv off by 1 + 1e-9: far below what the differences resolve at tol 1e-6,
    wrong by construction, caught by the adjoint test alone — which names its layer."""
    original = Conv.backward
    monkeypatch.setattr(Conv, "backward",
                        lambda self, delta, cache: (original(self, delta, cache)[0] * (1 + 1e-9),
                                                    original(self, delta, cache)[1]))
    raw = {"seed": 2, "input": {"batch": 2, "channels": 1, "height": 6, "width": 6},
           "layers": [{"activation": "tanh"}, {"conv": {"filters": 2, "kernel": 3}}, {"activation": "tanh"},
                      {"flatten": {}}, {"dense": {"units": 3}}], "loss": "mse"}
    report = check(raw)
    assert not report.passed
    assert all(not r.failed for r in report.rows)  # the differences saw nothing
    assert report.culprit == 1
    assert report.localisation.startswith("layer 1 (conv): backward is not the adjoint")



def test_a_backward_wrong_only_where_this_network_never_looks_is_still_failed(monkeypatch):
    """Above a nearest upsampling an average pool of its block size hands it a δ constant on
    every 2x2 block, and Σ L_T U_T (an upsampled u) is block-constant too: a backward that
    returns 4x each block's first δ instead of the block's sum agrees with that second probe,
    and with every difference of this network.  It is wrong for every other δ: the random
    first probe, and the second probe's random part, see it."""
    from cnngrad.layers_modern import Upsample

    monkeypatch.setattr(Upsample, "backward", lambda self, delta, cache: (4.0 * delta[:, :, ::2, ::2], {}))
    raw = {"seed": 3, "input": {"batch": 2, "channels": 2, "height": 3, "width": 3},
           "layers": [{"upsample": {"scale": 2}}, {"pool": {"kind": "avg", "size": 2}}, {"flatten": {}},
                      {"dense": {"units": 3}}], "loss": "mse"}
    report = check(raw)
    assert all(r.passed for r in report.rows)  # the differences see nothing: this network's gradient is right
    assert not report.passed and report.culprit == 0
    assert report.localisation.startswith("layer 0 (upsample): backward is not the adjoint")


@pytest.mark.parametrize("cls, entry", [(Conv, 14), (Dense, 5)])
def test_one_entry_slips_near_tol_are_missed_rarely(monkeypatch, cls, entry):
    """δ with one entry off by 1e-8 relative: below what the differences resolve, at the edge
    of what the dot-product test does (its two random probes each dilute a one-entry error).
    Over 100 seeds it passes a handful (6-9 here).  Taking the analytic pass's own δ^l as the
    first probe instead (it saves one backward call a layer) missed 14-15: that δ lies in the
    small subspace the network's few outputs spread back to (a QA pass found it)."""
    original = cls.backward

    def slipped(self, delta, cache):
        d, grads = original(self, delta, cache)
        d = d.copy()
        d.flat[entry] *= 1 + 1e-8
        return d, grads

    monkeypatch.setattr(cls, "backward", slipped)
    missed = sum(check({"seed": seed, "input": {"batch": 2, "channels": 1, "height": 6, "width": 6},
                        "layers": [{"conv": {"filters": 2, "kernel": 3}}, {"activation": "tanh"}, {"flatten": {}},
                                   {"dense": {"units": 3}}], "loss": "mse"}).passed for seed in range(100))
    assert missed <= 11, missed


TINY_WEIGHTS = {"seed": 0, "input": {"batch": 3, "channels": 3, "height": 9, "width": 10}, "init": {"normal": 1e-9},
                "layers": [{"conv": {"filters": 3, "kernel": 3, "bias": "none"}}, {"activation": "tanh"},
                           {"conv": {"filters": 3, "kernel": 3}}, {"activation": "tanh"}, {"flatten": {}},
                           {"dense": {"units": 4}}], "loss": "softmax_cross_entropy"}


def tiny(scale: float) -> dict:
    return {**TINY_WEIGHTS, "init": {"normal": scale}}


@pytest.mark.parametrize("scale", [1e-9, 1e-40, 1e-150, 1e-300])
def test_tiny_weights_under_a_large_bias_are_not_accused(scale):
    """Weights ~1e-9 under biases ~0.2 (init normal 1e-9; biases keep their own init): the
    move ``z(a + u) − z(a)`` is ~1e-8 of z, so computed as that difference it kept rounding's
    error, 1e-10 relative, over the test's tol — every correct linear layer after the first
    was failed (found by a QA pass).  The probe is now lifted until the move is about z's size.
    Weights of 1e-40 (and 1e-150): the move rounds to nothing at all, 0 against ⟨u, Lᵀ v⟩ ~1e-40,
    and every correct layer was failed at rel ~0.1 (a second QA pass): lifted until it shows."""
    rep = check(tiny(scale))
    assert rep.passed and rep.return_code == 0, rep.localisation
    assert len(rep.adjoint) == 4 and all(a.worst < 1e-13 for a in rep.adjoint), [a.line() for a in rep.adjoint]
    rng = np.random.default_rng(3)  # and one dense layer on its own: W ~1e-9, b ~0.2
    dense = Dense((40,), rng, units=6)
    dense.params["W"] *= scale
    dense.params["b"][:] = rng.uniform(0.1, 0.3, dense.params["b"].shape)
    x = rng.standard_normal((4, 40))
    result, _ = adjoint.check_layer(dense, x, rng, TensorRef.delta(0), "dense")
    assert result.worst < 1e-13, result.line()


@pytest.mark.parametrize("scale", [1e-9, 1e-40])
def test_tiny_weights_leave_a_slip_of_one_in_a_billion_caught(monkeypatch, scale):
    """The lifted probe keeps the test's reach where the weights are tiny: the second conv's
    δ (the conv with a bias) off by 1 + 1e-9 fails it, and only it; the differences see nothing."""
    original = Conv.backward

    def slipped(self, delta, cache):
        back, grads = original(self, delta, cache)
        return (back * (1 + 1e-9) if "b" in self.params else back), grads

    monkeypatch.setattr(Conv, "backward", slipped)
    rep = check(tiny(scale))
    assert not rep.passed and rep.return_code == 1
    assert [a.ref.layer for a in rep.adjoint if a.failed] == ["2"], [a.line() for a in rep.adjoint]
    assert all(not r.failed for r in rep.rows)
    assert rep.culprit == 2


@pytest.mark.parametrize("scale", [1e3, 1e6, 1e20, 1e40])
def test_large_weights_are_not_accused(scale):
    """Weights ~1e3 (and 1e6): z ~1e6 and more, while a parameter's move (∂b: U itself) or the
    flatten's (u itself) is ~1 — the same cancellation as under tiny weights (found by a QA
    pass: dense ∂b at 4.3e-10, flatten at 1.7e-11), gone with the lifted probe.  At 1e20 and
    more, W + U and a + u round to W and a: the move is exactly 0 (a second QA pass: ∂W, ∂b
    and the flatten failed at rel ~0.1–1), lifted until it shows."""
    rep = check({"seed": 0, "input": {"batch": 2, "channels": 1, "height": 6, "width": 6},
                 "init": {"normal": scale},
                 "layers": [{"conv": {"filters": 2, "kernel": 3}}, {"flatten": {}}, {"dense": {"units": 3}}],
                 "loss": "mse"})
    assert rep.return_code == 0 and all(a.worst < 1e-13 for a in rep.adjoint), [a.line() for a in rep.adjoint]


@pytest.mark.parametrize("scale", [1e20, 1e40])
def test_large_weights_leave_a_slip_of_one_in_a_billion_caught(monkeypatch, scale):
    """Lifted to the size of W and a, the probe still sees a dense's ∂b off by 1 + 1e-9, and
    its δ off by as much."""
    original = Dense.backward
    monkeypatch.setattr(Dense, "backward", lambda self, delta, cache: (
        lambda r: (r[0] * (1 + 1e-9), {**r[1], "b": r[1]["b"] * (1 + 1e-9)}))(original(self, delta, cache)))
    rep = check({"seed": 0, "input": {"batch": 2, "channels": 1, "height": 6, "width": 6},
                 "init": {"normal": scale},
                 "layers": [{"conv": {"filters": 2, "kernel": 3}}, {"flatten": {}}, {"dense": {"units": 3}}],
                 "loss": "mse"})
    bad = [a for a in rep.adjoint if a.failed]
    assert [a.ref.layer for a in bad] == ["2"] and bad[0].finite, [a.line() for a in rep.adjoint]
    assert bad[0].rel > adjoint.TOL and bad[0].params["b"] > adjoint.TOL and bad[0].params["W"] < 1e-13, bad[0].line()


def test_a_move_below_the_outputs_rounding_cannot_be_taken_and_blames_no_one():
    """A flatten whose input is ~1e300: only a probe lifted near 2^1000 moves it (a + u is a
    below that).  Never a "backward is not the adjoint" of a correct layer (a second QA pass,
    init normal 1e150): the test passes (its second probe scaled to about 1, ⟨L u, w⟩ no
    longer overflows) — or, where it cannot be taken, NaN, a failure that names no layer."""
    layer = Flatten((2, 3, 3), np.random.default_rng(0))
    for scale in (1e300, 1e307):
        x = np.random.default_rng(1).standard_normal((2, 2, 3, 3)) * scale
        result, _ = adjoint.check_layer(layer, x, np.random.default_rng(2), TensorRef.delta(0), "flatten")
        assert not (result.failed and result.finite), result.line()
        if result.failed:
            assert "cannot be taken" in result.line() and adjoint.localise([result]) == (None, "")
    assert not adjoint.check_layer(layer, np.ones((2, 2, 3, 3)) * 1e300, np.random.default_rng(2),
                                   TensorRef.delta(0), "flatten")[0].failed


@pytest.mark.parametrize("cls, bug", [("ExpScale", None), ("ExpScale", "delta"), ("SoftClip", None)])
def test_a_declared_linearity_is_shown_before_it_is_tested(tmp_path, cls, bug):
    """A QA pass: z = a·e^s is linear in a (declared) but not in s, and its right backward was
    failed at ∂s 6.6e-02; tanh declared linear was failed as "backward is not the adjoint".
    A user's layer is now shown linear in each tensor first: s is left out (said so), the false
    declaration gets a note and no test — while a 1 + 1e-9 slip in δ is still caught there."""
    from oracles import plugin_config

    rep = check(plugin_config(tmp_path, "linear_decl", f"class: \"linear_decl:{cls}\", bug: {bug or 'null'}",
                              before=("conv: {filters: 3, kernel: 3}",), after=("flatten: {}", "dense: {units: 4}")),
                plugins=True)
    tests = {a.ref.layer: a for a in rep.adjoint}
    if cls == "SoftClip":
        assert "1" not in tests and rep.passed, [a.line() for a in rep.adjoint]
        assert any(n.startswith("layers[1] SoftClip declares linear = True, but") for n in rep.fallbacks)
        return
    assert tests["1"].untested == ["s"] and "∂s not tested" in tests["1"].line()
    assert tests["1"].failed is (bug == "delta"), tests["1"].line()
    assert rep.return_code == (1 if bug else 0) and all(not r.failed for r in rep.rows)


HUGE = {"seed": 0, "input": {"batch": 2, "channels": 1, "height": 6, "width": 6}, "init": {"normal": 1e153},
        "layers": [{"conv": {"filters": 2, "kernel": 3}}, {"activation": "sigmoid"}, {"flatten": {}},
                   {"dense": {"units": 3}}], "loss": "softmax_cross_entropy"}


def test_weights_of_1e153_are_tested_where_nothing_overflows():
    """z ~1e154 and every number of the check finite (a sigmoid between): the second probe's
    ⟨L u, Σ L u⟩ ~‖z‖² overflowed and both linear layers "cannot be taken", failing the config
    (a QA pass).  That probe is scaled to about 1 by a power of two (exact: any w serves)."""
    rep = check(HUGE)
    assert rep.return_code == 0 and all(a.worst < 1e-13 for a in rep.adjoint), [a.line() for a in rep.adjoint]


def test_weights_of_1e153_leave_a_slip_of_one_in_a_billion_caught(monkeypatch):
    original = Dense.backward
    monkeypatch.setattr(Dense, "backward", lambda self, delta, cache: (
        lambda r: (r[0] * (1 + 1e-9), r[1]))(original(self, delta, cache)))
    bad = [a for a in check(HUGE).adjoint if a.failed]
    assert [a.ref.layer for a in bad] == ["3"] and bad[0].finite and bad[0].rel > adjoint.TOL, [a.line() for a in bad]


def test_the_error_is_the_formula_at_every_scale():
    """``adjoint._error``, at once where the products of norms are ordinary numbers and in logs
    where they would overflow or underflow, against |lhs − rhs| / (‖Lu‖·‖w‖ + ‖u‖·‖Lᵀw‖) in
    exact rational arithmetic (``fractions``)."""
    from fractions import Fraction

    from cnngrad.adjoint import _error

    rng = np.random.default_rng(8)
    for _ in range(3000):
        sizes = tuple(float(rng.uniform(0.5, 2) * 10.0 ** rng.integers(-200, 200)) for _ in range(4))
        if rng.random() < 0.1:
            sizes = (0.0, sizes[1], sizes[2], sizes[3])
        scale = max(sizes[0] * sizes[1], sizes[2] * sizes[3])  # may overflow to inf: then lhs ~1e300
        lhs = float(rng.uniform(0.5, 1) * rng.choice([-1, 1]) * min(max(scale, 1e-290), 1e300))  # no subnormal
        rhs = lhs * (1 + float(rng.uniform(-1, 1)) * 10.0 ** float(rng.integers(-16, 0)))
        exact = abs(Fraction(lhs) - Fraction(rhs)) / (Fraction(sizes[0]) * Fraction(sizes[1])
                                                      + Fraction(sizes[2]) * Fraction(sizes[3]))
        got = _error(lhs, rhs, sizes)
        assert abs(got - float(exact)) <= 1e-12 * float(exact) + 1e-300, (lhs, rhs, sizes, got, float(exact))
    assert np.isnan(_error(float("inf"), 1.0, (1.0, 1.0, 1.0, 1.0)))


def test_a_norm_is_finite_exactly_where_every_entry_is():
    """``adjoint._norm`` stands for an ``isfinite`` pass over a move (``_lifted``): not finite
    for an inf or a NaN anywhere, finite (and right) for entries whose squares overflow or
    underflow."""
    from cnngrad.adjoint import _norm

    rng = np.random.default_rng(3)
    for scale in (1e-300, 1e-160, 1.0, 1e160, 1e300):
        x = rng.uniform(-1, 1, (3, 5, 7)) * scale
        assert np.isfinite(_norm(x)) and np.isclose(_norm(x), np.linalg.norm(x / scale) * scale, rtol=1e-12)
        for bad in (np.inf, -np.inf, np.nan):
            y = x.copy()
            y[1, 2, 3] = bad
            assert not np.isfinite(_norm(y)), (scale, bad)
