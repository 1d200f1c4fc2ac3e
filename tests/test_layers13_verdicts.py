"""Verdicts on networks with the modern layers (issue 13).

* A deliberate bug in each new layer's backward — put in with monkeypatch, the way it is
  made by hand — fails the check and is located to that layer.
* A gradient that is 0 in truth (a bias right before a train-mode batch norm) is reported
  as below the resolution, never as a failure — and a wrong backward there still fails.
* The engine's numbers equal a plain loop of central differences written here, on the
  shipped configs with the new layers (batch norm couples the samples: no shortcut may
  assume otherwise).
"""
from __future__ import annotations

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from oracles import central

from cnngrad import check, resolution
from cnngrad import conv as C
from cnngrad import grouped as GC
from cnngrad.cli import main
from cnngrad.config import load, shipped_configs, validate
from cnngrad.layers import Conv
from cnngrad.layers_modern import ConvTranspose, Dropout, GlobalPool, Upsample
from cnngrad.layers_norm import BatchNorm, GroupNorm
from cnngrad.network import build
from cnngrad.strategies import configs
from cnngrad.strategies_modern import MODERN_KINDS


def conf(*layers, batch: int = 3, shape=(4, 6, 6), seed: int = 0, loss: str = "mse") -> dict:
    c, h, w = shape
    return {"seed": seed, "input": {"batch": batch, "channels": c, "height": h, "width": w},
            "layers": list(layers), "loss": loss}


# --------------------------------------------------------------------------- the bugs


def _bn_constant_stats(mp):
    def backward(self, delta, cache):
        xhat, inv = cache
        axes = self._axes(delta.ndim)
        g = self.params["gamma"].reshape((1, -1) + (1,) * (delta.ndim - 2)) * delta
        return g * inv, {"gamma": (delta * xhat).sum(axis=axes), "beta": delta.sum(axis=axes)}
    mp.setattr(BatchNorm, "backward", backward)


def _bn_no_variance_path(mp):
    def backward(self, delta, cache):
        xhat, inv = cache
        axes = self._axes(delta.ndim)
        g = self.params["gamma"].reshape((1, -1) + (1,) * (delta.ndim - 2)) * delta
        return inv * (g - g.mean(axis=axes, keepdims=True)), {"gamma": (delta * xhat).sum(axis=axes),
                                                              "beta": delta.sum(axis=axes)}
    mp.setattr(BatchNorm, "backward", backward)


def _bn_eval_no_gamma(mp):
    original = BatchNorm.backward

    def backward(self, delta, cache):
        _, grads = original(self, delta, cache)
        return delta * cache[1], grads
    mp.setattr(BatchNorm, "backward", backward)


