"""ReLU, leaky ReLU and max pooling: a stencil that crosses a kink is a kink, not a failure."""
from __future__ import annotations

import numpy as np
import pytest
from oracles import plugin_config

from cnngrad import check
from cnngrad import config as cfg
from cnngrad.finite_diff import FiniteDifferences
from cnngrad.network import build


def test_maxpool_config_never_fails_on_a_kink_over_100_seeds():
    config = cfg.load("maxpool")
    failed, kinks = [], 0
    for seed in range(100):
        config.seed = seed
        report = check(config)
        kinks += sum(r.kinks for r in report.rows)
        if not report.passed:
            failed.append(seed)
    assert failed == []
    assert kinks > 0  # some stencils did cross (seed 85: 33 entries), and were counted apart


def test_kink_rows_say_so():
    config = cfg.load("maxpool")
    config.seed = 85
    report = check(config)
    crossed = [r for r in report.rows if r.kinks]
    assert crossed and all(r.passed for r in crossed)
    assert all(r.checked + r.kinks == int(np.prod(r.shape)) for r in crossed)
    from cnngrad.report import summary, table
    assert "entries skipped at kinks" in summary(report)
    from rich.console import Console
    console = Console(width=200, record=True)
    console.print(table(report))
    assert "kinks)" in console.export_text()


def test_flagged_entries_are_where_the_difference_quotient_broke():
    """With a large step, many stencils cross; those flagged are exactly where the central
    difference is far off, and the rest agree with the analytic gradient."""
    config = cfg.load("maxpool")
    p = build(config)
    _, dx, grads = p.net.gradients(p.x, p.y)
    fd = FiniteDifferences(p.net, p.x, p.y, 1e-2)
    num = fd.param(3, "W", np.arange(grads[3]["W"].size))
    g = grads[3]["W"].ravel()
    assert num.kinks.any() and not num.kinks.all()
    err = np.abs(num.values - g) / np.max(np.abs(g))
    assert np.max(err[~num.kinks]) < 1e-3  # smooth stencils: only truncation, small
    assert np.max(err[num.kinks]) > 10 * np.max(err[~num.kinks])  # crossing ones: broken


def test_avoid_kinks_redraws_the_input_deterministically():
    config = cfg.load("maxpool")
    config.seed = 85
    first = check(config, avoid_kinks=True)
    again = check(config, avoid_kinks=True)
    assert first.passed and first.redraws >= 1
    assert sum(r.kinks for r in first.rows) == 0
    assert np.array_equal(first.problem.x, again.problem.x)
    assert not np.array_equal(first.problem.x, check(config).problem.x)


def test_complex_step_branches_on_the_real_part():
    """Relu and max pool under the complex step: no crossing, exact derivatives."""
    report = check("maxpool", method="complex")
    assert report.passed and max(r.metrics.norm_rel for r in report.rows) < 1e-12


SAMPLED = {"seed": 3, "input": {"batch": 2, "channels": 1, "height": 6, "width": 6},
           "layers": [{"conv": {"filters": 2, "kernel": 3, "padding": 1}}, {"activation": "relu"},
                      {"pool": {"kind": "max", "size": 2}}, {"flatten": {}}, {"dense": {"units": 3}}],
           "loss": "mse"}


def w_row(report):
    return next(r for r in report.rows if str(r.ref) == "layers[0] W")


def test_samples_that_all_cross_a_kink_draw_more_entries_instead_of_failing(monkeypatch):
    """--samples 2 at a large step: both sampled entries of layers[0].W cross a kink, so
    nothing was compared — a FAIL of a correct conv before fresh entries were drawn (and
    before the complex step compared such rows: without the draws, it does)."""
    import cnngrad.checker as checker

    report = check(SAMPLED, samples=2, eps=3e-2)
    row = w_row(report)
    assert report.passed and row.passed and row.checked >= 1 and row.kinks >= 2
    assert "more drawn" in row.note
    again = check(SAMPLED, samples=2, eps=3e-2)  # the same seed draws the same entries
    assert np.array_equal(w_row(again).indices, row.indices)
    monkeypatch.setattr(checker, "MORE_DRAWS", 0)
    before = w_row(check(SAMPLED, samples=2, eps=3e-2))  # no fresh entries: the complex step compares the two
    assert before.passed and before.checked == 2 and before.note.startswith(
        "every stencil of central differences crossed a kink; the complex step")


def test_the_fresh_entries_still_catch_a_wrong_weight_gradient(monkeypatch):
    from cnngrad.layers import Conv

    original = Conv.backward

    def scaled(self, delta, cache):
        d, grads = original(self, delta, cache)
        return d, {**grads, "W": grads["W"] * 1.01}

    monkeypatch.setattr(Conv, "backward", scaled)
    row = w_row(check(SAMPLED, samples=2, eps=3e-2))
    assert row.failed and row.checked >= 1


