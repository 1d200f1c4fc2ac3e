"""A right layer whose derivative wiggles on the scale of the step, the complex step unable to
run through it (``tests/plugins/wiggly.py``): central differences at h = 1e-6 carry a
truncation of ~1e-5, past their tol, that falls 4x as h halves.  It FAILED and was blamed —
under a note saying "truncation error, not a bug".  The two differences it already has,
extrapolated (Richardson), pass it; its twin 1e-3 off still fails, located to it, in both
scopes.  The oracle for "right": the closed form σ' against a plain loop of central
differences at a step small enough for the wiggle."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from oracles import PLUGINS, plugin_config

from cnngrad import check


def config(tmp_path, bug):
    return plugin_config(tmp_path, "wiggly", f"class: \"wiggly:Wiggly\", bug: {bug or 'null'}",
                         shape="{batch: 2, channels: 2, height: 4, width: 4}",
                         before=("conv: {filters: 3, kernel: 3, padding: 1}",),
                         after=("global_pool: {kind: avg}", "dense: {units: 3}"))


def test_the_layer_is_right_by_a_plain_loop_at_a_small_step():
    sys.path.insert(0, str(PLUGINS))
    try:
        from wiggly import Wiggly
    finally:
        sys.path.remove(str(PLUGINS))
    layer = Wiggly((1, 2, 3), np.random.default_rng(0))
    z = np.random.default_rng(1).standard_normal((1, 1, 2, 3))
    _, cache = layer.forward(z)
    analytic, _ = layer.backward(np.ones_like(z), cache)
    h = 1e-9  # truncation h²·Aω³/6 ~ 2e-11; rounding ε/h ~ 2e-7
    numeric = np.empty_like(z)
    for i in np.ndindex(z.shape):
        up, down = z.copy(), z.copy()
        up[i] += h
        down[i] -= h
        numeric[i] = (layer.forward(up)[0][i] - layer.forward(down)[0][i]) / (2 * h)
    np.testing.assert_allclose(numeric, analytic, rtol=0, atol=1e-6)
    assert np.ptp(analytic) > 0.1  # it wiggles: σ' is far from constant over these six entries


@pytest.mark.parametrize("scope", ["network", "layer"])
def test_a_truncation_failure_is_judged_on_the_extrapolated_differences(tmp_path, scope):
    right = check(config(tmp_path, None), plugins=True, scope=scope, workers=1)
    assert right.passed, [(str(r.ref), r.status, r.metrics.norm_rel, r.note) for r in right.rows]
    looked = [r for r in right.rows if "extrapolated from h and h/2" in r.note]
    assert looked and all("falls 4" in r.note or "falls 3" in r.note for r in looked)  # it was truncation
    assert any(str(r.ref) == "layers[1] δ input" for r in looked)  # the wiggly layer's own δ among them

    for bug in ("gain", "tiny"):  # 1e-3 off; 1e-5 off, below the truncation at h itself
        wrong = check(config(tmp_path, bug), plugins=True, scope=scope, workers=1)
        assert not wrong.passed and wrong.culprit == 1, (bug, wrong.localisation)
        failed = {str(r.ref) for r in wrong.rows if r.failed}
        assert "layers[1] δ input" in failed, bug


def test_forward_differences_extrapolated_are_judged_at_central_tol(tmp_path):
    """Forward differences (tol 1e-5) extrapolated are second order: judged at their own tol
    they passed the twin 1e-5 off (norm rel ~5e-6) that a plain check fails."""
    assert not check(config(tmp_path, "tiny"), plugins=True, workers=1).passed
    assert not check(config(tmp_path, "tiny"), plugins=True, method="forward", workers=1).passed
    assert check(config(tmp_path, None), plugins=True, method="forward", workers=1).passed
