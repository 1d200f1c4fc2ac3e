"""Honest verdicts (issue 10, items 4, 5): the complex step only where every layer carries an
imaginary part; UNRESOLVED below the resolution of the differences (never PASS, never
FAIL); a tensor none of whose entries could be compared FAILs.  Each verdict is proven
against an oracle of the test's own: torch autograd, a closed form, or a plain loop of
central differences written here."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from oracles import central as naive_central
from oracles import plugin_config

from cnngrad import check
from cnngrad import config as cfg
from cnngrad.cli import main
from cnngrad.compare import judge
from cnngrad.complex_probe import ComplexProbe
from cnngrad.network import build
from cnngrad.refs import TensorRef
from cnngrad.resolution import Floor

PLUGINS = Path(__file__).resolve().parent / "plugins"
SCHEMA = Path(__file__).resolve().parents[1] / "cnngrad" / "schemas" / "report.schema.json"


def run(*args: str):
    return CliRunner().invoke(main, ["check", *args])


def write(tmp_path: Path, raw: dict, name: str = "net") -> Path:
    """A config file in tmp_path, beside a copy of tests/plugins/complex_layers.py."""
    shutil.copy(PLUGINS / "complex_layers.py", tmp_path / "complex_layers.py")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def custom(cls: str, **options) -> dict:
    return {"custom": {"class": f"complex_layers:{cls}", **options}}


def net(*middle: dict, seed: int = 0) -> dict:
    """conv -> the given layers -> flatten -> dense, MSE, on a 2x1x4x4 input."""
    return {"seed": seed, "input": {"batch": 2, "channels": 1, "height": 4, "width": 4},
            "layers": [{"conv": {"filters": 2, "kernel": 3, "padding": 1}}, *middle, {"flatten": {}},
                       {"dense": {"units": 3}}], "loss": "mse"}


def loss_of(p) -> float:
    a = p.x
    for layer in p.net.layers:
        a, _ = layer.forward(a)
    return float(np.mean(p.net.loss.per_sample(a, p.y)))


# --------------------------------------------------------------------------- complex step availability

REAL_ONLY = [("RealPart", "returns a real array"), ("FloatBuffer", "raised ComplexWarning"),
             ("FourierBlur", "raised TypeError")]


@pytest.mark.parametrize("cls, why", REAL_ONLY)
def test_the_probe_finds_a_layer_that_drops_the_imaginary_part(tmp_path, cls, why):
    p = build(cfg.load(str(write(tmp_path, net(custom(cls)))), plugins=True))
    # the oracle: what the layer does to an imaginary part, seen directly
    a = p.x + 1e-20j * np.ones_like(p.x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            kept = np.iscomplexobj(p.net.layers[1].layer.forward(p.net.layers[0].forward(a)[0])[0])
        except TypeError:
            kept = False
    assert not kept
    probe = ComplexProbe(p.net, p.x)
    said = probe.unavailable(0)
    assert said.startswith(f"complex step not available for layer 1 ({cls}): ") and why in said
    assert probe.unavailable(0, "W") == said  # a parameter of layer 0 passes through layer 1 too
    assert probe.unavailable(2) == "" and probe.unavailable(3, "W") == ""  # after it, all built-in


def test_the_probe_passes_a_correct_undeclared_layer_and_checks_each_parameter(tmp_path):
    p = build(cfg.load(str(write(tmp_path, net(custom("SatTanh", k=0.5), custom("RealBias")))), plugins=True))
    assert not hasattr(p.net.layers[1].layer, "complex_safe")  # undeclared: it was probed
    probe = ComplexProbe(p.net, p.x)
    assert probe.why_not(1) == ""  # tanh keeps Im in complex arithmetic
    assert probe.why_not(2) == ""  # z + b keeps the imaginary part of z …
    assert "returns a real array" in probe.why_not(2, "b")  # … but not of b
    assert probe.unavailable(2, "b").startswith("complex step not available for layer 2 (RealBias)")
    assert probe.unavailable(0) == ""


@pytest.mark.parametrize("cls", [c for c, _ in REAL_ONLY])
def test_a_lost_imaginary_part_is_never_a_confirmation(tmp_path, cls):
    """A wrong ∂C/∂s (Scale, bug double) before a real-only layer: FAIL, and the row says the
    complex step is not available instead of "the complex step confirms it"."""
    path = write(tmp_path, net(custom("Scale", bug="double"), custom(cls)))
    p = build(cfg.load(str(path), plugins=True))
    loss, _, grads = p.net.gradients(p.x, p.y)
    truth = naive_central(lambda: loss_of(p), p.net.layers[1].params["s"])
    assert np.allclose(grads[1]["s"], 2 * truth, rtol=1e-6)  # the oracle: the backward is wrong by 2x
    report = check(str(path), plugins=True)
    row = next(r for r in report.rows if r.layer == 1 and r.tensor == "s")
    assert row.status == "fail" and report.return_code == 1
    assert f"complex step not available for layer 2 ({cls})" in row.note
    assert "confirms" not in row.note
    # its correct twin passes: the central differences alone decide
    twin = write(tmp_path, net(custom("Scale"), custom(cls)), "twin")
    assert check(str(twin), plugins=True).return_code == 0


def test_a_false_declaration_that_warns_is_caught_in_the_run(tmp_path):
    """A user's complex_safe is shown by the probe before it is used: numpy's ComplexWarning
    there means not available, never a confirmation (and --method complex exits 2 naming it)."""
    report = check(str(write(tmp_path, net(custom("Scale", bug="double"), custom("DeclaredFloatBuffer")))),
                   plugins=True)
    row = next(r for r in report.rows if r.tensor == "s")
    assert row.failed and "complex step not available" in row.note and "ComplexWarning" in row.note
    assert "confirms" not in row.note
    result = run(str(tmp_path / "net.yaml"), "--plugins", "--method", "complex")
    assert result.exit_code == 2 and "(DeclaredFloatBuffer): declared complex_safe, but its forward raised " \
        "ComplexWarning" in result.stderr, result.stderr


def test_the_complex_step_still_confirms_through_layers_that_carry_it(tmp_path):
    report = check(str(write(tmp_path, net(custom("Scale", bug="double"), custom("SatTanh")))), plugins=True)
    row = next(r for r in report.rows if r.tensor == "s")
    assert row.failed and "the complex step confirms it" in row.note


@pytest.mark.parametrize("how", ["flag", "config"])
def test_method_complex_on_a_real_only_layer_exits_2_with_one_line(tmp_path, how):
    raw = net(custom("FourierBlur"))
    if how == "config":
        raw["check"] = {"method": "complex"}
    result = run(str(write(tmp_path, raw)), "--plugins", *(["--method", "complex"] if how == "flag" else []))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "complex step not available for layer 1 (FourierBlur)" in lines[0], lines
    assert "Traceback" not in result.output
    if how == "flag":  # the step sweep's --method complex too
        sweep = CliRunner().invoke(main, ["sweep", str(tmp_path / "net.yaml"), "--plugins", "--method", "complex"])
        assert sweep.exit_code == 2 and "complex step not available for layer 1 (FourierBlur)" in sweep.stderr
    # a layer that carries it: the complex step runs, and agrees
    ok = run(str(write(tmp_path, net(custom("SatTanh")), "ok")), "--plugins", "--method", "complex")
    assert ok.exit_code == 0, ok.output


# --------------------------------------------------------------------------- the resolution floor


def test_the_largest_gradient_is_the_largest_finite_entry_of_every_array():
    """G, the floor's size of the gradients: one max of |a| where every entry is finite, else
    over the finite ones — the same as a loop over every entry of every array."""
    from cnngrad import resolution

    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal((3, 4)) * s for s in (1e-3, 2.0, 1e-200)] + [np.zeros(0)]
    spoilt = arrays[0].copy()
    spoilt[1, 2], spoilt[0, 0] = np.nan, -np.inf  # the largest finite |entry| stays what it was
    cases = [arrays, [spoilt], [spoilt, -5.0 * arrays[2]], [np.full(3, np.nan)], [np.zeros(0)], []]
    for case in cases:
        loop = max([abs(float(v)) for a in case for v in a.reshape(-1) if np.isfinite(v)], default=0.0)
        assert resolution.largest(case) == loop

SATURATED = {"seed": 14, "input": {"batch": 2, "channels": 1, "height": 2, "width": 2}, "init": {"normal": 40.0},
             "layers": [{"flatten": {}}, {"dense": {"units": 3}}], "loss": "softmax_cross_entropy"}


def test_a_saturated_softmax_is_unresolved_not_blamed():
    """Loss exactly 0, true gradients ~1e-50 (torch autograd): central differences and the
    complex step give 0 for δ input; the correct dense layer is not blamed."""
    torch = pytest.importorskip("torch")
    p = build(cfg.validate(SATURATED))
    W, b = p.net.layers[1].params["W"], p.net.layers[1].params["b"]
    xt = torch.tensor(p.x.reshape(2, -1), requires_grad=True)
    Wt, bt = torch.tensor(W, requires_grad=True), torch.tensor(b, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(xt @ Wt.T + bt, torch.tensor(p.y))
    loss.backward()
    assert loss.item() == 0.0
    true_dx = xt.grad.numpy().reshape(p.x.shape)
    assert 0 < np.abs(true_dx).max() < 1e-40  # tiny, not zero
    _, dx, grads = p.net.gradients(p.x, p.y)
    np.testing.assert_allclose(dx, true_dx, rtol=1e-9, atol=0)  # the backward is right
    np.testing.assert_allclose(grads[1]["W"], Wt.grad.numpy(), rtol=1e-9, atol=0)

    report = check(cfg.validate(SATURATED))
    assert not report.failures and report.localisation == ""
    row = report.rows[0]
    assert row.tensor == "input" and row.status == "unresolved"
    assert np.all(row.numeric == 0)
    assert "below the resolution" in row.reason and "at loss 0" in row.reason and "rescale" in row.reason
    assert "the complex step gives ~0 too" in row.note
    # W and b: below central differences' resolution, resolved by the complex step, right
    for r in report.rows[1:]:
        assert r.passed and "the complex step, free of rounding, agrees" in r.note
        np.testing.assert_allclose(r.numeric, {"W": Wt, "b": bt}[r.tensor].grad.numpy().ravel(), rtol=1e-9)
    assert report.return_code == 0
    assert check(cfg.validate(SATURATED), strict=True).return_code == 1
    assert check(cfg.validate(SATURATED), method="complex").rows[0].status == "unresolved"


def test_unresolved_stays_so_where_the_complex_step_is_not_available(tmp_path):
    raw = {**SATURATED, "layers": [custom("RealPart"), *SATURATED["layers"]]}
    report = check(str(write(tmp_path, raw)), plugins=True)
    first = report.rows[0]
    assert first.tensor == "input" and first.unresolved
    assert "complex step not available for layer 0 (RealPart)" in first.note
    dense = [r for r in report.rows if r.layer == 2]
    assert dense and all(r.passed and "the complex step, free of rounding, agrees" in r.note for r in dense)
    assert report.return_code == 0


def test_unresolved_in_every_format_and_exit_codes(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    path = tmp_path / "saturated.yaml"
    path.write_text(yaml.safe_dump(SATURATED))
    table = run(str(path))
    assert table.exit_code == 0, table.output
    assert "UNRESOLVED" in table.stdout and "below the resolution" in table.stdout
    assert "1 unresolved" in table.stdout and "backward is wrong" not in table.stdout
    strict = run(str(path), "--strict")
    assert strict.exit_code == 1 and "FAILED" in strict.stdout and "--strict fails them" in strict.stdout
    data = json.loads(run(str(path), "--format", "json").stdout)
    jsonschema.validate(data, json.loads(SCHEMA.read_text()))
    statuses = [r["status"] for r in data["configs"][0]["records"]]
    assert statuses[0] == "unresolved" and "below the resolution" in data["configs"][0]["records"][0]["note"]
    assert data["configs"][0]["return_code"] == 0
    assert json.loads(run(str(path), "--format", "json", "--strict").stdout)["configs"][0]["return_code"] == 1
    junit = run(str(path), "--format", "junit").stdout
    assert 'skipped="1"' in junit and "<skipped" in junit and "unresolved: gradients" in junit
    assert "UNRESOLVED" in run(str(path), "--format", "markdown").stdout


def test_a_bug_in_an_unsaturated_net_is_fail_not_unresolved(tmp_path):
    path = write(tmp_path, net(custom("SatTanh", bug="identity")))
    p = build(cfg.load(str(path), plugins=True))
    _, deltas, _, _ = p.net.trace(p.x, p.y)
    a0 = p.net.layers[0].forward(p.x)[0]
    truth = naive_central(lambda: loss_of(p), p.x)  # the oracle: the backward passes δ without σ'
    assert np.linalg.norm(deltas[0] - truth) > 0.01 * np.linalg.norm(truth)
    report = check(str(path), plugins=True)
    assert report.return_code == 1 and not report.unresolved
    assert {r.tensor for r in report.failures} >= {"input"}
    assert np.abs(a0).max() < 10  # unsaturated: tanh(z) of moderate z


def test_a_large_analytic_gradient_against_a_numeric_zero_fails(tmp_path):
    """tanh(1e4·x) is flat to rounding at every x drawn (closed form: 1e4·sech²(1e4·x) <
    1e-20); the buggy backward passes δ down unchanged — large — so it must FAIL."""
    raw = {"seed": 3, "input": {"batch": 2, "channels": 1, "height": 3, "width": 3},
           "layers": [custom("SatTanh", k=1e4, bug="identity"), {"flatten": {}}, {"dense": {"units": 3}}],
           "loss": "mse"}
    path = write(tmp_path, raw)
    p = build(cfg.load(str(path), plugins=True))
    with np.errstate(over="ignore"):
        assert np.max(1e4 / np.cosh(1e4 * p.x) ** 2) < 1e-20
    _, dx, _ = p.net.gradients(p.x, p.y)
    assert np.abs(dx).max() > 1e-3
    report = check(str(path), plugins=True)
    row = report.rows[0]
    assert row.tensor == "input" and row.status == "fail" and report.return_code == 1
    assert np.abs(row.numeric).max() < 1e-12


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_gradient_zero_in_truth_is_not_a_failure(tmp_path, dtype):
    """A tied conv bias right before Center (z − its map mean): adding a constant to a map
    changes nothing, so ∂C/∂b = 0 exactly (closed form; a plain central loop agrees). The
    backward's sum of δ − mean δ is rounding (~1e-8 in float32): both ~0, not a failure."""
    raw = {"seed": 4, "dtype": dtype, "input": {"batch": 2, "channels": 1, "height": 5, "width": 5},
           "layers": [{"conv": {"filters": 2, "kernel": 3}}, custom("Center"), {"activation": "tanh"},
                      {"flatten": {}}, {"dense": {"units": 3}}], "loss": "mse"}
    path = write(tmp_path, raw)
    wide = build(cfg.load(str(write(tmp_path, {**raw, "dtype": "float64"}, "wide")), plugins=True))
    assert np.abs(naive_central(lambda: loss_of(wide), wide.net.layers[0].params["b"])).max() < 1e-9
    report = check(str(path), plugins=True)
    row = next(r for r in report.rows if r.layer == 0 and r.tensor == "b")
    assert row.status == "unresolved" and "below the resolution" in row.reason
    assert report.return_code == 0 and report.localisation == ""
    assert all(r.passed for r in report.rows if r is not row)


