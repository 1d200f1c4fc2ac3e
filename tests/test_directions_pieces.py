"""Along a direction, relu / leaky relu / max pooling are held on the unperturbed point's piece
(``forward_on_piece``, ``FiniteDifferences.directional``).

A direction moves every unit of the network at once: on a net of ~10⁴ relu and max-pool units a
step of 1e-6 along it crossed some unit's kink for most directions, so ``--directions 1`` fell
back to entry-by-entry differences of every entry.  Held on the piece, nothing is crossed, and
the quotient is still ∇C·v — proven here against torch autograd, which never differences — and
a wrong relu or max-pool backward still fails.
"""
from __future__ import annotations

import numpy as np
import pytest

from cnngrad import check
from cnngrad.checker import save_npz
from cnngrad.finite_diff.engine import FiniteDifferences
from cnngrad.layers import Activation, Pool
from cnngrad.layers_modern import GlobalPool
from cnngrad.refs import TensorRef

CONFIG = {
    "name": "pieces", "seed": 3, "dtype": "float64", "init": "he",
    "input": {"batch": 3, "channels": 2, "height": 16, "width": 16},
    "layers": [
        {"conv": {"filters": 6, "kernel": 3, "padding": 1}}, {"activation": "relu"},
        {"pool": {"kind": "max", "size": 2}},
        {"conv": {"filters": 8, "kernel": 3, "padding": 1}}, {"activation": "leaky_relu"},
        {"pool": {"kind": "max", "size": 3, "stride": 2}},
        {"conv": {"filters": 8, "kernel": 3}}, {"activation": "relu"},
        {"global_pool": {"kind": "max"}}, {"dense": {"units": 5}},
    ],
    "loss": "softmax_cross_entropy",
}
EPS = 1e-4  # a larger step than the default 1e-6 crosses more kinks on this small net; on the
# piece its truncation error is still ~EPS² (the test's tolerance 1e-6 holds it)
TARGETS = [TensorRef.param(0, "W"), TensorRef.param(0, "b"), TensorRef.param(3, "W"), TensorRef.param(6, "W"),
           TensorRef.delta(0), TensorRef.delta(2)]


# --------------------------------------------------------------------------- the layers' pieces


@pytest.mark.parametrize("make, shape", [
    (lambda s, r: Activation(s, r, function="relu"), (3, 5, 5)),
    (lambda s, r: Activation(s, r, function="leaky_relu", alpha=0.2), (3, 5, 5)),
    (lambda s, r: Pool(s, r, kind="max", size=2), (3, 6, 6)),
    (lambda s, r: Pool(s, r, kind="max", size=3, stride=2), (3, 7, 7)),  # overlapping windows
    (lambda s, r: GlobalPool(s, r, kind="max"), (3, 4, 4)),
])
def test_on_its_piece_a_layer_is_its_forward_and_stays_there_past_a_kink(make, shape):
    rng = np.random.default_rng(0)
    layer = make(shape, rng)
    a = rng.standard_normal((4,) + shape)
    out, cache = layer.forward(a)
    state = layer.kink_state(cache)
    assert np.array_equal(layer.forward_on_piece(a, state), out)  # bit for bit at the point
    small = a + 1e-9 * rng.standard_normal(a.shape)  # crosses nothing (checked)
    out_small, cache_small = layer.forward(small)
    assert np.array_equal(layer.kink_state(cache_small), state)
    assert np.array_equal(layer.forward_on_piece(small, state), out_small)
    big = a + rng.standard_normal(a.shape)  # crosses: the piece is not the forward any more
    out_big, cache_big = layer.forward(big)
    assert not np.array_equal(layer.kink_state(cache_big), state)
    held = layer.forward_on_piece(big, state)
    assert not np.array_equal(held, out_big)
    # on the piece the layer is linear in its input: the piece's map applied to the move
    assert np.allclose(held - out, layer.forward_on_piece(big - a, state), atol=1e-12)


