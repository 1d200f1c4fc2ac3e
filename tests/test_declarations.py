"""A ``per_sample`` declaration that does not hold is taken back, with a note, and the layer
is differenced as one that couples the samples: its right backward passes, its broken twin
fails at it (tests/plugins/declarations.py; found by a QA pass: y = a/N declared per-sample
was failed with a numeric gradient of 58,237, a mask of the batch's size stopped the check).
A declaration that holds is kept: the check takes its shortcuts."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from oracles import plugin_config

import cnngrad
from cnngrad import structural

PLUGINS = Path(__file__).resolve().parent / "plugins"
spec = importlib.util.spec_from_file_location("declarations_for_the_test", PLUGINS / "declarations.py")
D = importlib.util.module_from_spec(spec)
spec.loader.exec_module(D)


def config(tmp_path: Path, cls: str, bug: str | None) -> str:
    return plugin_config(tmp_path, "declarations", f"class: \"declarations:{cls}\", bug: {bug or 'null'}", seed=1,
                         shape="{batch: 3, channels: 2, height: 5, width: 5}")


def plain_loop(layer, a: np.ndarray, delta: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """⟨δ, ∂y/∂a⟩ entry by entry by central differences of the layer alone, whole batch."""
    out = np.zeros_like(a)
    for i in range(a.size):
        up, down = a.copy(), a.copy()
        up.flat[i] += h
        down.flat[i] -= h
        out.flat[i] = np.sum(delta * (layer.forward(up)[0] - layer.forward(down)[0])) / (2 * h)
    return out


@pytest.mark.parametrize("cls, reason", [
    ("DivN", "a sample's output changes with the batch around it"),
    ("CenterLiar", "a sample's output changes with the batch around it"),
    ("FixedMask", "its forward does not keep the batch's size"),
])
def test_a_declaration_that_does_not_hold_is_taken_back_and_the_right_backward_passes(tmp_path, cls, reason):
    layer = getattr(D, cls)((2, 4, 4), np.random.default_rng(0))
    rng = np.random.default_rng(1)
    a, delta = rng.normal(size=(3, 2, 4, 4)), rng.normal(size=(3, 2, 4, 4))
    # the backward is right, by the test's own loop (not cnngrad's numbers)
    np.testing.assert_allclose(layer.backward(delta, layer.forward(a)[1])[0], plain_loop(layer, a, delta), atol=1e-8)
    assert structural.per_sample_refuted(layer, a, layer.forward(a)[0]).startswith(reason)
    rep = cnngrad.check(config(tmp_path, cls, None), plugins=True)
    assert rep.passed and rep.return_code == 0, rep.localisation or [r.line() for r in rep.rows if r.failed]
    note = [n for n in rep.fallbacks if n.startswith(f"layers[1] {cls} declares per_sample, but {reason}")]
    assert note and not any("does not declare per_sample" in n for n in rep.fallbacks), rep.fallbacks


@pytest.mark.parametrize("cls, bug", [("CenterLiar", "ignore_coupling"), ("FixedMask", "mask_sample0")])
def test_their_broken_twins_fail_at_that_layer(tmp_path, cls, bug):
    rep = cnngrad.check(config(tmp_path, cls, bug), plugins=True)
    assert rep.return_code == 1 and str(rep.culprit) == "1", rep.localisation


def test_a_declaration_that_holds_is_kept(tmp_path):
    """tests/plugins/reentrancy.py's correct TanhCache: per-sample indeed — no note, and the
    differences stack copies of single samples (its entries differenced as the engine's fast path does)."""
    (tmp_path / "reentrancy.py").write_text((PLUGINS / "reentrancy.py").read_text())
    path = tmp_path / "ok.yaml"
    path.write_text("seed: 1\ninput: {batch: 3, channels: 2, height: 5, width: 5}\nlayers:\n"
                    "  - conv: {filters: 3, kernel: 3}\n  - custom: {class: \"reentrancy:TanhCache\"}\n"
                    "  - flatten: {}\n  - dense: {units: 4}\nloss: softmax_cross_entropy\n")
    rep = cnngrad.check(str(path), plugins=True)
    assert rep.passed and not any("per_sample" in n for n in rep.fallbacks), rep.fallbacks
    assert rep.problem.net.layers[1].per_sample is True


def boosted(tmp_path: Path, bug: str | None) -> str:
    """conv, Boost0 (sample 0 times 10: its entries the batch's largest), MaxNorm, …"""
    return plugin_config(tmp_path, "declarations", f"class: \"declarations:MaxNorm\", bug: {bug or 'null'}", seed=0,
                         shape="{batch: 3, channels: 2, height: 5, width: 5}",
                         before=("conv: {filters: 2, kernel: 3, padding: 1}",
                                 "custom: {class: \"declarations:Boost0\"}"))


@pytest.mark.parametrize("n", [1, 3])
def test_a_coupling_no_reordering_shows_is_found_at_any_batch_size(n):
    """A QA pass: y = a / max|a| over the batch, whose max is sample 0's (boosted 10x), kept its
    false declaration — the samples reversed, or sample 0's entries reordered, keep the max."""
    layer = D.MaxNorm((2, 4, 4), np.random.default_rng(0))
    a = np.random.default_rng(1).normal(size=(n, 2, 4, 4))
    a[0] *= 10
    assert structural.per_sample_refuted(layer, a, layer.forward(a)[0]).startswith(
        "a sample's output changes with the batch around it")


@pytest.mark.parametrize("bug, code", [(None, 0), ("const", 1)])
def test_the_max_norm_is_differenced_as_coupling(tmp_path, bug, code):
    layer = D.MaxNorm((2, 4, 4), np.random.default_rng(0), bug=bug)
    rng = np.random.default_rng(1)
    a, delta = rng.normal(size=(3, 2, 4, 4)), rng.normal(size=(3, 2, 4, 4))
    right = np.allclose(layer.backward(delta, layer.forward(a)[1])[0], plain_loop(layer, a, delta), atol=1e-8)
    assert right is (bug is None)  # the test's own loop (not cnngrad's numbers) tells the twins apart
    rep = cnngrad.check(boosted(tmp_path, bug), plugins=True)
    assert rep.return_code == code, rep.localisation or [r.line() for r in rep.rows if r.failed]
    assert any(n.startswith("layers[2] MaxNorm declares per_sample, but") for n in rep.fallbacks), rep.fallbacks
    if bug:
        assert str(rep.culprit) == "2", rep.localisation


def test_a_declaration_that_holds_in_a_domain_per_channel_is_kept(tmp_path):
    """A QA pass: y = a[:, 1:] · log(a[:, :1]) raises outside channel 0 > 0; probes on the
    input's entries reordered left that domain: the check stopped (exit 2), or the declaration
    was refuted by a NaN.  Per-sample indeed: it passes, declaration kept, no note."""
    layer = D.LogScale((3, 4, 4), np.random.default_rng(0))
    rng = np.random.default_rng(1)
    a, delta = rng.uniform(0.5, 2.0, size=(3, 3, 4, 4)), rng.normal(size=(3, 2, 4, 4))
    np.testing.assert_allclose(layer.backward(delta, layer.forward(a)[1])[0], plain_loop(layer, a, delta), atol=1e-7)
    path = plugin_config(tmp_path, "declarations", "class: \"declarations:LogScale\"", seed=0,
                         before=("conv: {filters: 3, kernel: 3}", "custom: {class: \"declarations:Softplus0\"}"))
    rep = cnngrad.check(path, plugins=True)
    assert rep.passed and rep.return_code == 0, rep.localisation or [r.line() for r in rep.rows if r.failed]
    assert not any("per_sample" in n for n in rep.fallbacks), rep.fallbacks
    assert rep.problem.net.layers[2].per_sample is True


@pytest.mark.parametrize("bug, code", [(None, 0), ("half", 1)])
def test_a_coupling_only_near_samples_feel_is_found(tmp_path, bug, code):
    """A QA pass: a softmax kernel over the batch (τ = 1e-3) leaves distinct samples alone — every
    probe on real samples saw none — but averages the differences' perturbed copies of one
    sample: its right backward was failed at norm rel 1.  A sample beside a copy of itself
    nudged by 2⁻²⁰ shows it: the declaration is taken back, the right backward passes, its
    broken twin fails; the test's own loop agrees with the right one."""
    layer = D.BatchSmooth((2, 4, 4), np.random.default_rng(0), bug=bug)
    rng = np.random.default_rng(1)
    a, delta = rng.normal(size=(3, 2, 4, 4)), rng.normal(size=(3, 2, 4, 4))
    right = np.allclose(layer.backward(delta, layer.forward(a)[1])[0], plain_loop(layer, a, delta), atol=1e-8)
    assert right is (bug is None)
    assert structural.per_sample_refuted(layer, a, layer.forward(a)[0]).startswith(
        "a sample's output changes beside a copy of itself")
    rep = cnngrad.check(plugin_config(tmp_path, "declarations", f"class: \"declarations:BatchSmooth\", "
                                      f"bug: {bug or 'null'}", shape="{batch: 3, channels: 2, height: 3, width: 3}",
                                      before=("conv: {filters: 2, kernel: 2}",),
                                      after=("activation: tanh", "flatten: {}", "dense: {units: 3}")),
                        plugins=True)
    assert rep.return_code == code, rep.localisation or [r.line() for r in rep.rows if r.failed]
    assert any(n.startswith("layers[1] BatchSmooth declares per_sample, but") for n in rep.fallbacks)


def test_a_coupling_only_large_batches_show_is_found(tmp_path):
    """A third QA pass: the probes ran 1 to n + 1 rows, the differences stack up to 72: a layer
    doubling batches over 3 rows kept its declaration and the right conv below it was failed at
    norm rel 0.35.  A batch of the samples repeated, as large as the differences stack, shows it."""
    layer = D.BigBatch((2, 4, 4), np.random.default_rng(0))
    a = np.random.default_rng(1).normal(size=(2, 2, 4, 4))
    assert structural.per_sample_refuted(layer, a, layer.forward(a)[0]).startswith(
        "a sample's output changes with the batch around it (a batch of")
    rep = cnngrad.check(plugin_config(tmp_path, "declarations", "class: \"declarations:BigBatch\"",
                                      shape="{batch: 2, channels: 2, height: 4, width: 4}"), plugins=True)
    assert rep.passed and rep.return_code == 0, rep.localisation or [r.line() for r in rep.rows if r.failed]
    assert any(n.startswith("layers[1] BigBatch declares per_sample, but") for n in rep.fallbacks)
