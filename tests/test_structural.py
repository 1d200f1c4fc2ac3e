"""Structural checks before the numbers: a backward that changes its cache or its δ, is not
reentrant, or gives gradients for δ = 0; a forward that is not a function of its input.
tests/plugins/reentrancy.py holds each bug beside its correct twin.  Each test first shows
the bug with its own calls (not cnngrad's), then that cnngrad FAILs the config at that layer
with the reason in words, and that the twin PASSes."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from oracles import central

from cnngrad import config as cfg
from cnngrad import structural
from cnngrad.checker import kinds_of
from cnngrad.cli import main
from cnngrad.network import build
from cnngrad.strategies import KNOWN_KINDS, configs

PLUGINS = Path(__file__).resolve().parent / "plugins"
spec = importlib.util.spec_from_file_location("reentrancy_for_the_test", PLUGINS / "reentrancy.py")
R = importlib.util.module_from_spec(spec)
spec.loader.exec_module(R)


def observe(cls: type, **options) -> set[str]:
    """What the test's own calls see, on a (2, 3, 4, 4) input and a random δ."""
    rng = np.random.default_rng(0)
    layer = cls((3, 4, 4), rng, **options)
    a = rng.normal(size=(2, 3, 4, 4))
    seen = set()
    out, cache = layer.forward(a.copy())
    if not np.array_equal(out, layer.forward(a.copy())[0]):
        seen.add("two forwards differ")
    delta = rng.normal(size=out.shape)
    given_delta = delta.copy()
    first = [np.array(g) for g in (lambda r: (r[0], *r[1].values()))(layer.backward(given_delta, cache))]
    if not np.array_equal(given_delta, delta):
        seen.add("the δ passed in changed")
    second = [np.array(g) for g in (lambda r: (r[0], *r[1].values()))(layer.backward(delta.copy(), cache))]
    if not all(np.array_equal(f, s) for f, s in zip(first, second)):
        seen.add("two backwards differ")
    else:  # a forward on another input between them (of the same shape, then of one sample)
        for other in (rng.normal(size=a.shape), rng.normal(size=(1,) + a.shape[1:])):
            layer.forward(other)
            try:
                third = [np.array(g) for g in (lambda r: (r[0], *r[1].values()))(layer.backward(delta.copy(), cache))]
            except ValueError:  # the other input's shape, taken from the layer: no backward of this δ
                seen.add("a forward in between changes backward")
                continue
            if not all(f.shape == t.shape and np.array_equal(f, t) for f, t in zip(first, third)):
                seen.add("a forward in between changes backward")
        for name, P in list(layer.params.items()):  # a forward with other parameter values between them
            layer.params[name] = P * 0.75
            layer.forward(a.copy())
            layer.params[name] = P
            third = [np.array(g) for g in (lambda r: (r[0], *r[1].values()))(layer.backward(delta.copy(), cache))]
            if not all(np.array_equal(f, t) for f, t in zip(first, third)):
                seen.add("a forward with other parameters changes backward")
        layer.forward(a.copy())
    zero = layer.backward(np.zeros_like(delta), cache)
    if np.any(zero[0] != 0) or any(np.any(g != 0) for g in zero[1].values()):
        seen.add("zero δ gives non-zero gradients")
    if not np.array_equal(out, layer.forward(a.copy())[0]):
        seen.add("a later forward differs")
    return seen


STATE = ("backward reads state the layer keeps from its last forward call, not only its cache: after a forward on "
         "another input, backward(δ, cache) of the first call gives different numbers")
CASES = [  # class, bug, what the test's own calls see, cnngrad's reason
    ("TanhCache", "cache_in_place", {"two backwards differ"}, "backward changes its cache"),
    ("TanhDelta", "delta_in_place", {"the δ passed in changed"}, "backward changes the δ it is given"),
    ("GainAccumulate", "accumulate", {"two backwards differ", "zero δ gives non-zero gradients"},
     "backward is not reentrant: a second call on the same cache and δ gives different numbers"),
    ("DropoutRedraw", "redraw", {"two forwards differ", "a later forward differs"},
     "forward is not deterministic: a second call on the same input gives different numbers"),
    ("GainDecay", "decay", {"zero δ gives non-zero gradients"}, "an all-zero δ gives non-zero gradients (g)"),
    ("TanhDrift", "drift", {"a later forward differs"},
     "forward is not deterministic: after calls on other inputs, a call on the same input gives different numbers"),
    ("TanhLast", "last_forward", {"a forward in between changes backward"}, STATE),
    ("ActiveGain", "self_state", {"a forward in between changes backward"}, STATE),
    ("MeanPool", "state", {"a forward in between changes backward"}, STATE),
    ("NormState", "state_norm", {"a forward in between changes backward"}, STATE),
    ("GainLastW", "last_w", {"a forward with other parameters changes backward"},
     STATE.replace("on another input", "with other parameter values")),
]