def test_judge_statuses_against_the_floor():
    floor = Floor(1e-9, "central differences", 0.0)
    idx, none = np.arange(3), np.zeros(3, dtype=bool)

    def status(g, n):
        return judge(TensorRef.param(0, "W"), "dense", (3,), idx, np.array(g, float), np.array(n, float), none, 1e-6,
                     floor=floor).status

    assert status([1e-30, 2e-30, 0], [0, 0, 0]) == "unresolved"  # both below: cannot tell
    assert status([1e-10, 0, 0], [3e-10, 0, 0]) == "unresolved"
    assert status([1e-3, 0, 0], [0, 0, 0]) == "fail"  # analytic resolvable: a bug
    assert status([0, 0, 0], [1e-3, 0, 0]) == "fail"  # numeric resolvable
    assert status([1e-30, 2e-30, 0], [1e-30, 2e-30, 0]) == "pass"  # agreement is agreement
    assert status([np.nan, 0, 0], [0, 0, 0]) == "fail"  # NaN is never below a floor
    no_floor = judge(TensorRef.param(0, "W"), "dense", (3,), idx, np.zeros(3), np.ones(3), none, 1e-6)
    assert no_floor.status == "fail"
    # a float32 backward's own rounding: the analytic side is ~0 up to it, the numeric one is not
    floor = Floor(1e-9, "central differences", 0.5, rounding=1e-6)
    assert status([1e-7, 0, 0], [1e-12, 0, 0]) == "unresolved"
    assert status([1e-7, 0, 0], [1e-7, 0, 0]) == "pass"
    assert status([1e-7, 0, 0], [3e-8, 0, 0]) == "fail"  # the numeric side resolves it
    assert status([1e-5, 0, 0], [0, 0, 0]) == "fail"


