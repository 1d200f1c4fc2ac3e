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
    ("FixedMask", "its forward fails on a batch of another size"),
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
