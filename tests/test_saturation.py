"""A saturated sigmoid or tanh: cnngrad's own backward keeps its digits, so a correct
network is not accused.

Found by the README's property example (seed 51): a sigmoid output at z ≈ −32 made every
tensor of a correct network FAIL by the same 7.9e-4, because σ' was taken from the output
as ``a(1 − a)`` from a = (1 + tanh(z/2))/2 ≈ 1e-14, of which the sum 1 + tanh keeps three digits.  The
complex step resolved the true gradient and disagreed with it.  σ' is now taken from z in
a form that keeps every digit (``layers._sigmoid_prime``, ``layers._tanh_prime``).

Oracles of the test's own: closed forms evaluated in ``np.longdouble``; the complex step
written here on the sigmoid alone.
"""
from __future__ import annotations

import numpy as np
import pytest

from cnngrad import check
from cnngrad import config as cfg
from cnngrad import layers as L
from cnngrad.network import build

Z = np.linspace(-60.0, 60.0, 4001)

# the config the property example drew: max pool → concat block (a nested add block) →
# add block → flatten → dense(1) → sigmoid, whose z lands near −32
SATURATED = {
    "name": "saturated", "seed": 51, "dtype": "float64",
    "input": {"batch": 1, "channels": 1, "height": 4, "width": 2},
    "init": {"normal": 0.75},
    "layers": [
        {"pool": {"kind": "max", "size": [1, 2], "stride": [1, 1]}},
        {"block": {"merge": "concat", "paths": [
            [{"conv": {"filters": 3, "kernel": 1, "padding": 0, "bias": "tied"}}],
            [],
            [{"block": {"merge": "add", "paths": [
                [{"conv": {"filters": 1, "kernel": 1, "padding": 0, "bias": "tied"}}],
                [{"conv": {"filters": 1, "kernel": 3, "padding": 1, "bias": "tied"}}],
                [{"conv": {"filters": 1, "kernel": 1, "padding": 0, "bias": "tied"}},
                 {"conv": {"filters": 1, "kernel": 1, "padding": 0, "bias": "tied"}}]]}},
             {"conv": {"filters": 1, "kernel": 1, "padding": 0, "bias": "untied"}}]]}},
        {"block": {"merge": "add", "paths": [
            [{"conv": {"filters": 5, "kernel": 1, "padding": 0, "bias": "tied"}},
             {"conv": {"filters": 5, "kernel": 1, "padding": 0, "bias": "tied"}}],
            []]}},
        {"flatten": {}},
        {"dense": {"units": 1, "bias": False}},
        {"activation": {"sigmoid": None}},
    ],
    "loss": "mse",
}


def rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got.astype(np.longdouble) - want) / np.abs(want)))


def test_sigmoid_and_its_derivative_keep_every_digit_at_saturation() -> None:
    z = Z.astype(np.longdouble)
    sigma = np.where(z >= 0, 1 / (1 + np.exp(-z)), np.exp(z) / (1 + np.exp(z)))
    assert rel(L._sigmoid(Z), sigma) < 1e-15
    assert rel(L._sigmoid_prime(Z), np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))) ** 2) < 1e-15
    sech2 = 1 / np.cosh(z) ** 2
    assert rel(L._tanh_prime(Z), sech2) < 1e-15


def test_the_old_form_from_the_output_did_lose_them() -> None:
    """The test above can fail: ``a(1 − a)`` at z = 30 is off by ~1e-3 relative."""
    z = np.array([30.0])
    a = L._sigmoid(z)
    exact = np.exp(np.longdouble(-30.0)) / (1 + np.exp(np.longdouble(-30.0))) ** 2
    assert rel(a * (1 - a), np.array([exact])) > 1e-5


def test_derivatives_match_the_complex_step_of_the_forward() -> None:
    """The complex step on σ and tanh themselves (complex-safe forwards): Im σ(z + ih)/h."""
    h = 1e-30
    assert np.max(np.abs(np.imag(L._sigmoid(Z + 1j * h)) / h / L._sigmoid_prime(Z) - 1)) < 1e-14
    assert np.max(np.abs(np.imag(np.tanh(Z + 1j * h)) / h / L._tanh_prime(Z) - 1)) < 1e-14


