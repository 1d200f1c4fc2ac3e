"""Properties over random networks built by `cnngrad.strategies.configs`."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cnngrad import check
from cnngrad.config import validate
from cnngrad.network import build
from cnngrad.strategies import DTYPES, configs


# configs() ends a flat net in dense (min_dense=1).  A net that ends "conv (1 filter) →
# flatten → softmax" (min_dense=0) has a bias whose gradient is zero in truth: the test
# below holds that it is not a failure.
@given(configs(dtypes=DTYPES))
def test_every_generated_network_passes(raw):
    config = validate(raw)  # valid by construction: this must not raise
    report = check(config)
    assert report.passed, "\n".join(
        f"layers[{r.layer}] {r.kind} {r.tensor}: norm rel {r.metrics.norm_rel:.3e}; {r.worst_entry()}"
        for r in report.failures)


def zero_net(seed: int, dtype: str) -> dict:
    """One conv filter straight into softmax cross-entropy: its bias adds the same constant to
    every logit, and softmax is shift-invariant, so ∂C/∂b = 0 exactly (a closed form)."""
    return {"name": "zero", "seed": seed, "dtype": dtype, "input": {"batch": 2, "channels": 1, "height": 3, "width": 3},
            "layers": [{"conv": {"filters": 1, "kernel": 2}}, "flatten"], "loss": "softmax_cross_entropy"}


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_zero_bias_gradient_is_zero_to_rounding(dtype):
    """The closed form holds for cnngrad's numbers: C does not move with b, ∂C/∂b is rounding."""
    for seed in range(10):
        p = build(validate(zero_net(seed, dtype)))
        loss, _, grads, _ = p.net.trace(p.x, p.y)
        eps = np.finfo(dtype).eps
        assert abs(float(grads[0]["b"][0])) <= 8 * eps
        p.net.layers[0].params["b"] += 1
        assert abs(p.net.trace(p.x, p.y)[0] - loss) <= 8 * eps * abs(loss)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_gradient_zero_in_truth_is_not_a_failure(dtype):
    assert all(check(zero_net(seed, dtype)).passed for seed in range(10))


def test_directions_with_the_complex_step():
    assert check("lenet", directions=1, method="complex").passed


@st.composite
def analytic_and_numeric(draw):
    """A few to a few dozen entries (across ``compare.SMALL``, where metrics leaves numpy):
    analytic values of any scale, numeric ones off by any relative error, some exactly equal
    or zero, now and then one not finite."""
    size = draw(st.integers(1, 40))
    scale = 10.0 ** draw(st.integers(-300, 300))
    g = np.array(draw(st.lists(st.floats(-1e3, 1e3), min_size=size, max_size=size))) * scale
    err = np.array(draw(st.lists(st.floats(-1.0, 1.0), min_size=size, max_size=size)))
    n = g * (1 + err * 10.0 ** draw(st.integers(-17, 0)))
    if draw(st.booleans()):
        n[draw(st.integers(0, size - 1))] = draw(st.sampled_from([0.0, np.inf, np.nan]))
    return g, n


@given(analytic_and_numeric())
def test_error_metrics_are_the_conventions_formulas(pair):
    """``compare.metrics`` against the formulas of CONVENTIONS.md written out here in numpy:
    max |g − n|, max |g − n| / max(|g|, |n|, tiny), ‖g − n‖ / (‖g‖ + ‖n‖) (0 for two zeros),
    the index of the largest |g − n| — or NaN at the first entry not finite."""
    from cnngrad.compare import metrics

    g, n = pair
    m = metrics(g, n)
    with np.errstate(all="ignore"):
        diff = np.abs(g - n)
        if not np.all(np.isfinite(diff)):
            first = int(np.flatnonzero(~np.isfinite(diff))[0])
            assert np.isnan(m.norm_rel) and np.isnan(m.max_abs) and m.worst == first
            return
        rel = diff / np.maximum(np.maximum(np.abs(g), np.abs(n)), np.finfo(np.float64).tiny)
    # norms by math.hypot: scaled inside, no overflow or underflow at any magnitude
    norms = math.hypot(*g) + math.hypot(*n)
    norm_rel = math.hypot(*(g - n)) / norms if norms > 0 else 0.0
    assert m.worst == int(np.argmax(diff)) and m.max_abs == diff.max()
    assert np.isclose(m.max_rel, rel.max(), rtol=1e-14, atol=0)
    assert np.isclose(m.norm_rel, norm_rel, rtol=1e-12, atol=1e-150)  # below 1e-150: squares underflow


@pytest.mark.parametrize("size", [3, 40])  # both sides of compare.SMALL
@pytest.mark.parametrize("scale", [1e-300, 1e-200, 1e-160, 1.0, 1e160, 1e200, 1e300])
def test_norm_rel_is_the_same_at_every_magnitude(size, scale):
    """A QA pass found norm rel NaN for gradients of 1e160 (the squares overflow: inf/inf) —
    and 0/0, taken as 0, a pass whatever the error, for gradients of 1e-160.  Norm rel is a
    ratio: it is the same at every magnitude."""
    from cnngrad.compare import metrics

    g = np.random.default_rng(size).uniform(-1, 1, size)
    n = g * (1 + 1e-3 * np.random.default_rng(size + 1).uniform(-1, 1, size))
    want = metrics(g, n).norm_rel
    assert 1e-5 < want < 1e-2
    assert np.isclose(metrics(g * scale, n * scale).norm_rel, want, rtol=1e-9), scale