# --------------------------------------------------------------------------- every entry a kink

KINKY = {"seed": 1, "input": {"batch": 2, "channels": 1, "height": 2, "width": 2},
         "layers": [{"flatten": {}}, {"dense": {"units": 3}}, {"activation": "relu"}, {"dense": {"units": 2}}],
         "loss": "mse"}


def kinks_of_dense(p, h: float) -> dict[str, int]:
    """Entries of layers[1] whose ±h stencil flips the sign of some z (an independent count)."""
    a = p.x.reshape(p.x.shape[0], -1)
    W, b = p.net.layers[1].params["W"], p.net.layers[1].params["b"]
    z = a @ W.T + b  # (n, units)
    side = z > 0
    crossed_w = np.zeros(W.shape, dtype=bool)
    for s in (h, -h):  # W[j, k] moves z[:, j] by s·a[:, k]
        crossed_w |= np.any((z[:, :, None] + s * a[:, None, :] > 0) != side[:, :, None], axis=0)
    crossed_b = np.any(((z[:, :, None] + np.array([h, -h])) > 0) != side[:, :, None], axis=(0, 2))
    return {"W": int(crossed_w.sum()), "b": int(crossed_b.sum())}


def closed_form_dense_grads(p) -> dict[str, np.ndarray]:
    """∂C/∂W and ∂C/∂b of layers[1] of KINKY by hand (mse: C = mean over the batch of
    ½‖ŷ − y‖², ŷ = W₃ relu(W₁ a + b₁) + b₃) — at the point itself, no step."""
    a = p.x.reshape(p.x.shape[0], -1)
    W1, b1 = p.net.layers[1].params["W"], p.net.layers[1].params["b"]
    W3, b3 = p.net.layers[3].params["W"], p.net.layers[3].params["b"]
    z = a @ W1.T + b1
    out = np.maximum(z, 0) @ W3.T + b3
    d_out = (out - p.y) / a.shape[0]
    d_z = (d_out @ W3) * (z > 0)
    return {"W": d_z.T @ a, "b": d_z.sum(axis=0)}


