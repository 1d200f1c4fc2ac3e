"""A float64 mismatch no larger than the backward's own rounding is unresolved, not a FAIL.

Found by sweeping random configs of the modern layer kinds: a batch norm in eval mode, then
two in train mode.  The train-mode batch norm cancels the first one's scale up to its ε, so
∂C/∂γ of layer 0 is ~1e-10, made of terms ~1e-4.  Central differences cannot resolve it (their
floor is 5e-9); the complex step lands 3e-16 from the analytic value, a norm rel of 1.8e-6 >
tol 1e-6: FAIL, though the backward is right (torch autograd agrees with it to 2e-6 and is no
nearer the complex step).  Both carry the rounding of the cancelling terms: the same backward
run in longdouble is 2e-16 from the float64 one.  A mismatch no larger than 10x that measured
rounding is below what either side can tell: UNRESOLVED with that reason
(``resolution.at_rounding``), never a pass; a real error of 1e-3 on the same tiny gradient is
1e-13 apart and still fails, and so does a 1e-5 error on the tiny gradients of a saturated
sigmoid (tests/test_saturation.py), whose rounding is 1e-29.

Oracle: torch autograd on the same net, weights and input (the rebuild of
tests/test_torch_oracle.py, from CONVENTIONS.md alone).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnngrad import check
from cnngrad import config as cfg
from cnngrad.checker import save_npz
from cnngrad.layers_norm import BatchNorm

NORMS = {
    "name": "norm-chain", "seed": 3132367088,
    "input": {"batch": 1, "channels": 1, "height": 6, "width": 10}, "init": "xavier",
    "layers": [{"batchnorm": {"mode": "eval"}}, {"batchnorm": {}}, {"batchnorm": {}}, {"flatten": None},
               {"dense": {"units": 3}}, {"activation": "relu"}],
    "loss": "softmax_cross_entropy",
}


def gamma_row(report):
    return next(r for r in report.rows if str(r.ref) == "layers[0] gamma")


def test_the_analytic_gradient_is_right_by_torch(tmp_path: Path) -> None:
    oracle = pytest.importorskip("tests.test_torch_oracle")
    report = check(cfg.validate(NORMS), workers=1)
    save_npz(report, tmp_path / "run.npz")
    with np.load(tmp_path / "run.npz") as f:
        arrays = {k: f[k] for k in f.files}
    _, grads = oracle.torch_gradients(NORMS, arrays)
    torch_gamma = grads["grad.layers.0.gamma"].reshape(-1)
    row = gamma_row(report)
    assert 1e-11 < abs(torch_gamma[0]) < 1e-9  # tiny: the train-mode norm cancels γ up to its ε
    assert abs(row.analytic[0] - torch_gamma[0]) <= 1e-15  # right to rounding
    # the complex step is no nearer torch than the analytic side: the mismatch is its own noise
    assert abs(row.numeric[0] - torch_gamma[0]) >= abs(row.analytic[0] - torch_gamma[0])


def test_it_is_unresolved_not_failed() -> None:
    report = check(cfg.validate(NORMS), workers=1)
    row = gamma_row(report)
    assert row.unresolved and not row.passed, (row.status, row.note)
    assert row.reason.startswith("at the backward's own rounding"), row.reason
    assert report.passed  # exit 0: nothing is wrong, and it is never counted as a pass
    assert not check(cfg.validate(NORMS), workers=1, strict=True).passed


@pytest.mark.parametrize("factor", [1 + 1e-3, 1 - 1e-2])
def test_a_real_error_on_the_same_tiny_gradient_still_fails(monkeypatch, factor: float) -> None:
    original = BatchNorm.backward

    def scaled(self, delta, cache):
        d, grads = original(self, delta, cache)
        return d, {**grads, **({"gamma": grads["gamma"] * factor} if "gamma" in grads else {})}

    monkeypatch.setattr(BatchNorm, "backward", scaled)
    report = check(cfg.validate(NORMS), workers=1)
    assert not report.passed
    assert gamma_row(report).failed


# a 1x1 conv's bias in a block, then a group norm of one channel a group: ∂C/∂b is 0 in truth (the
# norm removes each channel's mean); found by benchmarks/bugs.py (seed 5, config 229, max size 16)
BIAS_IN_A_BLOCK_BEFORE_A_NORM = {
    "name": "bias-before-a-norm", "seed": 3532890276, "init": {"normal": 0.22880284354867025},
    "input": {"batch": 2, "channels": 2, "height": 8, "width": 3},
    "layers": [{"dropout": {"rate": 0.25}}, {"batchnorm": {"mode": "eval"}},
               {"block": {"merge": "add", "paths": [[
                   {"block": {"merge": "add", "paths": [[{"conv": {"filters": 3, "kernel": 1, "bias": "none"}},
                                                         {"activation": "relu"}]]}},
                   {"activation": "sigmoid"}, {"conv": {"filters": 2, "kernel": 1}}]]}},
               {"groupnorm": {"groups": 2}}, {"global_pool": {"kind": "avg"}}]}
INNER_BIAS = "layers[2].paths[0][2] b"


def test_the_complex_steps_own_rounding_is_not_a_failure(monkeypatch) -> None:
    """The backward gives ~1e-29, in float64 and in longdouble; the float64 complex step gives
    7e-15, past its resolution (6e-15: 10 ε of the loss's size) — its own rounding, through a
    norm of a nearly constant channel.  It was a FAIL ("resolves it and disagrees").  Run in
    longdouble the complex step gives ~0: UNRESOLVED, as the plain loop of the network says
    (0 up to its rounding).  A bias gradient off by 2e-14 still fails (2e-15 would be within
    the backward's own rounding here: unresolved, never a pass)."""
    from oracles import central

    from cnngrad.layers import Conv
    from cnngrad.network import build

    p = build(cfg.validate(BIAS_IN_A_BLOCK_BEFORE_A_NORM))
    b = p.net.layers[2].paths[0][2].params["b"]
    assert np.max(np.abs(central(lambda: p.net.cost(p.net.forward(p.x)[0], p.y), b))) < 1e-9
    report = check(cfg.validate(BIAS_IN_A_BLOCK_BEFORE_A_NORM))
    row = next(r for r in report.rows if str(r.ref) == INNER_BIAS)
    assert report.return_code == 0 and row.unresolved and "run in longdouble it gives" in row.reason, row.reason
    original = Conv.backward
    monkeypatch.setattr(Conv, "backward", lambda self, d, c: (lambda out: (out[0], {
        **out[1], **({"b": out[1]["b"] + 2e-14} if "b" in out[1] else {})}))(original(self, d, c)))
    report = check(cfg.validate(BIAS_IN_A_BLOCK_BEFORE_A_NORM))
    assert INNER_BIAS in {str(r.ref) for r in report.failures}
