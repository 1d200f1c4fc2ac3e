"""The analytic trace takes the structural checks' first forward of each built-in layer, and
the finite differences take the trace's unperturbed pass, instead of calling forward again
(checker._handed_over, Network.trace(given=…), FiniteDifferences(base=…)).  Both rest on a
second call giving what the first gave: so the check must come out the same bit for bit as
with every forward called afresh, and a user's layer (which may reuse a buffer or count its
calls) or a layer that failed a structural check is never handed over."""
from __future__ import annotations

import numpy as np
import pytest

from cnngrad import checker, structural
from cnngrad import config as cfg
from cnngrad.blocks import Block
from cnngrad.finite_diff import engine
from cnngrad.network import PluginLayer, build, pure

SHIPPED = ["lenet", "resnet-block", "bn-train", "float32", "inception-mini", "strided"]


def _numbers(report) -> tuple:
    rows = [(str(r.ref), r.passed, r.metrics.norm_rel, r.metrics.max_abs) for r in report.rows]
    adjoint = [(a.lhs, a.rhs, a.worst) for a in report.adjoint]
    return rows, adjoint, report.loss, report.analytic, report.numeric


def _same(a: tuple, b: tuple) -> bool:
    rows_a, adj_a, loss_a, an_a, num_a = a
    rows_b, adj_b, loss_b, an_b, num_b = b
    return (rows_a == rows_b and adj_a == adj_b and loss_a == loss_b and an_a.keys() == an_b.keys()
            and all(np.array_equal(an_a[k], an_b[k]) for k in an_a)
            and all(np.array_equal(num_a[k], num_b[k], equal_nan=True) for k in num_a))


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("directions", [None, 1])
def test_the_check_is_the_same_bit_for_bit_as_with_every_forward_called_afresh(monkeypatch, name, directions):
    handed = _numbers(checker.check(name, workers=1, directions=directions))
    forwards: list[bool] = []
    real_init = engine.FiniteDifferences.__init__

    def fresh_base(self, *args, base=None, **kwargs):  # the engine runs its own unperturbed pass
        forwards.append(base is not None)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(checker, "_handed_over", lambda layers, visits: [])
    monkeypatch.setattr(engine.FiniteDifferences, "__init__", fresh_base)
    afresh = _numbers(checker.check(name, workers=1, directions=directions))
    assert forwards and forwards[0] == (name != "float32")  # the float32 net differences an upcast copy
    assert _same(handed, afresh)


def _visits(problem) -> list[structural.Visit | None]:
    visits: list[structural.Visit | None] = []
    structural.check(problem.net.layers, problem.x, checker.kinds_of(problem.net), 0, visits=visits)
    return visits


def test_every_clean_built_in_layer_is_handed_over_with_its_own_output_and_cache():
    problem = build(cfg.load("lenet"))
    given = checker._handed_over(problem.net.layers, _visits(problem))
    assert len(given) == len(problem.net.layers)
    a = problem.x
    for layer, g in zip(problem.net.layers, given):  # what a fresh forward gives, bit for bit
        a, cache = layer.forward(a)
        assert np.array_equal(g.out, a)
        assert all(np.array_equal(c, d) for c, d in zip(cache, g.cache) if isinstance(c, np.ndarray))


def test_the_handover_stops_at_a_layer_of_the_users_and_at_a_failed_layer():
    """(tests/test_structural.py checks configs with a user's layer after a built-in conv
    end to end: each bug still fails with its reason, each correct twin passes.)"""
    problem = build(cfg.load("lenet"))
    layers, visits = problem.net.layers, _visits(problem)
    user = PluginLayer.__new__(PluginLayer)  # only its type matters to pure()
    assert not pure(user) and all(pure(layer) for layer in layers)
    assert len(checker._handed_over(layers[:3] + [user] + layers[4:], visits)) == 3
    failed = list(visits)
    failed[5] = structural.Visit(visits[5].out)  # what a layer that failed a check leaves: no cache
    assert len(checker._handed_over(layers, failed)) == 5
    assert checker._handed_over(layers, visits[:2] + [None]) == checker._handed_over(layers, visits)[:2]


def test_a_block_is_pure_only_if_every_layer_in_it_is():
    problem = build(cfg.load("resnet-block"))
    blocks = [layer for layer in problem.net.layers if isinstance(layer, Block)]
    assert blocks and all(pure(b) for b in blocks)
    user = PluginLayer.__new__(PluginLayer)
    blocks[0].paths[0].append(user)
    try:
        assert not pure(blocks[0])
    finally:
        blocks[0].paths[0].pop()


def test_the_structural_checks_call_a_trusted_layer_once_and_check_every_other(monkeypatch):
    """The checker trusts the built-in layers (``trusted=pure``: tests/test_structural.py proves
    they pass every check): one forward each, and a backward only for the adjoint test's probe."""
    from cnngrad.adjoint import is_linear
    from cnngrad.layers import Conv

    calls = {"forward": 0, "backward": 0}
    forward, backward = Conv.forward, Conv.backward

    def counted(name, fn):
        def call(self, *args):
            calls[name] += 1
            return fn(self, *args)
        return call

    monkeypatch.setattr(Conv, "forward", counted("forward", forward))
    monkeypatch.setattr(Conv, "backward", counted("backward", backward))
    problem = build(cfg.load("lenet"))  # two convs
    kinds = checker.kinds_of(problem.net)
    assert structural.check(problem.net.layers, problem.x, kinds, 0, keep=is_linear, trusted=pure) == []
    assert calls == {"forward": 2, "backward": 2}
    calls.update(forward=0, backward=0)
    assert structural.check(problem.net.layers, problem.x, kinds, 0, keep=is_linear) == []
    # each conv: two forwards, δ and 2δ, four forwards on other inputs and one with its parameters at ¾, each
    # with δ again, a forward to put it back
    assert calls == {"forward": 16, "backward": 14}
