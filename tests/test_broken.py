"""The checker must FAIL on deliberately broken backward passes, and point at them.

Each bug is put in with monkeypatch, one at a time, in the way it is usually made by hand;
the CLI must then exit 1, and the rows that fail must be the ones the bug reaches.
"""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import cnngrad.conv as C
from cnngrad import check
from cnngrad.cli import main
from cnngrad.layers import Activation, Conv, Dense


def failing(report) -> set[tuple[int, str]]:
    return {(r.layer, r.tensor) for r in report.failures}


def run_cli(*args: str):
    return CliRunner().invoke(main, ["check", *args])


def test_correct_code_passes_the_configs_used_below():
    for name in ("lenet", "strided", "seed"):
        assert check(name, samples=60).passed


def broken_delta(monkeypatch, wrong_delta) -> None:
    """Make Conv.backward pass down ``wrong_delta(layer, delta, a_pad)`` (before the crop)."""
    original = Conv.backward

    def backward(self, delta, cache):
        _, grads = original(self, delta, cache)
        return C.crop(wrong_delta(self, delta, cache[0]), self.p), grads

    monkeypatch.setattr(Conv, "backward", backward)


# the core bugs, each put in the way it is usually made by hand


def _no_rotation(mp):
    broken_delta(mp, lambda layer, delta, a_pad: C.full_convolve(
        delta, C.rot180(layer._kernel()), a_pad.shape[-2:], layer.s, layer.d))


def _no_sigma_prime(mp):
    mp.setattr(Activation, "backward", lambda self, delta, cache: (delta, {}))


def _no_stride_zeros(mp):
    broken_delta(mp, lambda layer, delta, a_pad: C.full_convolve(
        delta, layer._kernel(), a_pad.shape[-2:], (1, 1), layer.d))


def _bias_mean(mp):
    original = Conv.backward

    def backward(self, delta, cache):
        delta_prev, grads = original(self, delta, cache)
        grads["b"] = delta.mean(axis=(0, 2, 3))
        return delta_prev, grads

    mp.setattr(Conv, "backward", backward)


def test_kernel_not_rotated(monkeypatch):
    """δ as the full *correlation* of δ with the kernel: the seed's ROT180 left out
    (``full_convolve`` of a pre-rotated kernel correlates with the kernel itself)."""
    _no_rotation(monkeypatch)
    result = run_cli("lenet", "--samples", "60")
    assert result.exit_code == 1, result.output
    report = check("lenet", samples=60)
    # δ goes wrong below layer 3: everything under it fails, layer 3's own ∂W/∂b do not
    assert {(0, "W"), (0, "b"), (0, "input")} <= failing(report)
    assert (3, "W") not in failing(report) and (7, "W") not in failing(report)


def test_kernel_rotated_in_the_weight_gradient_too(monkeypatch):
    """∂C/∂W of a correlation layer taken as ROT180 of the right answer."""
    original = Conv.backward

    def backward(self, delta, cache):
        delta_prev, grads = original(self, delta, cache)
        grads["W"] = C.rot180(grads["W"]).copy()
        return delta_prev, grads

    monkeypatch.setattr(Conv, "backward", backward)
    report = check("lenet", samples=60)
    assert report.return_code == 1
    assert {(0, "W"), (3, "W")} <= failing(report)
    assert (0, "input") not in failing(report)  # δ itself is still right


def test_delta_not_multiplied_by_sigma_prime(monkeypatch):
    """The activation passes δ straight through: ``δ^l = δ^{l+1} * ROT180(w)`` without ⊙ σ'(z)."""
    _no_sigma_prime(monkeypatch)
    result = run_cli("seed")
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "analytic" in result.output and "numeric" in result.output
    report = check("seed")
    # the last conv's W sees σ' only through the loss side: the seed net ends in sigmoid
    assert {(0, "W"), (0, "b"), (0, "input"), (2, "W"), (2, "b")} <= failing(report)