def test_every_entry_a_kink_is_compared_by_the_complex_step(tmp_path):
    """At h = 100 every stencil of layers[1] crosses a ReLU kink, so central differences compare
    nothing.  The complex step moves no real part — it crosses no kink — and compares every
    entry at the point itself: the rows pass on its numbers (the closed form agrees), and a
    wrong backward fails on them, with numbers, where it used to be "not checked"."""
    path = tmp_path / "kinky.yaml"
    path.write_text(yaml.safe_dump(KINKY))
    p = build(cfg.validate(KINKY))
    count = kinks_of_dense(p, 100.0)
    assert count == {"W": p.net.layers[1].params["W"].size, "b": 3}  # every stencil crosses at h = 100
    result = run(str(path), "--eps", "100", "--format", "json")
    assert result.exit_code == 0, result.output
    records = {(r["layer"], r["tensor"]): r for r in json.loads(result.stdout)["configs"][0]["records"]}
    report = check(KINKY, eps=100.0)
    truth = closed_form_dense_grads(p)
    for name in ("W", "b"):
        r = records[(1, name)]
        assert r["status"] == "pass" and r["checked"] == count[name] and r["kinks"] == 0
        assert r["note"].startswith("every stencil of central differences crossed a kink; the complex step, free "
                                    "of rounding, agrees")
        row = next(c for c in report.rows if c.ref.index == 1 and c.ref.name == name)
        np.testing.assert_allclose(row.numeric, truth[name].reshape(-1)[row.indices], rtol=1e-12, atol=1e-15)