def test_the_backward_of_the_last_layer_matches_the_closed_form() -> None:
    """δ of the saturated sigmoid = (a − y)·σ'(z) (MSE, N = 1), computed here in longdouble."""
    problem = build(cfg.validate(SATURATED))
    net, x, y = problem.net, problem.x, problem.y
    a = x
    for layer in net.layers[:-1]:
        a, _ = layer.forward(a)
    z = a.astype(np.longdouble)
    assert float(np.abs(z).min()) > 25.0  # the case is saturated, as drawn (z ≈ −32)
    _, deltas, _, _ = net.trace(x, y)
    e = np.exp(-np.abs(z))
    sigma = np.where(z >= 0, 1 / (1 + e), e / (1 + e))
    want = (sigma - y.astype(np.longdouble)) * e / (1 + e) ** 2
    assert rel(deltas[-1], want) < 1e-13


def test_the_saturated_network_passes() -> None:
    report = check(cfg.validate(SATURATED))
    assert report.passed, str(report)
    assert max(r.metrics.norm_rel for r in report.rows) < 1e-12


@pytest.mark.parametrize("factor", [1 + 1e-5, 1 - 1e-4])
def test_a_slightly_wrong_sigma_prime_still_fails_there(monkeypatch, factor: float) -> None:
    """Below the resolution of central differences, the complex step still judges: a σ'
    off by 1e-5 is caught, not passed nor left unresolved."""
    original = L.Activation.backward
    monkeypatch.setattr(L.Activation, "backward",
                        lambda self, delta, cache: (original(self, delta, cache)[0] * factor, {}))
    report = check(cfg.validate(SATURATED))
    assert not report.passed
    assert any(r.failed for r in report.rows)


# float64, a softmax saturated to a loss of 6.5e-12 (found by a sweep of random configs of every
# kind, sizes up to 16, seed 71 config 733): p − y loses ε of 1 to rounding, 3e-5 of itself
SATURATED_SOFTMAX_64 = {
    "name": "saturated-softmax-64", "seed": 3329651487, "init": {"normal": 0.9561035123484358},
    "input": {"batch": 1, "channels": 1, "height": 15, "width": 9},
    "layers": [{"batchnorm": {}},
               {"block": {"merge": "add", "paths": [[
                   {"conv": {"filters": 3, "kernel": 3, "padding": 1, "bias": "none"}},
                   {"conv": {"filters": 3, "kernel": 3, "padding": 1, "bias": "untied"}}]]}},
               "flatten", {"dense": {"units": 3, "bias": False}}, {"activation": "identity"}],
    "loss": "softmax_cross_entropy"}


def test_a_float64_softmax_saturated_to_a_tiny_loss_is_unresolved_not_failed(monkeypatch) -> None:
    """Every gradient is ~1e-10 and carries the loss gradient's rounding, 3e-6 relative; the
    complex step resolves them and differs by that. The same backward in longdouble is as far
    off, so the mismatch is its rounding — but √ε of the tiny largest gradient would not trust
    so much of it: the bound is ε of the size of p and y (``rounding_trust``), as in float32.
    Both scopes exit 0; a dense W gradient 1e-3 off still fails."""
    for scope in ("network", "layer"):
        report = check(cfg.validate(SATURATED_SOFTMAX_64), scope=scope)
        assert report.return_code == 0 and not report.failures, (scope, [str(r.ref) for r in report.failures])
        assert any(r.unresolved and r.reason.startswith("at the backward's own rounding") for r in report.rows)
    original = L.Dense.backward
    monkeypatch.setattr(L.Dense, "backward", lambda self, d, c: (lambda out: (
        out[0], {k: v * (1 + 1e-3) for k, v in out[1].items()}))(original(self, d, c)))
    for scope in ("network", "layer"):
        assert "layers[3] W" in {str(r.ref) for r in check(cfg.validate(SATURATED_SOFTMAX_64), scope=scope).failures}