def _tied_pool_config(tmp_path, bug):
    return plugin_config(tmp_path, "tied_pool", f"class: \"tied_pool:TiedPool\", size: 3, bug: {bug or 'null'}",
                         shape="{batch: 3, channels: 3, height: 8, width: 8}",
                         before=("conv: {filters: 3, kernel: 3}", "upsample: {scale: 2}"))


def test_a_plugin_wrong_only_at_its_ties_is_not_blamed_on_the_layer_below_alone(tmp_path):
    """After a nearest upsampling a 3x3 max pool's windows tie; a plugin pool that routes δ to
    every tied entry is wrong exactly there — where its δ row leaves every stencil out (each
    crosses a kink), and where it cannot be held on a piece nor run in complex numbers.  The
    layer below (upsample, right: tests/test_layers13.py) then fails for the δ it is handed;
    the localisation must not name it alone (found by a QA pass): it names the pool too."""
    right = check(_tied_pool_config(tmp_path, None), plugins=True)
    assert right.passed, right.localisation
    wrong = check(_tied_pool_config(tmp_path, "ties_all"), plugins=True)
    assert wrong.return_code == 1
    (pool_row,) = [r for r in wrong.rows if r.ref.path == (2,) and r.ref.is_delta]
    assert pool_row.passed and pool_row.kinks > 0  # its δ checked out where nothing crosses a kink
    assert wrong.localisation.startswith("layer 1 (upsample): backward is wrong — or layer 2 (TiedPool) above it "
                                         "is: its δ checked out only where no stencil crosses a kink")


@pytest.mark.parametrize("bug", [None, "ties_all"])
def test_a_row_on_its_kinks_at_theta_is_unresolved_not_passed_by_the_complex_step(tmp_path, bug):
    """2x2 windows after a 2x nearest upsampling: every window ties, every entry of the pool's δ
    sits on a kink at θ itself.  Declared complex_safe, the pool let the complex step compare
    them — and numpy orders complex numbers by real part then imaginary, so θ + ih made each
    perturbed entry the max: a one-sided derivative the ties_all bug matched, its row PASSED (a
    QA pass).  No derivative exists there: the row is unresolved for both twins (not a pass, not
    a fail; --strict fails it), the right twin's run passes, the wrong one's fails and names it."""
    path = plugin_config(tmp_path, "tied_pool", f"class: \"tied_pool:TiedPoolC\", size: 2, bug: {bug or 'null'}",
                         shape="{batch: 2, channels: 1, height: 4, width: 4}",
                         before=("conv: {filters: 2, kernel: 3, padding: 1}", "upsample: {scale: 2}"))
    rep = check(path, plugins=True)
    (pool_row,) = [r for r in rep.rows if r.ref.path == (2,) and r.ref.is_delta]
    assert pool_row.unresolved and pool_row.checked == 0 and pool_row.reason.startswith("on its kinks"), \
        (pool_row.status, pool_row.reason, pool_row.note)
    if bug is None:
        assert rep.passed and rep.return_code == 0, rep.localisation
        assert check(path, plugins=True, strict=True).return_code == 1
    else:
        assert rep.return_code == 1
        assert "or layer 2 (TiedPoolC) above it is: no entry of its δ could be checked" in rep.localisation, \
            rep.localisation


@pytest.mark.parametrize("size", [2, 3])
def test_the_layer_scope_names_a_layer_whose_kinks_no_link_could_check_before_the_wiring(tmp_path, size):
    """The layer scope's twin of the tests above (a QA pass): with the pool wrong only at its
    ties, every link that could be checked passes and only ∂C/∂x end to end fails — it said
    "every layer's backward checks out … the wiring is wrong", but the pool's δ at its kinks
    was never checked (it crosses them even alone).  It names the pool, and the wiring second;
    with the pool right, the check passes."""
    def config(bug):
        return plugin_config(tmp_path, "tied_pool", f"class: \"tied_pool:TiedPool\", size: {size}, "
                             f"bug: {bug or 'null'}", shape="{batch: 3, channels: 2, height: 5, width: 5}",
                             before=("conv: {filters: 3, kernel: 3}", "upsample: {scale: 2}"))

    assert check(config(None), plugins=True, scope="layer").passed
    wrong = check(config("ties_all"), plugins=True, scope="layer")
    assert wrong.return_code == 1 and not wrong.localisation.startswith("every layer's backward checks out")
    assert "layer 2 (TiedPool) is the likeliest" in wrong.localisation and "wiring" in wrong.localisation, \
        wrong.localisation