def test_every_entry_a_kink_and_a_wrong_backward_fails_on_numbers(monkeypatch):
    from cnngrad.layers import Dense
    original = Dense.backward
    monkeypatch.setattr(Dense, "backward", lambda self, d, c: (lambda r: (r[0], {**r[1], "W": r[1]["W"] * 1.1}))(
        original(self, d, c)))
    report = check(KINKY, eps=100.0)
    row = next(c for c in report.rows if c.ref.index == 1 and c.ref.name == "W")
    assert report.return_code == 1 and row.failed and row.checked > 0 and row.mismatch
    assert "the complex step resolves it and disagrees" in row.note


def test_every_entry_a_kink_fails_the_config_where_the_complex_step_is_not_available(tmp_path, monkeypatch):
    """Nothing compared and no complex step to compare them: not a pass — FAIL, with the
    reason and the remedy (a layer that drops the imaginary part, here by the probe's word)."""
    from cnngrad import complex_probe
    monkeypatch.setattr(complex_probe.ComplexProbe, "unavailable",
                        lambda self, *where: "complex step not available for layer 2 (Activation)")
    path = tmp_path / "kinky.yaml"
    path.write_text(yaml.safe_dump(KINKY))
    p = build(cfg.validate(KINKY))
    count = kinks_of_dense(p, 100.0)
    result = run(str(path), "--eps", "100", "--format", "json")
    assert result.exit_code == 1, result.output
    records = {(r["layer"], r["tensor"]): r for r in json.loads(result.stdout)["configs"][0]["records"]}
    for name in ("W", "b"):
        r = records[(1, name)]
        assert r["status"] == "fail" and r["checked"] == 0 and r["kinks"] == count[name]
        assert "every one of its" in r["note"] and "--avoid-kinks" in r["note"] and "smaller --eps" in r["note"]
        assert "complex step not available" in r["note"]
    assert records[(3, "W")]["status"] == "pass"  # after the relu: no kink to cross, and checked
    table = run(str(path), "--eps", "100")
    assert table.exit_code == 1
    assert "layers[1] dense W: not checked: every one of its" in table.stdout
    assert "backward is wrong" not in table.stdout  # not a wrong backward: nothing was compared
    # at a sane step the same net checks out
    assert run(str(path)).exit_code == 0