def _gn_constant_stats(mp):
    original = GroupNorm.backward

    def backward(self, delta, cache):
        _, grads = original(self, delta, cache)
        n = delta.shape[0]
        inv = np.broadcast_to(cache[1], (n, self.groups, delta[0].size // self.groups)).reshape(delta.shape)
        return self.params["gamma"][None, :, None, None] * delta * inv, grads
    mp.setattr(GroupNorm, "backward", backward)


def _ct_flipped(mp):
    """δ through ROT180(w), as if the backward of a transposed conv were a convolution."""
    original = ConvTranspose.backward

    def backward(self, delta, cache):
        _, grads = original(self, delta, cache)
        return C.correlate(self._padded(delta), C.rot180(self.params["W"]), self.s, self.d), grads
    mp.setattr(ConvTranspose, "backward", backward)


def _ct_weight_swapped(mp):
    """∂C/∂W with the wrong channel layout: (F, C) read as (C, F)."""
    original = ConvTranspose.backward

    def backward(self, delta, cache):
        d_in, grads = original(self, delta, cache)
        W = grads["W"]
        grads["W"] = W.reshape(W.shape[1], W.shape[0], *W.shape[2:]).swapaxes(0, 1).copy()
        return d_in, grads
    mp.setattr(ConvTranspose, "backward", backward)


def _groups_interleaved(mp):
    """The backward takes filter o to be in group o % groups (the forward: o // (F/groups))."""
    original = Conv.backward

    def backward(self, delta, cache):
        _, grads = original(self, delta, cache)
        f = delta.shape[1]
        perm = np.argsort(np.arange(f) % self.groups, kind="stable")
        (a_pad,) = cache
        cols = C.im2col(a_pad, self.k, self.s, self.d)
        full = GC.full_convolve(delta[:, perm], self._kernel()[perm], self.groups, a_pad.shape[-2:], self.s, self.d)
        w = np.empty_like(grads["W"])
        w[perm] = GC.weight_grad(cols, delta[:, perm], self.groups, self.k)
        grads["W"] = w
        return C.crop(full, self.p), grads
    mp.setattr(Conv, "backward", backward)


def _bilinear_half_pixel(mp):
    """The backward's weights from ``y = i/s`` (no half-pixel centres)."""
    def backward(self, delta, cache):
        def U(size):
            i = np.arange(size * self.scale)
            y = i / self.scale
            lo = np.floor(y).astype(int)
            lam = y - lo
            m = np.zeros((size * self.scale, size))
            np.add.at(m, (i, lo), 1 - lam)
            np.add.at(m, (i, np.minimum(lo + 1, size - 1)), lam)
            return m
        return U(self.Uh.shape[1]).T @ delta @ U(self.Uw.shape[1]), {}
    mp.setattr(Upsample, "backward", backward)


def _nearest_first_only(mp):
    mp.setattr(Upsample, "backward", lambda self, delta, cache: (delta[..., :: self.scale, :: self.scale], {}))


def _global_avg_no_division(mp):
    original = GlobalPool.backward
    mp.setattr(GlobalPool, "backward", lambda self, delta, cache: (
        original(self, delta, cache)[0] * (cache[0][2] * cache[0][3]), {}))


def _global_max_as_avg(mp):
    mp.setattr(GlobalPool, "backward", lambda self, delta, cache: (
        np.broadcast_to((delta / (cache[0][2] * cache[0][3]))[..., None, None], cache[0]).copy(), {}))


def _dropout_mask_ignored(mp):
    mp.setattr(Dropout, "backward", lambda self, delta, cache: (delta, {}))


def _dropout_unscaled(mp):
    mp.setattr(Dropout, "backward", lambda self, delta, cache: (delta * (self.buffers["mask"] != 0), {}))


CONV = {"conv": {"filters": 4, "kernel": 3, "padding": 1}}


def tail() -> list:
    return [{"activation": "tanh"}, {"flatten": {}}, {"dense": {"units": 3}}]


BUGS = {  # name -> (bug, config, the layer it must be located to)
    "batchnorm mean/var as constants": (_bn_constant_stats, conf(CONV, {"batchnorm": {}}, *tail()), 1),
    "batchnorm without the variance path": (_bn_no_variance_path, conf(CONV, {"batchnorm": {}}, *tail()), 1),
    "batchnorm (flat) mean/var as constants": (_bn_constant_stats, conf(
        {"flatten": {}}, {"dense": {"units": 5}}, {"batchnorm": {}}, {"activation": "tanh"},
        {"dense": {"units": 3}}, batch=4), 2),
    "batchnorm eval without gamma": (_bn_eval_no_gamma, conf(CONV, {"batchnorm": {"mode": "eval"}}, *tail()), 1),
    "groupnorm stats as constants": (_gn_constant_stats, conf(CONV, {"groupnorm": {"groups": 2}}, *tail()), 1),
    "conv_transpose kernel flipped": (_ct_flipped, conf(
        CONV, {"conv_transpose": {"filters": 2, "kernel": 3, "stride": 2, "padding": 1, "output_padding": 1}},
        *tail()), 1),
    "conv_transpose dW channels swapped": (_ct_weight_swapped, conf(
        {"conv_transpose": {"filters": 3, "kernel": 2, "stride": 2}}, *tail()), 0),
    "groups interleaved": (_groups_interleaved, conf(
        CONV, {"conv": {"filters": 6, "kernel": 3, "groups": 2}}, *tail()), 1),
    "depthwise groups interleaved": (_groups_interleaved, conf(
        CONV, {"conv": {"filters": 8, "kernel": 3, "groups": 4}}, *tail()), 1),
    "bilinear off by half a pixel": (_bilinear_half_pixel, conf(
        CONV, {"upsample": {"mode": "bilinear"}}, *tail(), shape=(4, 4, 4)), 1),
    "nearest to the first pixel only": (_nearest_first_only, conf(CONV, {"upsample": {}}, *tail(), shape=(4, 3, 3)), 1),
    "global avg without 1/(h·w)": (_global_avg_no_division, conf(
        CONV, {"global_pool": {}}, {"dense": {"units": 3}}), 1),
    "global max shared like avg": (_global_max_as_avg, conf(
        CONV, {"global_pool": {"kind": "max"}}, {"dense": {"units": 3}}), 1),
    "dropout mask ignored": (_dropout_mask_ignored, conf(CONV, {"dropout": {"rate": 0.5}}, *tail()), 1),
    "dropout without 1/(1-rate)": (_dropout_unscaled, conf(CONV, {"dropout": {"rate": 0.5}}, *tail()), 1),
}


@pytest.mark.parametrize("name", list(BUGS))
def test_each_bug_fails_and_is_located_to_its_layer(name, monkeypatch):
    bug, raw, culprit = BUGS[name]
    config = validate(raw)
    kind = config.layers[culprit].kind
    good = check(config)
    assert good.passed, name  # the correct layer passes the same config
    bug(monkeypatch)
    report = check(config)
    assert not report.passed, name
    assert report.return_code == 1
    assert report.localisation.startswith(f"layer {culprit} ({kind}): backward is wrong"), report.localisation
    # δ goes wrong below the bug, so layers before it may fail too; nothing after it does
    assert all(r.layer <= culprit for r in report.failures), [(r.layer, r.tensor) for r in report.failures]


# --------------------------------------------------------------------------- zero in truth


BIAS_BN = conf({"conv": {"filters": 3, "kernel": 3}}, {"batchnorm": {}}, {"activation": "tanh"},
               {"flatten": {}}, {"dense": {"units": 4}}, batch=4, loss="softmax_cross_entropy")


def test_a_bias_before_train_batchnorm_is_zero_in_truth_by_a_plain_loop():
    """The oracle, without cnngrad's differences: the loss does not move when the bias moves."""
    p = build(validate(BIAS_BN))
    net = p.net

    def loss() -> float:
        out, _ = net.forward(p.x)
        return net.cost(out, p.y)

    c0 = loss()
    net.layers[0].params["b"] += np.array([0.7, -1.3, 2.0])
    assert abs(loss() - c0) <= 1e-12 * abs(c0)


@pytest.mark.parametrize("method", ["central", "complex", "richardson"])
def test_a_bias_before_train_batchnorm_is_not_a_failure(method):
    report = check(validate(BIAS_BN), method=method)
    assert report.passed and report.return_code == 0
    bias = next(r for r in report.rows if (r.layer, r.tensor) == (0, "b"))
    assert bias.status == "unresolved", (bias.status, bias.metrics)
    if method != "complex":  # confirmed by the complex step, and said so
        assert "both zero up to rounding" in bias.note, bias.note
    assert all(r.status == "pass" for r in report.rows if r is not bias)


def test_the_cli_says_so_and_exits_0():
    result = CliRunner().invoke(main, ["check", "bn-train"])
    assert result.exit_code == 0, result.output
    assert "layers[0] conv b: UNRESOLVED" in result.output and "FAIL" not in result.output


SMALL_BATCH = 2, 5  # bn-train at batch 2, seed 5: the dense bias's rounding is ~700·ε·G·N


def small_batch_config():
    raw = yaml.safe_load(shipped_configs()["bn-train"].read_text(encoding="utf-8"))
    raw["input"]["batch"], raw["seed"] = SMALL_BATCH
    return validate(raw)


def test_the_measured_rounding_covers_a_small_batch():
    """A batch norm over 2 samples amplifies the rounding of the terms that cancel to the
    bias's 0 far beyond K·ε·G: the longdouble backward measures it, and the verdict holds."""
    report = check(small_batch_config(), method="complex")
    assert report.return_code == 0, [(r.layer, r.tensor, r.status) for r in report.rows]
    assert {(r.layer, r.tensor) for r in report.unresolved} == {(0, "b"), (8, "b")}


def test_without_the_measurement_that_small_batch_would_fail(monkeypatch):
    """The measurement is what makes the test above pass (the test has teeth): the floor's
    measured rounding, and the per-tensor one of ``resolution.at_rounding``."""
    monkeypatch.setattr(resolution, "measured_rounding", lambda *args: 0.0)
    monkeypatch.setattr(resolution, "at_rounding", lambda *args: "")
    report = check(small_batch_config(), method="complex")
    assert report.return_code == 1


def test_measured_rounding_is_rounding():
    p = build(load("lenet"))
    loss, deltas, grads, _ = p.net.trace(p.x, p.y)
    m = resolution.measured_rounding(p.net, p.x, p.y, deltas, grads)
    G = resolution.largest(deltas + [g for gr in grads for g in gr.values()])
    if np.finfo(np.longdouble).eps < np.finfo(np.float64).eps:
        assert 0 < m < 100 * np.finfo(np.float64).eps * G
    else:
        assert m == 0.0


def test_a_backward_that_differs_in_longdouble_is_not_taken_for_rounding(monkeypatch):
    """A layer whose longdouble run computes something else must not excuse its errors."""
    p = build(load("seed"))
    loss, deltas, grads, _ = p.net.trace(p.x, p.y)
    original = Conv.backward

    def backward(self, delta, cache):
        d, g = original(self, delta, cache)
        return (d * 1.5 if d.dtype == np.longdouble else d), g
    monkeypatch.setattr(Conv, "backward", backward)
    assert resolution.measured_rounding(p.net, p.x, p.y, deltas, grads) == 0.0


def test_a_wrong_backward_before_a_batchnorm_still_fails(monkeypatch):
    """The floor hides nothing: with mean/var as constants the bias gets a real gradient."""
    _bn_constant_stats(monkeypatch)
    report = check(validate(BIAS_BN))
    assert not report.passed
    assert (0, "b") in {(r.layer, r.tensor) for r in report.failures}


# --------------------------------------------------------------------------- the engine, by a plain loop


def plain_loop(net, x, y, ref_key: str, h: float = 1e-6) -> np.ndarray:
    """Central differences of the whole batch's loss, one entry at a time, no shortcut."""
    def cost() -> float:
        out, _ = net.forward(x)
        return net.cost(out, y)

    if ref_key == "input":
        target = x
    else:
        _, i, name = ref_key.split(".")
        target = net.layers[int(i)].params[name]
    return central(cost, target, h)


@pytest.mark.parametrize("name", ["bn-train", "decoder", "depthwise", "bn-eval"])
def test_engine_numbers_equal_a_plain_loop(name):
    report = check(name)
    p = build(load(name))
    for key, numeric in report.numeric.items():
        if not (key == "input" or key.startswith("layers.")):
            continue
        loop = plain_loop(p.net, p.x, p.y, key)
        # both are differences of the same losses: equal to 1e-7, or both rounding (≤ the floor
        # each: a gradient 0 in truth)
        atol = max(1e-7 * float(np.max(np.abs(loop))), 2 * report.floor.value)
        np.testing.assert_allclose(numeric, loop, rtol=0, atol=atol, err_msg=f"{name} {key}")


# --------------------------------------------------------------------------- random networks


ALL_KINDS = ("conv", "activation", "pool") + MODERN_KINDS


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs(max_layers=4, max_size=8, kinds=ALL_KINDS, activations=("tanh", "softplus", "sigmoid")))
def test_random_networks_with_the_new_layers_pass(raw):
    """Smooth activations (no kinks but global max's): a correct network never fails; a
    gradient 0 in truth (a bias before a train-mode batch norm) may only be unresolved.

    At most one normalisation: a γ that a second normalisation all but cancels (only eps
    keeps it) has a true gradient ~1e-12·G, which the complex step resolves while the
    backward's rounding (~1e-16·G) is 1e-5 of it — judged "fail" by the floor contract of
    tests/test_honest.py (a resolved numeric side decides); left to that contract's owner."""
    assume(sum(next(iter(e)) in ("batchnorm", "groupnorm") for e in raw["layers"]) <= 1)
    report = check(validate(raw))
    assert report.return_code == 0, [(r.layer, r.tensor, r.status, r.metrics.norm_rel) for r in report.failures]
