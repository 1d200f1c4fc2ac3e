"""Properties over random networks built by `cnngrad.strategies.configs`."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given

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