def test_a_row_the_complex_step_passes_does_not_say_the_gradient_is_wrong():
    """--eps 10: central differences fail and halving h barely helps (far from h → 0, not a
    wrong gradient); the complex step passes the rows — and their notes keep what halving h
    measured, never "the analytic gradient is wrong" (found by a QA pass: every row said it)."""
    raw = {"seed": 0, "input": {"batch": 2, "channels": 1, "height": 6, "width": 6},
           "layers": [{"conv": {"filters": 2, "kernel": 3}}, {"activation": "tanh"}, {"flatten": {}},
                      {"dense": {"units": 3}}], "loss": "mse"}
    report = check(raw, eps=10.0)
    rescued = [r for r in report.rows if "the complex step, free of rounding, agrees" in r.note]
    assert report.passed and len(rescued) >= 2
    for r in rescued:
        assert "at h/2)" in r.note and "gradient is wrong" not in r.note, r.note


def _tiny_channel(tmp_path, bug):
    return plugin_config(tmp_path, "tiny_channel", f"class: \"tiny_channel:TinyChannel\", bug: {bug or 'null'}",
                         after=("activation: tanh", "conv: {filters: 3, kernel: 3}", "flatten: {}",
                                "dense: {units: 4}"))


def test_a_wrong_part_too_small_for_the_norm_is_named_in_a_note(tmp_path):
    """A channel 1e-7 the size of the rest, its δ's sign flipped: norm rel ~1e-7 passes tol
    1e-6 (the verdict is norm rel's, CONVENTIONS.md) — but those entries are off by twice
    their size, far above the differences' resolution, and the row's note says so, with both
    numbers; the right layer gets no such note (found by a QA pass: a silent PASS)."""
    wrong = check(_tiny_channel(tmp_path, "sign"), plugins=True)
    noted = [r for r in wrong.rows if "passes on norm rel, yet" in r.note]
    assert wrong.passed and noted  # the verdict stays norm rel's
    assert {(r.ref.index, r.ref.name) for r in noted} >= {(0, "W"), (0, "b")}  # the conv below it, the last filter
    for r in noted:
        off = np.abs(r.analytic - r.numeric)
        assert np.max(off) > 10 * wrong.floor.value  # the entries it names are off far above the resolution
    right = check(_tiny_channel(tmp_path, None), plugins=True)
    assert right.passed and not any("passes on norm rel, yet" in r.note for r in right.rows)