def test_stride_zeros_not_inserted(monkeypatch):
    """δ of a strided layer spread as if the layer had stride 1 (no zeros between entries)."""
    _no_stride_zeros(monkeypatch)
    result = run_cli("strided")
    assert result.exit_code == 1, result.output
    report = check("strided")
    assert (0, "input") in failing(report)  # layer 0 has stride 2
    assert (4, "W") not in failing(report)  # nothing strided above layer 4's ∂W


def test_the_bugs_above_change_delta(monkeypatch):
    """Sanity of the two injections: on a strided layer, each wrong δ differs from the right one."""
    from cnngrad.layers import Conv as Layer

    layer = Layer((2, 9, 9), np.random.default_rng(0), filters=3, kernel=3, stride=2, padding=1)
    a = np.random.default_rng(1).standard_normal((2, 2, 9, 9))
    z, cache = layer.forward(a)
    delta = np.random.default_rng(2).standard_normal(z.shape)
    right = C.full_convolve(delta, layer._kernel(), cache[0].shape[-2:], layer.s, layer.d)
    for wrong in (C.full_convolve(delta, C.rot180(layer._kernel()), cache[0].shape[-2:], layer.s, layer.d),
                  C.full_convolve(delta, layer._kernel(), cache[0].shape[-2:], (1, 1), layer.d)):
        assert wrong.shape == right.shape and not np.allclose(wrong, right)


def test_bias_gradient_not_summed_over_the_batch(monkeypatch):
    """∂C/∂b taken as the batch mean of δ instead of its sum."""
    _bias_mean(monkeypatch)
    result = run_cli("lenet", "--samples", "60")
    assert result.exit_code == 1, result.output
    report = check("lenet", samples=60)
    assert failing(report) == {(0, "b"), (3, "b")}


def test_dense_transposed_weight_gradient(monkeypatch):
    """∂C/∂W of a dense layer with a wrong but same-shaped product (a classic by hand)."""
    original = Dense.backward

    def backward(self, delta, cache):
        delta_prev, grads = original(self, delta, cache)
        grads["W"] = grads["W"][::-1].copy()  # rows for the wrong units
        return delta_prev, grads

    monkeypatch.setattr(Dense, "backward", backward)
    report = check("lenet", samples=60)
    assert {(7, "W"), (9, "W")} <= failing(report)
    assert (0, "W") not in failing(report)


def test_off_by_one_padding_crop(monkeypatch):
    """δ cropped one pixel off: the padding is undone in the wrong place (the conv layer's
    δ as the full convolution of the padded input, then a crop one row off)."""
    def crop(x, p):
        ph, pw = p
        h, w = x.shape[-2:]
        shifted = np.zeros_like(x)
        shifted[..., :-1, :] = x[..., 1:, :]
        return shifted[..., ph: h - ph, pw: w - pw]

    calls = []

    def input_delta(delta, W, in_hw, p=(0, 0), s=(1, 1), d=(1, 1)):
        calls.append(p)
        return crop(C.full_convolve(delta, W, (in_hw[0] + 2 * p[0], in_hw[1] + 2 * p[1]), s, d), p)

    monkeypatch.setattr(C, "input_delta", input_delta)
    report = check("maxpool")
    assert calls, "the broken helper is not on the conv layer's path: this test would prove nothing"
    assert (0, "input") in failing(report)


def test_nan_is_a_failed_check_not_a_crash(tmp_path):
    cfg = tmp_path / "overflow.yaml"
    cfg.write_text("input: {batch: 2, channels: 1, height: 6, width: 6}\n"
                   "init: {normal: 1.0e+200}\n"
                   "layers:\n  - conv: {filters: 2, kernel: 3}\n  - activation: softplus\n"
                   "  - conv: {filters: 2, kernel: 3}\n  - flatten: {}\n  - dense: {units: 3}\n"
                   "loss: softmax_cross_entropy\n")
    result = run_cli(str(cfg))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "FAIL" in result.output


