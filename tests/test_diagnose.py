"""Never confidently wrong: a diagnosis only where its transform explains the numbers.

The oracle here is a closed form: δ and ∂W of a conv layer computed by a plain loop in the
test, then a known bug applied to them; the catalogue must name that bug (with its residual)
or say ``no known pattern`` — never another bug."""
from __future__ import annotations

import numpy as np
import pytest

from cnngrad.diagnose import NO_PATTERN, diagnose, geometry_of
from cnngrad.layers import Conv, Dense
from cnngrad.refs import TensorRef


def loop_delta(W: np.ndarray, delta: np.ndarray, in_hw: tuple[int, int], s: int, p: int, d: int) -> np.ndarray:
    """δ at a conv's input by the definition: every z[n,o,i,j] read ã[n,c,i·s+u·d,j·s+v·d]."""
    n, o, ho, wo = delta.shape
    _, c, k, _ = W.shape
    out = np.zeros((n, c, in_hw[0] + 2 * p, in_hw[1] + 2 * p))
    for i in range(ho):
        for j in range(wo):
            for u in range(k):
                for v in range(k):
                    out[:, :, i * s + u * d, j * s + v * d] += delta[:, :, i, j] @ W[:, :, u, v]
    return out[:, :, p:p + in_hw[0], p:p + in_hw[1]]


def conv_case(stride=1, padding=1, dilation=1, seed=0):
    rng = np.random.default_rng(seed)
    layer = Conv((2, 9, 9), rng, filters=3, kernel=3, stride=stride, padding=padding, dilation=dilation)
    a = rng.standard_normal((3, 2, 9, 9))
    d_out = rng.standard_normal((3,) + layer.out_shape)
    true = loop_delta(layer.params["W"], d_out, (9, 9), stride, padding, dilation)
    return layer, a, d_out, true


DELTA = TensorRef.delta(1)


def said(analytic, numeric, layer, a, d_out, ref=DELTA):
    return diagnose(analytic, numeric, ref, layer, a.shape[0], delta_out=d_out, a_prev=a, tol=1e-6)


def test_the_loop_oracle_is_the_layers_backward():
    layer, a, d_out, true = conv_case(stride=2, dilation=2, padding=2)
    _, cache = layer.forward(a)
    assert np.allclose(layer.backward(d_out, cache)[0], true, atol=1e-12)


@pytest.mark.parametrize("bug, phrase", [
    (lambda W: W[:, :, ::-1, ::-1], "the kernel's rotation is wrong"),
    (lambda W: W[:, :, :, ::-1], "one axis flipped (columns)"),
    (lambda W: W.swapaxes(2, 3), "a transposed kernel"),
])
def test_a_wrong_kernel_in_delta_is_named_with_its_residual(bug, phrase):
    layer, a, d_out, true = conv_case()
    wrong = loop_delta(bug(layer.params["W"]), d_out, (9, 9), 1, 1, 1)
    (line,) = said(wrong, true, layer, a, d_out)
    assert phrase in line and "(residual " in line


def test_dilation_ignored_is_named_from_the_layers_own_dilation():
    layer, a, d_out, true = conv_case(dilation=2, padding=2)
    wrong = loop_delta(layer.params["W"], d_out, (9, 9), 1, 2, 1)
    assert any("dilation ignored (1 where the layer has 2x2)" in t for t in said(wrong, true, layer, a, d_out))


@pytest.mark.parametrize("seed", range(20))
def test_unrelated_numbers_get_no_known_pattern(seed):
    """A mismatch no bug explains: random analytic against the true δ — never a diagnosis."""
    layer, a, d_out, true = conv_case(stride=1 + seed % 2, seed=seed)
    rng = np.random.default_rng(100 + seed)
    for analytic in (rng.standard_normal(true.shape), true + 0.1 * rng.standard_normal(true.shape),
                     true[:, ::-1].copy()):
        (line,) = said(analytic, true, layer, a, d_out)
        assert line.startswith(NO_PATTERN), line
        assert "entries wrong" in line and "samples" in line


def test_a_declared_geometry_that_does_not_fit_builds_nothing():
    """A plugin whose declared geometry is wrong: the model check fails, so no sentence is
    built from it — the rotated kernel then gets no conv-geometry diagnosis at all."""
    layer, a, d_out, true = conv_case()

    class Liar:
        params = layer.params
        geometry = {"op": "conv", "kernel": 3, "stride": 1, "padding": 0}  # padding is really 1

    assert geometry_of(Liar()).padding == (0, 0)
    wrong = loop_delta(layer.params["W"][:, :, ::-1, ::-1], d_out, (9, 9), 1, 1, 1)
    lines = said(wrong, true, Liar(), a, d_out)
    assert not any("backward of a conv" in t for t in lines), lines


def test_one_wrong_entry_is_located():
    layer, a, d_out, true = conv_case()
    wrong = true.copy()
    wrong[2, 1, 4, 5] += 1.0
    (line,) = said(wrong, true, layer, a, d_out)
    assert "one wrong entry ([2, 1, 4, 5]" in line