def test_a_factor_on_a_gradient_below_the_resolution_is_diagnosed_from_the_complex_step(tmp_path):
    """∂C/∂t ~1e-9, doubled: central differences cannot resolve it, the complex step can and
    disagrees — and the diagnosis reads the factor from the complex step's numbers: exactly 2,
    not 1.93 from differences at their resolution (found by a QA pass)."""
    path = plugin_config(tmp_path, "tiny_gain", "class: \"tiny_gain:TinyGain\", bug: double")
    report = check(path, plugins=True)
    (row,) = [r for r in report.rows if r.ref.index == 1 and r.ref.name == "t"]
    assert row.failed and row.confirmed is not None and "complex step" in row.note
    assert report.culprit == 1
    assert row.diagnosis and row.diagnosis[0].startswith("∂C/∂t is 2 times numeric"), row.diagnosis
    assert abs(float(row.analytic[0]) / float(np.real(row.confirmed[0])) - 2) < 1e-9  # the complex step: exactly half


@pytest.mark.parametrize("bug", [None, "quotient"])
def test_an_imaginary_part_one_percent_off_the_derivative_is_not_carried(tmp_path, bug):
    """y = a / (1 + 0.01|a|): np.abs of a complex number is its modulus, so the imaginary part
    is ~1% off the derivative — inside the probe's former 1e-2, and the complex step then
    "agreed" with a backward missing its quotient rule (a QA pass; the test's own loop says the
    backward is 0.7% off).  The probe now holds the imaginary part to the real difference's own
    error: not available, and the wrong backward fails, the right one passes, on central differences."""
    path = write(tmp_path, net(custom("MildSoftsign", bug=bug)))
    p = build(cfg.load(str(path), plugins=True))
    assert "does not follow the derivative" in ComplexProbe(p.net, p.x).unavailable(0)
    b = p.net.layers[0].params["b"]
    truth = naive_central(lambda: loss_of(p), b)
    rep = check(str(path), plugins=True)
    (row,) = [r for r in rep.rows if r.ref.path == (0,) and r.ref.name == "b"]
    off = np.linalg.norm(row.analytic - truth) / np.linalg.norm(truth)
    assert bool(off > 1e-3) is (bug is not None)
    assert rep.return_code == (0 if bug is None else 1), rep.localisation


@pytest.mark.parametrize("method", ["central", "ridders"])
def test_a_false_complex_safe_declaration_confirms_nothing(tmp_path, method):
    """A batch norm declared complex_safe that takes np.var (real on complex input): its complex
    step lost the variance's derivative and "confirmed" a backward missing that term — PASSED,
    exit 0, while torch gives ∂W of the conv below off by 12% (a QA pass).  A user's declaration
    is now shown by the probe first: the wrong backward fails, the right one passes."""
    from oracles import plugin_config

    def config(bug):
        return plugin_config(tmp_path, "npvar_bn", f"class: \"npvar_bn:BN\", bug: {bug or 'null'}",
                             shape="{batch: 4, channels: 2, height: 4, width: 4}",
                             before=("conv: {filters: 3, kernel: 3, padding: 1}",),
                             after=("activation: tanh", "flatten: {}", "dense: {units: 3}"))

    wrong = check(config("no_var"), method=method, plugins=True)
    assert not wrong.passed
    assert any("declared complex_safe, but" in r.note for r in wrong.rows)
    right = check(config(None), method=method, plugins=True)
    assert right.passed, [(str(r.ref), r.note) for r in right.rows if not r.passed]