@pytest.mark.parametrize("method", ["central", "forward"])
def test_a_tiny_wrong_factor_is_caught(monkeypatch, method):
    """Scaling one δ by (1 + 1e-4) is far above central differences' noise floor."""
    original = Activation.backward
    monkeypatch.setattr(Activation, "backward",
                        lambda self, delta, cache: (original(self, delta, cache)[0] * (1 + 1e-4), {}))
    report = check("seed", method=method, tol=1e-6 if method == "central" else 1e-5)  # forward: O(h) ~1e-7
    assert (0, "W") in failing(report)


# (bug, config, rows it must make fail)
CORE_BUGS = [
    pytest.param(_no_rotation, "lenet", {(0, "W"), (0, "input")}, id="kernel-not-rotated"),
    pytest.param(_no_sigma_prime, "seed", {(0, "W"), (2, "W")}, id="no-sigma-prime"),
    pytest.param(_no_stride_zeros, "strided", {(0, "input")}, id="stride-zeros-not-inserted"),
    pytest.param(_bias_mean, "lenet", {(0, "b"), (3, "b")}, id="bias-not-summed"),
]


@pytest.mark.parametrize("bug, name, rows", CORE_BUGS)
def test_directional_mode_catches_each_core_bug(monkeypatch, bug, name, rows):
    """--directions 4: a few passes per tensor, and each bug still fails — then the failing
    tensors are checked entry by entry, and say so."""
    bug(monkeypatch)
    report = check(name, directions=4)
    assert report.return_code == 1
    assert rows <= failing(report)
    for r in report.failures:
        if r.tensor != "input" or r.layer == 0:  # δ rows of inner layers come from localisation
            assert r.mode == "entries" and "failed along 4 directions" in r.note
    result = run_cli(name, "--directions", "4")
    assert result.exit_code == 1 and "failed along 4 directions" in result.output


@pytest.mark.parametrize("bug, name, rows", CORE_BUGS)
def test_each_core_bug_does_not_shrink_with_h_and_is_confirmed(monkeypatch, bug, name, rows):
    bug(monkeypatch)
    result = run_cli(name, "--samples", "40")
    assert result.exit_code == 1
    assert "does not shrink with h — the analytic gradient is wrong" in result.output
    assert "the complex step confirms it" in result.output


@pytest.mark.parametrize("method", ["forward", "richardson", "ridders", "complex"])
@pytest.mark.parametrize("bug, name, rows", CORE_BUGS)
def test_every_method_catches_each_core_bug(monkeypatch, method, bug, name, rows):
    bug(monkeypatch)
    report = check(name, method=method, samples=40)
    assert rows <= failing(report)


@pytest.mark.parametrize("scope", ["layer", "network"])
@pytest.mark.parametrize("method", ["complex", "ridders"])
def test_directions_run_with_the_complex_step_and_ridders_in_blocks_and_catch_the_core_bugs(
        monkeypatch, method, scope):
    """A QA pass found both crash with ``--directions``: the complex step moving a bias added a
    complex step into a real z (``z += b``: the layer's input was left real; LeNet's layer
    scope, blocks in the network scope), and Ridders' error estimates broke an unpacking of
    a block's directions.  Now correct nets pass, and the core bugs fail."""
    for name in ("lenet", "resnet-block"):
        assert check(name, method=method, directions=2, scope=scope).passed, (name, method, scope)
    _bias_mean(monkeypatch)
    _no_rotation(monkeypatch)
    report = check("lenet", method=method, directions=2, scope=scope)
    # the unrotated kernel is in conv 3's δ input; layer 0's W is wrong through the network only
    # (the layer scope checks its backward on the δ it received, and passes it)
    rows = {(0, "b"), (3, "b"), (3, "input")} | ({(0, "W")} if scope == "network" else set())
    assert report.return_code == 1 and rows <= failing(report), failing(report)