def test_dense_transpose_families():
    rng = np.random.default_rng(1)
    layer = Dense((6,), rng, units=6)
    a, d_out = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    W = layer.params["W"]
    assert "Wδ where Wᵀδ belongs" in said(d_out @ W.T, d_out @ W, layer, a, d_out)[0]
    dW = d_out.T @ a
    line = said(dW.T, dW, layer, a, d_out, TensorRef.param(1, "W"))[0]
    assert "transposed" in line and "(residual" in line


def test_stride_ignored_in_delta_is_named():
    layer, a, d_out, true = conv_case(stride=2)
    wrong = loop_delta(layer.params["W"], d_out, (9, 9), 1, 1, 1)  # the stride-2 layer's δ spread at stride 1
    assert any("stride ignored (1 where the layer has 2x2)" in t for t in said(wrong, true, layer, a, d_out))


def test_a_bias_mean_over_batch_and_positions_is_named():
    layer, a, d_out, _ = conv_case()
    db = d_out.sum(axis=(0, 2, 3))
    (line,) = said(d_out.mean(axis=(0, 2, 3)), db, layer, a, d_out, TensorRef.param(1, "b"))
    assert "= 1/(N·H·W) = 1/243" in line and "(residual" in line


def test_wrong_entries_are_named_only_when_they_are_a_minority() -> None:
    """"k wrong entries; every other entry matches" needs other entries: a 3-entry bias
    with every entry off (a float32 sum's rounding, say) is no single-entry bug."""
    from cnngrad.diagnose.case import Case
    from cnngrad.diagnose.facts import single_entries

    n = np.array([1.0, -2.0, 3.0])
    one = Case(np.array([1.0, -2.5, 3.0]), n, TensorRef.param((1,), "b"), None, None, 2, 1e-6)
    assert "one wrong entry" in (single_entries(one) or "")
    every = Case(n * (1 + 1e-3), n, TensorRef.param((1,), "b"), None, None, 2, 1e-6)
    assert single_entries(every) is None



def test_the_facts_of_a_flat_tensor_say_entries():
    """A 1-d tensor's axis is "entry": its fact reads "entries 0-2", not "entrys 0-2"."""
    from cnngrad.diagnose.case import Case
    from cnngrad.diagnose.facts import describe
    from cnngrad.refs import TensorRef
    said = describe(Case(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0]), TensorRef.param(0, "b"), None, None,
                         1, 1e-6))
    assert "3 of 3 entries wrong; entries all;" in said and "entrys" not in said


@pytest.mark.parametrize("batch, factor, coincidence", [(2, 2.0, True), (2, 0.5, True), (3, 3.0, False)])
def test_a_factor_equal_to_a_batch_of_2_is_not_only_a_batch_mean(batch, factor, coincidence) -> None:
    """δ twice the numeric one in a batch of 2: a batch mean where a sum belongs is one reading;
    any doubled term is another (a tie-routing pool below a concat block gave exactly 2, and the
    hint named only the batch mean).  A batch of 3 and a factor 3 keep the batch-mean hint alone."""
    from cnngrad.diagnose import _scale
    from cnngrad.diagnose.case import Case

    n = np.array([1.0, -2.0, 3.0, 0.5])
    said = _scale(Case(factor * n, n, TensorRef.delta(1), None, None, batch, 1e-6))
    assert said and "a batch mean where a sum belongs" in said[0]
    assert ("any factor of 2" in said[0]) == coincidence, said


def test_a_right_layer_below_a_delta_off_within_tol_is_not_blamed(tmp_path) -> None:
    """A batch norm passes down δ + 1e-5·mean_c(δ): its δ row passes (norm rel ~4e-7 < tol), the
    conv bias below (0 in truth; torch gives ~1e-16) fails at norm rel 1 — and the conv was
    named, though right for the δ it receives (a QA pass).  Its bias differenced through it
    alone by the complex step agrees with its backward: the blame goes up, to the norm; the
    right twin passes, and a conv whose own ∂W is wrong keeps the blame."""
    from oracles import plugin_config

    from cnngrad import check
    from cnngrad.layers import Conv

    def config(bug):
        return plugin_config(tmp_path, "bn_offset", f"class: \"bn_offset:BN\", bug: {bug or 'null'}",
                             shape="{batch: 4, channels: 2, height: 4, width: 4}",
                             before=("conv: {filters: 3, kernel: 3, padding: 1}",),
                             after=("activation: tanh", "conv: {filters: 2, kernel: 2}", "flatten: {}",
                                    "dense: {units: 3}"))

    wrong = check(config("offset"), plugins=True)
    assert not wrong.passed and wrong.culprit == 1, wrong.localisation
    assert wrong.localisation.startswith("layer 1 (BN) or a layer above it: the δ it passes down is off by less")
    assert check(config(None), plugins=True).passed
    original = Conv.backward

    def half_w(self, delta, cache):  # the first conv's own ∂W halved: its own fault
        back, grads = original(self, delta, cache)
        return back, ({**grads, "W": grads["W"] * 0.5} if self.out_shape[0] == 3 else grads)

    import pytest

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Conv, "backward", half_w)
        own = check(config(None), plugins=True)
    assert not own.passed and own.culprit == 0 and own.localisation.startswith("layer 0 (conv)"), own.localisation