def test_a_declared_kink_does_not_shelter_a_false_complex_safe(tmp_path):
    """relu(batch norm) with np.var, declared complex_safe and declaring its relu's kinks: the
    wrong backward fails, the right one passes (end to end; the probe's kink rule below)."""
    from oracles import plugin_config

    def config(bug):
        return plugin_config(tmp_path, "norm_relu", f"class: \"norm_relu:NormRelu\", bug: {bug or 'null'}",
                             shape="{batch: 4, channels: 2, height: 4, width: 4}",
                             before=("conv: {filters: 3, kernel: 3, padding: 1}",), after=("flatten: {}",
                                                                                         "dense: {units: 3}"))

    wrong = check(config("no_var"), plugins=True)
    assert not wrong.passed and not any("confirms" not in r.note and "agrees" in r.note for r in wrong.rows)
    assert check(config(None), plugins=True).passed


def test_the_probe_holds_the_units_that_crossed_no_kink_to_the_derivative():
    """A kinked forward that drops an imaginary part (np.var) with one unit exactly on its kink:
    the probe used to say "cannot tell" (KINKED) — and a declared complex_safe then stood, its
    complex step "confirming" a wrong backward.  The units that crossed no kink along the probe
    are compared: it does not follow.  A kinked forward that keeps the imaginary part passes."""
    from cnngrad.complex_probe import carries

    base = np.random.default_rng(0).standard_normal((2, 3, 4, 4))
    base[0, 0, 0, 0] = 0.0  # on the kink

    def lossy(a):
        return np.where(a.real > 0, a, 0) / np.sqrt(np.var(a) + 1.0)  # np.var: real on complex input

    def keeps(a):
        return np.where(a.real > 0, a, 0) / np.sqrt(np.mean((a - a.mean()) ** 2) + 1.0)

    def states(a):
        return a.real > 0

    assert carries(lossy, base, np.random.default_rng(1), states) == "its imaginary part does not follow the derivative"
    assert carries(keeps, base, np.random.default_rng(1), states) == ""


@pytest.mark.parametrize("cls, upsample", [("MaxNorm", True), ("WiggleMaxNorm", False)])
def test_the_probe_does_not_let_a_false_declaration_stand_where_it_cannot_tell(tmp_path, cls, upsample):
    """A per-sample argmax kink state (not the output's, unit by unit) whose ties the probe
    broke, or a real difference that does not settle (sin(1e5·a)/1e5): the probe cannot tell —
    and a false complex_safe stood on that, its complex step "confirming" a backward missing
    the max's term (a QA pass, torch: 8% off).  Now not available: the wrong backward fails."""
    from oracles import plugin_config

    def config(bug):
        return plugin_config(tmp_path, "false_safe", f"class: \"false_safe:{cls}\", bug: {bug}",
                             shape="{batch: 2, channels: 2, height: 4, width: 4}",
                             before=("conv: {filters: 3, kernel: 3, padding: 1}",
                                     *(["upsample: {scale: 2}"] if upsample else [])),
                             after=("flatten: {}", "dense: {units: 3}"))

    wrong = check(config("true"), plugins=True)
    assert not wrong.passed and not any("agrees" in r.note for r in wrong.rows), [r.note for r in wrong.rows]


def test_the_central_look_judges_at_central_differences_own_tol(tmp_path):
    """--method forward (tol 1e-5) with a backward 5e-6 off where the complex step is not
    available: central differences at 1e-6 "agreed" at forward's tol and passed what a plain
    check fails (a QA pass); they judge at their own tol, 1e-6."""
    from oracles import plugin_config

    def config(bug):
        return plugin_config(tmp_path, "real_tanh", f"class: \"real_tanh:RealTanh\", bug: {bug or 'null'}",
                             shape="{batch: 2, channels: 2, height: 5, width: 5}",
                             before=("conv: {filters: 3, kernel: 3, padding: 1}",),
                             after=("conv: {filters: 2, kernel: 3}", "flatten: {}", "dense: {units: 3}"))

    assert not check(config("tiny"), plugins=True).passed
    assert not check(config("tiny"), plugins=True, method="forward", eps=1e-3).passed
    assert check(config(None), plugins=True, method="forward", eps=1e-3).passed
