"""benchmarks/verdicts.py and its torch oracle: the oracle agrees with cnngrad on correct
networks, calls a FAIL of a wrong backward a true FAIL and a FAIL of a right one false, and
the batch is the same for the same seed.  Needs torch (skipped without it)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import oracle  # noqa: E402
import verdicts  # noqa: E402

from cnngrad.config import validate  # noqa: E402
from cnngrad.layers import Dense  # noqa: E402
from cnngrad.network import build  # noqa: E402

DENSE_NET = {"name": "t", "seed": 4, "input": {"batch": 2, "channels": 2, "height": 4, "width": 4},
             "layers": [{"conv": {"filters": 2, "kernel": 3}}, {"activation": "tanh"}, "flatten",
                        {"dense": {"units": 3}}], "loss": "softmax_cross_entropy"}


@pytest.mark.parametrize("index", range(25))
def test_oracle_agrees_with_cnngrads_backward_on_random_networks(index):
    raw = verdicts.draw(11, index)
    p = build(validate(raw))
    loss, deltas, grads, _ = p.net.trace(p.x, p.y)
    params = {f"layers.{i}.{n}": v for i, layer in enumerate(p.net.layers) for n, v in layer.params.items()}
    dtype = raw.get("dtype", "float64")
    t_loss, t_grads = oracle.TorchNet(raw, params, p.x, p.y, dtype).autograd()
    bound = 1e-4 if dtype == "float32" else 1e-9
    assert abs(t_loss - loss) <= bound * max(1.0, abs(loss))
    scale = max(float(np.max(np.abs(v), initial=0.0)) for v in t_grads.values()) + 1e-300
    mine = {f"delta.{i}": d for i, d in enumerate(deltas)}
    mine |= {f"layers.{i}.{n}": g for i, gs in enumerate(grads) for n, g in gs.items()}
    assert set(mine) == set(t_grads)
    for key, g in mine.items():
        np.testing.assert_allclose(g, t_grads[key], rtol=bound, atol=bound * scale, err_msg=key)


def test_a_wrong_backward_is_a_true_fail(monkeypatch):
    def twice_the_weight_gradient(self, delta, cache):
        (a_prev,) = cache
        return delta @ self.params["W"], {"W": 2 * delta.T @ a_prev, "b": delta.sum(axis=0)}

    monkeypatch.setattr(Dense, "backward", twice_the_weight_gradient)
    rec = verdicts.check_one((0, DENSE_NET, {}))
    assert rec["status"] == "true FAIL", rec
    wrong = [row for row in rec["rows"] if not row["analytic_right"]]
    assert [(row["layer"], row["tensor"]) for row in wrong] == [(3, "W")]
    assert wrong[0]["analytic_vs_torch"] == pytest.approx(1 / 3, rel=1e-6)  # ‖2g − g‖ / (‖2g‖ + ‖g‖)


def test_a_right_backward_failed_by_a_tolerance_no_one_can_meet_is_a_false_fail():
    rec = verdicts.check_one((0, DENSE_NET, {"tol": 1e-30}))
    assert rec["status"] == "false FAIL", rec
    assert rec["rows"] and all(row["analytic_right"] for row in rec["rows"])
    assert all(row["analytic_vs_torch"] < 1e-12 for row in rec["rows"])


def test_a_bad_config_is_not_a_traceback():
    rec = verdicts.check_one((0, {"input": {"batch": 1, "channels": 1, "height": 2, "width": 2},
                                  "layers": [{"conv": {"filters": 1, "kernel": 3}}]}, {}))
    assert rec["status"] == "config error" and "layers[0].conv.kernel" in rec["message"]


def test_the_oracle_sees_a_kink_crossing():
    """One ReLU unit at z = 1e-7: a step of 1e-6 crosses it, a step of 1e-8 does not."""
    raw = {"input": {"batch": 1, "channels": 1, "height": 1, "width": 1}, "layers": ["flatten",
           {"dense": {"units": 1, "bias": True}}, {"activation": "relu"}]}
    params = {"layers.1.W": np.array([[1.0]]), "layers.1.b": np.array([1e-7])}
    net = oracle.TorchNet(raw, params, np.zeros((1, 1, 1, 1)), np.zeros((1, 1)))
    assert net.central("layers.1.b", 0, 1e-6)[1] is True
    slope, crossed = net.central("layers.1.b", 0, 1e-8)
    assert crossed is False and slope == pytest.approx(1e-7, rel=1e-6)  # ∂/∂b of ½(b)² at b = 1e-7


def test_the_batch_is_the_same_for_the_same_seed():
    assert [verdicts.draw(3, i) for i in range(5)] == [verdicts.draw(3, i) for i in range(5)]
    assert verdicts.draw(3, 0) != verdicts.draw(4, 0)


LOCALISED = {"name": "localised", "seed": 679435273, "input": {"batch": 1, "channels": 3, "height": 8, "width": 5},
             "layers": [{"activation": "softplus"}, {"pool": {"kind": "avg", "size": [2, 2], "stride": [2, 1]}},
                        {"pool": {"kind": "avg", "size": [1, 3], "stride": [2, 3]}}, {"activation": "sigmoid"},
                        "flatten"], "loss": "softmax_cross_entropy"}


def test_the_localised_net_is_right_and_passes_without_localize():
    rec = verdicts.check_one((0, LOCALISED, {"eps": 1e-2}))
    assert rec["status"] == "pass", rec
    p = build(validate(LOCALISED))
    _, deltas, _, _ = p.net.trace(p.x, p.y)
    _, exact = oracle.TorchNet(LOCALISED, {}, p.x, p.y).autograd()
    for i, d in enumerate(deltas):
        assert oracle.norm_rel(d, exact[f"delta.{i}"]) < 1e-13


def test_localize_does_not_fail_a_right_net():
    rec = verdicts.check_one((0, LOCALISED, {"eps": 1e-2, "localize": True}))
    assert rec["status"] == "pass", rec
