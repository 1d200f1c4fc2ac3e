"""benchmarks/bugs.py: one layer's backward broken on purpose in a random network; the
sweep must see that the check caught it and named the layer, and must call a check that
lets a visible bug pass a MISS.  The bug is known by construction (the oracle here)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bugs  # noqa: E402

import cnngrad  # noqa: E402
from cnngrad.layers import Conv, Dense  # noqa: E402

NET = {"name": "t", "seed": 4, "input": {"batch": 2, "channels": 2, "height": 5, "width": 5},
       "layers": [{"conv": {"filters": 3, "kernel": 3}}, {"activation": "tanh"},
                  {"block": {"merge": "add", "paths": [[{"conv": {"filters": 3, "kernel": 3, "padding": 1}}], []]}},
                  "flatten", {"dense": {"units": 3}}], "loss": "softmax_cross_entropy"}


@pytest.mark.parametrize("scope", ["network", "layer"])
@pytest.mark.parametrize("index", range(6))
def test_a_bug_in_any_layer_is_caught_and_named(scope, index):
    rec = bugs.check_one((index, NET, {"scope": scope}, 0))
    assert rec["status"] == "caught", rec
    assert Conv.backward.__qualname__ == "Conv.backward" and Dense.backward.__qualname__ == "Dense.backward"


def test_the_broken_layer_is_drawn_from_the_seed_and_inside_blocks_too():
    drawn = [bugs.check_one((i, NET, {"scope": "layer"}, 0))["broken"] for i in range(12)]
    assert drawn == [bugs.check_one((i, NET, {"scope": "layer"}, 0))["broken"] for i in range(12)]
    assert any(".paths[" in ref for ref in drawn) and len(set(drawn)) > 3


def test_a_check_that_lets_the_bug_pass_is_a_miss(monkeypatch):
    real = cnngrad.check
    calls = []

    def blind(raw, **how):  # the second call (the broken network's) reports every row passed
        report = real(raw, **how)
        calls.append(report)
        if len(calls) == 2:
            for row in report.rows:
                row.status, row.reason = "pass", ""
            report.localisation, report.culprit, report.adjoint = "", None, []  # the dot-product test too
        return report

    monkeypatch.setattr(bugs.cnngrad, "check", blind)
    rec = bugs.check_one((0, NET, {"scope": "layer"}, 0))
    assert rec["status"] == "MISSED" and rec["moved"] == [rec["broken"]], rec