def config_for(tmp_path: Path, cls: str, bug: str | None, extra: str = "") -> Path:
    (tmp_path / "reentrancy.py").write_text((PLUGINS / "reentrancy.py").read_text())
    path = tmp_path / f"{cls}_{bug}.yaml"
    path.write_text(f"name: {cls}_{bug}\nseed: 1\ninput: {{batch: 3, channels: 2, height: 6, width: 6}}\nlayers:\n"
                    f"  - conv: {{filters: 3, kernel: 3}}\n"
                    f"  - custom: {{class: \"reentrancy:{cls}\", bug: {bug or 'null'}{extra}}}\n"
                    f"  - flatten: {{}}\n  - dense: {{units: 4}}\nloss: softmax_cross_entropy\n")
    return path


@pytest.mark.parametrize("cls, bug, seen, reason", CASES)
def test_each_bug_fails_at_its_layer_with_the_reason(tmp_path, cls, bug, seen, reason):
    assert observe(getattr(R, cls), bug=bug) == seen  # the bug, shown without cnngrad
    result = CliRunner().invoke(main, ["check", str(config_for(tmp_path, cls, bug)), "--plugins"])
    assert result.exit_code == 1, result.output
    assert f"structural: layers[1] {cls}: {reason}\n" in result.stdout
    assert "structural failure" in result.stdout.splitlines()[-1]  # the summary says why it failed
    assert not any(ln.startswith("structural: layers[0]") or ln.startswith("structural: layers[3]")
                   for ln in result.stdout.splitlines())  # the built-in layers around it are fine


@pytest.mark.parametrize("cls, extra", [(c[0], "") for c in CASES] + [("GainAccumulate", ", reuse_buffer: true")])
def test_the_correct_twins_pass(tmp_path, cls, extra):
    options = {"reuse_buffer": True} if extra else {}
    assert observe(getattr(R, cls), bug=None, **options) == set()
    result = CliRunner().invoke(main, ["check", str(config_for(tmp_path, cls, None, extra)), "--plugins"])
    assert result.exit_code == 0, result.output
    assert "structural" not in result.stdout


@pytest.mark.parametrize("holder", ["namespace", "tuple", "torch"])
def test_a_reused_buffer_held_in_any_cache_is_not_taken_for_state(tmp_path, holder):
    """A QA pass: held in a SimpleNamespace or a torch tensor (not a tuple), the buffer a later
    forward overwrites was out of the snapshot's sight, and the correct layer was failed for
    "backward reads state the layer keeps"."""
    if holder == "torch":
        pytest.importorskip("torch")
    result = CliRunner().invoke(main, ["check", str(config_for(tmp_path, "TanhBuffer", None, f", holder: {holder}")),
                                       "--plugins"])
    assert result.exit_code == 0, result.output
    assert "structural" not in result.stdout


def test_json_junit_and_markdown_carry_the_structural_failure(tmp_path):
    path = str(config_for(tmp_path, "TanhCache", "cache_in_place"))
    result = CliRunner().invoke(main, ["check", path, "--plugins", "--format", "json"])
    data = json.loads(result.stdout)
    schema = json.loads((Path(cfg.__file__).parent / "schemas" / "report.schema.json").read_text())
    jsonschema.validate(data, schema)
    assert data["configs"][0]["structural"] == ["layers[1] TanhCache: backward changes its cache"]
    assert data["configs"][0]["passed"] is False and data["configs"][0]["return_code"] == 1
    assert all(r["status"] == "pass" for r in data["configs"][0]["records"])  # the numbers alone pass
    result = CliRunner().invoke(main, ["check", path, "--plugins", "--format", "junit"])
    assert 'type="StructuralFailure"' in result.stdout and 'failures="1"' in result.stdout
    result = CliRunner().invoke(main, ["check", path, "--plugins", "--format", "markdown"])
    assert "- structural: layers[1] TanhCache: backward changes its cache" in result.stdout
    assert "❌ fail" in result.stdout