# --------------------------------------------------------------------------- ∇C·v against torch


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory):
    report = check(CONFIG, directions=2, workers=1, eps=EPS)
    path = tmp_path_factory.mktemp("pieces") / "run.npz"
    save_npz(report, path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    return report, arrays


def test_the_directions_are_checked_along_and_not_crossed(checked):
    report, _ = checked
    assert report.passed
    for row in report.rows:
        assert row.mode == "directions" and not row.kink_mask.any(), row.ref


def test_along_a_direction_the_quotient_is_torchs_gradient_where_the_forward_crossed_kinks(checked):
    torch_oracle = pytest.importorskip("tests.test_torch_oracle")
    report, arrays = checked
    _, grads = torch_oracle.torch_gradients(CONFIG, arrays)
    net, x, y = report.problem.net, report.problem.x, report.problem.y
    fd = FiniteDifferences(net, x, y, EPS, "central", workers=1)
    rng = np.random.default_rng(11)
    crossed_somewhere = False
    for ref in TARGETS:
        key = "grad.input" if ref == TensorRef.delta(0) else None
        if ref.is_delta and key is None:  # δ inside the net: torch's gradient at that activation
            continue
        key = key or f"grad.layers.{ref.index}.{ref.name}"
        g = grads[key].reshape(-1)
        V = rng.standard_normal((6, g.size))
        V /= np.linalg.norm(V, axis=1, keepdims=True)
        along, kinks = fd.directional(ref, V)
        assert not kinks.any()
        expected = V @ g
        assert np.allclose(along, expected, rtol=1e-6, atol=1e-7 * np.linalg.norm(g)), (ref, along, expected)
        # the same directions with every layer's kinks counted, as before: some cross
        start = ref.index if ref.is_delta else ref.index + 1
        crossed_somewhere |= bool(_crossed_off_piece(fd, ref, V, start).any())
    assert crossed_somewhere, "the net is meant to cross kinks along these directions off the piece"


def _crossed_off_piece(fd: FiniteDifferences, ref: TensorRef, V: np.ndarray, start: int) -> np.ndarray:
    original = fd._losses
    fd._losses = lambda a, s, samples, copies, on_piece=False: original(a, s, samples, copies)  # type: ignore
    try:
        return fd._directional(ref, V, start)[1]
    finally:
        fd._losses = original  # type: ignore


# --------------------------------------------------------------------------- bugs still fail


def _bad_relu_backward(self, delta, cache):
    z, _ = cache
    return delta * (z > -0.05), {}  # lets a little δ through below the kink


def _bad_pool_backward(self, delta, cache):
    shape, _ = cache
    out = np.zeros(shape, dtype=delta.dtype)
    for t, tap in self._taps(out):
        if t == 0:
            tap += delta  # every window's δ to its first tap, not its maximum
    return out, {}


@pytest.mark.parametrize("scope", ["network", "layer"])
@pytest.mark.parametrize("cls, bad, layers", [(Activation, _bad_relu_backward, {1, 4, 7}),
                                              (Pool, _bad_pool_backward, {2, 5})])
def test_a_wrong_relu_or_max_pool_backward_still_fails_along_a_direction(monkeypatch, cls, bad, layers, scope):
    """Every layer of the class is wrong: the one named is one of them."""
    monkeypatch.setattr(cls, "backward", bad)
    report = check(CONFIG, directions=1, workers=1, samples=20, scope=scope)
    assert not report.passed
    assert report.culprit in layers, (report.culprit, report.localisation)
    # found along the direction first (then checked entry by entry, for the diagnosis)
    assert any(not row.passed and (row.note or "").startswith("failed along 1 directions") for row in report.rows)


def test_the_layer_scope_holds_each_links_pieces_too():
    """Each link of the layer scope along a direction: a relu's or max pool's input moved is
    held on its piece (a window of tied relu zeros was crossed by every direction, and the
    link fell back to all its entries); the links of the pieces pass along their direction."""
    report = check(CONFIG, directions=1, workers=1, scope="layer")
    assert report.passed
    pieces = [row for row in report.rows if row.ref.is_delta and row.ref.index in {2, 5, 8}]  # relu → max pool
    assert len(pieces) == 3
    for row in pieces:
        assert row.mode == "directions" and not row.kink_mask.any(), (row.ref, row.note)