def test_a_layer_that_reuses_its_output_buffer_is_not_mistaken_for_nondeterministic():
    class Buffered:  # correct: the same output array, overwritten by each call
        params: dict = {}

        def __init__(self):
            self.out = None

        def forward(self, a):
            if self.out is None or self.out.shape != a.shape:
                self.out = np.empty_like(a)
            np.tanh(a, out=self.out)
            return self.out, self.out

        def backward(self, delta, a):
            return delta * (1 - a * a), {}

    class Noisy(Buffered):  # the same buffer, but a different number each call
        calls = 0

        def forward(self, a):
            out, cache = super().forward(a)
            Noisy.calls += 1
            out += 1e-12 * Noisy.calls
            return out, cache

    x = np.random.default_rng(0).normal(size=(2, 3))
    assert structural.check([Buffered()], x, ["Buffered"], 0) == []
    assert structural.check([Noisy()], x, ["Noisy"], 0) == [
        "layers[0] Noisy: forward is not deterministic: a second call on the same input gives different numbers"]


def test_every_shipped_config_is_structurally_sound():
    for name in cfg.shipped_configs():
        problem = build(cfg.load(name))
        assert structural.check(problem.net.layers, problem.x, kinds_of(problem.net), 0) == [], name


@settings(max_examples=60)
@given(configs(max_layers=5, dtypes=("float64", "float32")))
def test_random_valid_configs_of_built_in_layers_are_structurally_sound(raw):
    """No false FAIL: every built-in layer (relu, max pool, float32 included) passes."""
    problem = build(cfg.validate(raw))
    with np.errstate(all="ignore"):
        assert structural.check(problem.net.layers, problem.x, kinds_of(problem.net), 0) == []


# --------------------------------------------------------------------------- backward(2δ) = 2·backward(δ)


def _subnormal(a) -> bool:
    a = np.asarray(a)
    return a.dtype.kind == "f" and bool(np.any((a != 0) & (np.abs(a) < np.finfo(a.dtype).tiny)))


def counting(layers: list, subnormal: list[bool] | None = None) -> list[int]:
    """Wrap each layer's backward to count its calls (an instance attribute: the class
    untouched); ``subnormal[i]``: whether a call of layer i returned a subnormal number."""
    calls = [0] * len(layers)
    for i, layer in enumerate(layers):
        original = layer.backward

        def counted(delta, cache, i=i, original=original):
            calls[i] += 1
            out = original(delta, cache)
            if subnormal is not None:
                subnormal[i] |= _subnormal(out[0]) or any(_subnormal(g) for g in out[1].values())
            return out

        layer.backward = counted
    return calls


@settings(max_examples=60)
@given(configs(max_layers=5, dtypes=("float64", "float32"), kinds=KNOWN_KINDS))
def test_every_built_in_backward_is_exactly_2x_for_2_delta(raw):
    """The shortcut holds where it is taken: each built-in layer's backward is called twice
    (δ, then 2δ giving 2x bit for bit) and once more after each forward on another input (¾a,
    a's entries reversed, −a, a[:1]: not where that is a itself) and after one with its
    parameters at ¾ (a layer with some), never the calls of the fallback — unless its
    results reach the subnormal numbers, where rounding is not scale-free (2x can miss: a
    leaky relu of slope 1e-38 in float32, found by hypothesis)."""
    problem = build(cfg.validate(raw))
    subnormal = [False] * len(problem.net.layers)
    calls = counting(problem.net.layers, subnormal)
    with np.errstate(all="ignore"):
        assert structural.check(problem.net.layers, problem.x, kinds_of(problem.net), 0) == []
    # 0: a layer after a non-finite output is skipped
    assert all(c in (0, 2, 3, 4, 5, 6, 7) or sub for c, sub in zip(calls, subnormal)), (calls, subnormal)


class RoundTrip:
    """Correct, but not exactly homogeneous: δ goes through (δ + 3) − 3, whose rounding depends
    on δ's scale, so backward(2δ) misses 2·backward(δ) in the last bits (3, not 1: the checks'
    uniform δ lies on a grid of 2⁻⁵², which 1 + δ keeps exactly)."""

    params: dict = {}

    def forward(self, a):
        return 3.0 * a, None

    def backward(self, delta, cache):
        return 3.0 * ((delta + 3.0) - 3.0), {}


def test_a_right_backward_that_misses_2x_by_rounding_is_not_failed():
    x = np.random.default_rng(0).normal(size=(2, 5))
    layer = RoundTrip()
    delta = np.random.default_rng(1).normal(size=(2, 5))
    once = layer.backward(delta, None)[0]
    assert not np.array_equal(layer.backward(2 * delta, None)[0], 2 * once)  # the shortcut misses
    calls = counting([layer])
    assert structural.check([layer], x, ["RoundTrip"], 0) == []  # …and nothing is failed for it
    assert calls == [8]  # δ, 2δ, then δ again and 0 one by one, and δ after each forward on another input


def test_a_constant_in_the_backward_still_fails_when_2x_misses():
    """Weight decay folded in: 2x misses, and the all-zero δ call names the cause."""
    class Decayed(RoundTrip):
        def backward(self, delta, cache):
            return 3.0 * delta + 1e-3, {}

    x = np.random.default_rng(0).normal(size=(2, 5))
    assert structural.check([Decayed()], x, ["Decayed"], 0) == [
        "layers[0] Decayed: an all-zero δ gives non-zero gradients (δ)"]


def test_state_is_still_seen_behind_a_cache_of_plain_values():
    """A cache that holds a dtype, a class or a number beside its arrays is seen whole — those
    cannot change — so a backward that reads state kept on the layer is still failed (the torch
    adapter's cache holds its input's dtype: the check must run there too)."""
    class Kept:
        params: dict = {}

        def forward(self, z):
            self.a = np.tanh(z)
            return self.a, (self.a.copy(), self.a.dtype, type(self), 3)

        def backward(self, delta, cache):
            return delta * (1 - self.a * self.a), {}

    x = np.random.default_rng(0).normal(size=(2, 3))
    assert structural.check([Kept()], x, ["Kept"], 0) == [f"layers[0] Kept: {STATE}"]
    torch = pytest.importorskip("torch")
    from cnngrad.torch_adapter import adapter

    layer = adapter(torch.nn.Tanh)((3,), np.random.default_rng(0))
    assert structural.seen_whole(structural.snapshot(layer.forward(x)[1], skip=layer))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_backward_narrower_than_its_network_is_noted(tmp_path, dtype):
    """A numpy layer computing its δ in float32 inside a float64 network passes at tol 1e-6 —
    its rounding (~6e-8) is below it — silently, before: now a note names the layer and what it
    returns; its float64 twin gets none."""
    (tmp_path / "narrow.py").write_text(
        "import numpy as np\n\n\nclass Tanh:\n    per_sample = True\n\n"
        "    def __init__(self, in_shape, rng, dtype='float64'):\n"
        "        self.out_shape, self.params, self.dtype = tuple(in_shape), {}, dtype\n\n"
        "    def forward(self, z):\n        a = np.tanh(z)\n        return a, a\n\n"
        "    def backward(self, delta, a):\n        return (delta * (1 - a * a)).astype(self.dtype), {}\n")
    path = tmp_path / "narrow.yaml"
    path.write_text("seed: 0\ninput: {batch: 2, channels: 2, height: 5, width: 5}\nlayers:\n"
                    "  - conv: {filters: 2, kernel: 3}\n"
                    f"  - custom: {{class: \"narrow:Tanh\", dtype: {dtype}}}\n"
                    "  - flatten: {}\n  - dense: {units: 3}\nloss: mse\n")
    result = CliRunner().invoke(main, ["check", str(path), "--plugins"])
    assert result.exit_code == 0, result.output
    noted = "note: layers[1] Tanh: backward returns δ float32 in a float64 network" in result.stdout
    assert noted is (dtype == "float32"), result.stdout


@pytest.mark.parametrize("bug", [None, "detached"])
def test_one_output_buffer_returned_by_every_call_is_differenced_right(tmp_path, bug):
    """A layer returning one buffer, overwritten by each call, and not per_sample: the differences
    kept each perturbed copy's output side by side — every one the last — so every numeric
    gradient below it was 0: a backward passing down δ = 0 PASSED, the right one FAILED (a QA
    pass).  Outputs are copied as they come (network.PluginLayer): the right twin passes at
    rounding, the wrong one fails, and the test's own loop agrees with the right one."""
    from cnngrad import config as cfg_mod
    from cnngrad.checker import check
    from cnngrad.network import build

    path = config_for(tmp_path, "TanhBufferCoupled", bug)
    rep = check(str(path), plugins=True)
    problem = build(cfg_mod.load(str(path), plugins=True))
    net, x, y = problem.net, problem.x, problem.y

    def loss() -> float:
        a = x
        for layer in net.layers:
            a = np.array(layer.forward(a)[0], copy=True)
        return float(np.sum(net.loss.per_sample(a, y))) / x.shape[0]

    b = net.layers[0].params["b"]
    truth = central(loss, b)
    (row,) = [r for r in rep.rows if r.ref.path == (0,) and r.ref.name == "b"]
    assert np.allclose(row.numeric, truth[row.indices], rtol=1e-6, atol=1e-9), (row.numeric, truth)
    if bug is None:
        assert rep.passed and rep.return_code == 0 and row.metrics.norm_rel < 1e-8, rep.localisation
    else:
        assert rep.return_code == 1 and not row.passed
