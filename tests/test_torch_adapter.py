"""The PyTorch adapter: ``custom: {class: …, framework: torch}`` and ``cnngrad.check_layer``.

Oracles independent of cnngrad's numbers: torch's built-in ``F.conv2d`` autograd, and a plain
loop of central differences written here.  The example's deliberate bugs (examples/torch_conv.py)
must fail the right tensor and be located; the correct twins pass.  Skipped without torch,
except the checks of what happens without it (torch hidden in a subprocess).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
F = torch.nn.functional

import cnngrad  # noqa: E402
from cnngrad.cli import main  # noqa: E402
from cnngrad.config import ConfigError  # noqa: E402
from cnngrad.finite_diff import workers  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
_spec = importlib.util.spec_from_file_location("torch_conv_example", EXAMPLES / "torch_conv.py")
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)  # type: ignore[union-attr]
Conv2d, Conv2dFunction = example.Conv2d, example.Conv2dFunction
CONV = {"in_channels": 3, "out_channels": 2, "kernel": 3, "padding": 1}


def run(*args: str):
    return CliRunner().invoke(main, ["check", *args])


def failing(report) -> set[str]:
    return {c.tensor for c in report.rows if c.failed}


# --------------------------------------------------------------------------- the examples


@pytest.mark.parametrize("config", ["torch_conv", "torch_conv_function"])
def test_the_example_configs_pass(config):
    result = run(str(EXAMPLES / f"{config}.yaml"), "--plugins")
    assert result.exit_code == 0, result.output
    kind = "Conv2dFunction" if config.endswith("function") else "Conv2d"
    assert f"│ {kind} " in result.stdout  # the rows are named after the torch class


def test_the_broken_example_fails_and_is_located():
    result = run(str(EXAMPLES / "torch_conv_broken.yaml"), "--plugins")
    assert result.exit_code == 1, result.output
    text = result.stdout
    assert "layer 2 (Conv2d): backward is wrong; layers 3-6 check out" in text
    # the failure is not "confirmed" by a complex step that cannot run through torch
    assert "complex step not available for layer 2 (Conv2d): its forward raised TypeError" in text


@pytest.mark.parametrize("bug, wrong", [("not_rotated", {"input"}), ("dw_rotated", {"weight"}),
                                        ("bias_mean", {"bias"})])
def test_each_planted_bug_fails_its_own_tensor_only(bug, wrong):
    report = cnngrad.check_layer(Conv2d, (3, 6, 6), options={**CONV, "bug": bug})
    assert not report.passed and report.return_code == 1
    assert failing(report) == wrong
    assert report.localisation.startswith("layer 0 (Conv2d): backward is wrong")
    assert report.structural == []  # the bug is in the numbers, not in the protocol


@pytest.mark.parametrize("loss", ["mse", "softmax_cross_entropy"])
def test_the_correct_layer_passes_as_module_and_as_function(loss):
    for report in (cnngrad.check_layer(Conv2d, (3, 6, 6), options=CONV, loss=loss),
                   cnngrad.check_layer(Conv2dFunction, (3, 6, 6), params={"W": (2, 3, 3, 3), "b": (2,)},
                                       options={"padding": 1}, loss=loss)):
        assert report.passed and report.return_code == 0, [str(c) for c in report.rows]
        assert report.structural == []  # backward twice on one cache: same numbers, cache untouched
        assert {"input", "weight", "bias"} <= {c.tensor for c in report.rows} or \
            {"input", "W", "b"} <= {c.tensor for c in report.rows}


# --------------------------------------------------------------------------- independent oracles


def test_gradients_equal_torch_builtin_autograd_and_a_plain_loop():
    """The analytic side is the layer's own backward; cnngrad's numeric side must agree with
    a loop of central differences written here on F.conv2d, and both with F.conv2d's autograd."""
    report = cnngrad.check_layer(Conv2d, (3, 5, 5), options=CONV, seed=7)
    assert report.passed
    p = report.problem
    x, y = p.x, p.y
    W, b = (p.net.layers[0].params[k] for k in ("weight", "bias"))

    def loss(x_, W_, b_):
        z = F.conv2d(x_, W_, b_, padding=1)
        return 0.5 * ((z - torch.from_numpy(y)) ** 2).reshape(len(x_), -1).sum(1).mean()

    tx, tW, tb = (torch.tensor(a, requires_grad=True) for a in (x, W, b))
    gx, gW, gb = torch.autograd.grad(loss(tx, tW, tb), (tx, tW, tb))
    for key, g in (("input", gx), ("layers.0.weight", gW), ("layers.0.bias", gb)):
        assert np.allclose(report.analytic[key], g.numpy(), rtol=1e-12, atol=1e-14), key
    h, plain = 1e-6, np.empty(W.size)
    for k in range(W.size):
        up, down = W.copy().reshape(-1), W.copy().reshape(-1)
        up[k] += h
        down[k] -= h
        c_up = loss(torch.from_numpy(x), torch.from_numpy(up.reshape(W.shape)), torch.from_numpy(b)).item()
        c_down = loss(torch.from_numpy(x), torch.from_numpy(down.reshape(W.shape)), torch.from_numpy(b)).item()
        plain[k] = (c_up - c_down) / (2 * h)
    numeric = report.numeric["layers.0.weight"].reshape(-1)
    assert np.linalg.norm(numeric - plain) <= 1e-8 * np.linalg.norm(plain)
    assert np.linalg.norm(gW.numpy().reshape(-1) - plain) <= 1e-8 * np.linalg.norm(plain)


# --------------------------------------------------------------------------- building the layer


def write_module(folder: Path, seed: int = 0, extra: str = "") -> Path:
    (folder / "nets.py").write_text(
        "import torch\n\n"
        "class Block(torch.nn.Module):\n"
        "    def __init__(self, channels, filters):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(channels, filters, 3, padding=1)\n"
        "        self.scale = torch.nn.Parameter(torch.rand(filters))\n"
        "    def forward(self, a):\n"
        "        return torch.tanh(self.conv(a)) * self.scale[:, None, None]\n")
    cfg = folder / "block.yaml"
    cfg.write_text(f"seed: {seed}\ninput: {{batch: 2, channels: 2, height: 5, width: 5}}\n"
                   f"layers:\n  - conv: {{filters: 2, kernel: 1}}\n"
                   f"  - custom: {{class: \"nets:Block\", framework: torch, channels: 2, filters: 3{extra}}}\n"
                   f"  - flatten: {{}}\n  - dense: {{units: 3}}\nloss: softmax_cross_entropy\n")
    return cfg


def test_named_parameters_with_dots_are_rows_and_npz_keys(tmp_path):
    cfg = write_module(tmp_path)
    out = tmp_path / "run.npz"
    result = run(str(cfg), "--plugins", "--save", str(out))
    assert result.exit_code == 0, result.output
    assert "conv.weight" in result.stdout and "conv.bias" in result.stdout
    with np.load(out) as f:
        keys = set(f.files)
    assert {"layers.1.conv.weight", "grad.layers.1.conv.weight", "numgrad.layers.1.conv.bias",
            "layers.1.scale"} <= keys


def test_the_module_is_built_under_the_config_seed(tmp_path):
    cfg = write_module(tmp_path, seed=3)
    state = torch.get_rng_state()
    report = cnngrad.check(str(cfg), plugins=True)
    assert torch.equal(state, torch.get_rng_state())  # the global generator is left as it was
    built = report.problem.net.layers[1].params
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    scale = torch.rand(3)
    assert np.array_equal(built["conv.weight"], conv.weight.detach().double().numpy())
    assert np.array_equal(built["scale"], scale.double().numpy())
    again = cnngrad.check(str(cfg), plugins=True)
    assert all(np.array_equal(again.numeric[k], report.numeric[k]) for k in report.numeric)  # bit for bit
    other = cnngrad.config.load(str(cfg), plugins=True)
    other.seed = 4  # what --seed does
    assert not np.array_equal(cnngrad.check(other).problem.net.layers[1].params["scale"], built["scale"])


def test_an_instance_is_checked_with_its_own_values_and_left_untouched():
    layer = torch.nn.Conv2d(2, 3, 3)
    before = {k: v.detach().clone() for k, v in layer.state_dict().items()}
    report = cnngrad.check_layer(layer, (2, 5, 5))
    assert report.passed
    assert np.array_equal(report.problem.net.layers[0].params["weight"], before["weight"].double().numpy())
    assert all(torch.equal(before[k], v) and v.dtype == torch.float32 for k, v in layer.state_dict().items())


def test_flat_inputs_and_a_function_without_parameters():
    assert cnngrad.check_layer(torch.nn.Linear(5, 3), (5,)).passed

    class Cube(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            ctx.save_for_backward(a)
            return a ** 3

        @staticmethod
        def backward(ctx, delta):
            (a,) = ctx.saved_tensors
            return 3 * a * a * delta

    class WrongCube(Cube):
        @staticmethod
        def backward(ctx, delta):
            (a,) = ctx.saved_tensors
            return 3 * a * delta  # σ' of a square

    assert cnngrad.check_layer(Cube, (2, 3, 3)).passed
    report = cnngrad.check_layer(WrongCube, (2, 3, 3))
    assert failing(report) == {"input"} and report.localisation.startswith("layer 0 (WrongCube)")


# --------------------------------------------------------------------------- the protocol's checks


class MutatesSaved(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return a * a

    @staticmethod
    def backward(ctx, delta):
        (a,) = ctx.saved_tensors
        a.mul_(2.0)  # writes into what forward saved: the cache
        return a * delta


class MutatesDelta(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return a * a

    @staticmethod
    def backward(ctx, delta):
        (a,) = ctx.saved_tensors
        return a * delta.mul_(2.0)  # the right numbers, but δ scaled in place


@pytest.mark.parametrize("layer, reason", [
    (MutatesSaved, "backward changes its cache"),
    (MutatesDelta, "backward changes the δ it is given"),
    (torch.nn.Dropout(0.5), "forward is not deterministic"),
])
def test_protocol_breaches_fail_structurally(layer, reason):
    report = cnngrad.check_layer(layer, (2, 3, 3))
    assert any(reason in s for s in report.structural), report.structural
    assert report.return_code == 1


def test_the_complex_step_is_not_taken_through_a_torch_layer():
    with pytest.raises(ConfigError, match=r"complex step not available for layer 0 \(Conv2d\)"):
        cnngrad.check_layer(Conv2d, (3, 4, 4), options=CONV, method="complex")


def test_per_sample_is_taken_only_where_declared():
    coupled = torch.nn.BatchNorm2d(3)  # train mode: batch statistics couple the samples
    report = cnngrad.check_layer(coupled, (3, 3, 3), batch=3)
    assert report.passed
    assert any("does not declare per_sample" in f for f in report.fallbacks)
    declared = cnngrad.check_layer(Conv2d, (3, 4, 4), options=CONV)
    assert declared.passed and declared.fallbacks == []
    conv = torch.nn.Conv2d(3, 2, 3)
    conv.per_sample = True  # declared on the instance
    stacked, plain = cnngrad.check_layer(conv, (3, 4, 4)), cnngrad.check_layer(torch.nn.Conv2d(3, 2, 3), (3, 4, 4))
    assert stacked.passed and stacked.fallbacks == [] and plain.passed and plain.fallbacks


class KinkyDense(torch.nn.Module):
    """relu(W a + b), declaring where its kinks are."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(6, 12)

    def forward(self, a):
        return torch.relu(self.lin(a))

    def kink_state(self, a):
        return self.lin(a) > 0


def test_a_declared_kink_state_is_used():
    torch.manual_seed(0)
    report = cnngrad.check_layer(KinkyDense(), (6,), batch=4, eps=0.3, tol=1e-6)
    assert report.passed, [str(c) for c in report.rows]
    assert sum(c.kinks for c in report.rows) > 0
    # undeclared, the same stencils cross the kinks unseen and fail: nothing is excused at h = 0.3;
    # the backward is right, and central differences at their own step (1e-6: far from every kink
    # here) say so — the rows pass on that second look only, and say why
    undeclared = type("Undeclared", (KinkyDense,), {"kink_state": None})
    torch.manual_seed(0)
    report = cnngrad.check_layer(undeclared(), (6,), batch=4, eps=0.3, tol=1e-6)
    assert sum(c.kinks for c in report.rows) == 0
    assert report.passed and all("step 3e-01 failed" in c.note and "own step 1e-06 agree" in c.note
                                 for c in report.rows), [c.note for c in report.rows]


def test_forked_workers_give_the_same_numbers(monkeypatch):
    one = cnngrad.check_layer(Conv2d, (3, 5, 5), options=CONV, workers=1)
    monkeypatch.setattr(workers, "PARALLEL_WORK", 0)
    two = cnngrad.check_layer(Conv2d, (3, 5, 5), options=CONV, workers=2)
    assert two.passed and set(two.numeric) == set(one.numeric)
    assert all(np.array_equal(two.numeric[k], one.numeric[k]) for k in one.numeric)


def test_a_float32_network_around_a_torch_layer(tmp_path):
    cfg = write_module(tmp_path)
    cfg.write_text(cfg.read_text().replace("seed: 0", "seed: 0\ndtype: float32"))
    result = run(str(cfg), "--plugins")
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------- config errors


def test_framework_errors_are_one_line_exit_2(tmp_path):
    cfg = write_module(tmp_path)
    assert run(str(cfg)).exit_code == 2  # --plugins still needed
    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.read_text().replace("framework: torch", "framework: jax"))
    result = run(str(bad), "--plugins")
    assert result.exit_code == 2
    assert "layers[1].custom.framework: unknown value 'jax'" in result.stderr
    numpy_cls = tmp_path / "numpy_cls.yaml"  # a plain class named with framework: torch
    (tmp_path / "plain.py").write_text("class Plain:\n    pass\n")
    numpy_cls.write_text(cfg.read_text().replace("nets:Block", "plain:Plain"))
    result = run(str(numpy_cls), "--plugins")
    assert result.exit_code == 2 and "not an nn.Module" in result.stderr and "Traceback" not in result.output
    shape = tmp_path / "shape.yaml"
    shape.write_text((EXAMPLES / "torch_conv_function.yaml").read_text().replace("W: [4, 3, 3, 3]", "W: [4, -3, 3, 3]"))
    (tmp_path / "torch_conv.py").write_text((EXAMPLES / "torch_conv.py").read_text())
    result = run(str(shape), "--plugins")
    assert result.exit_code == 2 and "positive integers" in result.stderr and len(result.stderr.splitlines()) == 1


# --------------------------------------------------------------------------- README and benchmark


def test_the_readme_torch_example_runs_as_written():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### PyTorch layers"):text.index("## In CI")]
    blocks = [b.split("```", 1)[0] for b in section.split("```python\n")[1:]]
    (code,) = [b for b in blocks if "cnngrad.check_layer(" in b]
    exec(compile(code, "README.md", "exec"), {})


def test_the_benchmark_runs_and_reports_a_ratio(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_torch_layer", ROOT / "benchmarks" / "bench_torch_layer.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    out = tmp_path / "bench.json"
    result = bench.main(["--preset", "tiny", "--runs", "1", "--json", str(out)])
    assert json.loads(out.read_text())["ratio_full"] == result["ratio_full"] > 0
    assert "ratio gradcheck / cnngrad" in capsys.readouterr().out


def _relu_then(pool: dict) -> dict:
    return {"name": "relu_pool", "seed": 0, "loss": "softmax_cross_entropy",
            "input": {"batch": 2, "channels": 1, "height": 8, "width": 8},
            "layers": [{"conv": {"filters": 4, "kernel": 3, "padding": 1}}, {"activation": "relu"}, pool,
                       "flatten", {"dense": {"units": 3}}]}


@pytest.mark.parametrize("module", [torch.nn.MaxPool2d(2), torch.nn.AdaptiveMaxPool2d(4)])
def test_a_stock_max_pool_after_a_relu_has_its_kinks(module):
    """A ReLU's exact zeros tie in a max pool's windows: one-sided differences 1 and 0 there,
    the central one 0.5, torch's (right) gradient 1 — the stock module, undeclared, was failed
    and blamed ("layer 2 (MaxPool2d): backward is wrong", a QA pass).  Its kinks are now its
    argmax indices: those stencils are left out and counted, the check passes as the built-in
    pool's does; and the oracle at such a window is the test's own."""
    rep = cnngrad.check(_relu_then({"custom": {"class": module, "framework": "torch"}}), plugins=True)
    assert rep.passed, rep.localisation
    (pool_row,) = [r for r in rep.rows if r.ref.path == (2,) and r.ref.is_delta]
    assert pool_row.kinks > 0
    built_in = cnngrad.check(_relu_then({"pool": {"kind": "max", "size": 2}}))
    assert built_in.passed
    a = torch.zeros(1, 1, 2, 2, dtype=torch.float64, requires_grad=True)  # a window of zeros: a tie
    torch.nn.MaxPool2d(2)(a).sum().backward()
    f = lambda t: torch.nn.MaxPool2d(2)(t).sum().item()  # noqa: E731
    e = torch.zeros_like(a)
    e[0, 0, 0, 0] = 1e-6
    central = (f(a.detach() + e) - f(a.detach() - e)) / 2e-6
    assert a.grad[0, 0, 0, 0].item() == 1.0 and abs(central - 0.5) < 1e-9  # a kink: no derivative to check


@pytest.mark.parametrize("module", [torch.nn.ReLU(inplace=True),
                                    torch.nn.Sequential(torch.nn.ReLU(inplace=True), torch.nn.Conv2d(3, 2, 3))])
def test_a_module_working_in_place_on_its_input_is_checked(module):
    """nn.ReLU(inplace=True) was refused ("a leaf Variable that requires grad is being used in
    an in-place operation", a QA pass): it runs on x * 1, as gradcheck users do, and passes."""
    assert cnngrad.check_layer(module, (3, 5, 5)).passed


class _DoublesGradOutput(torch.autograd.Function):
    """y = 3x; backward right, but it doubles the grad_output it is handed, in place."""

    @staticmethod
    def forward(ctx, x):
        return 3 * x

    @staticmethod
    def backward(ctx, g):
        out = 3 * g.clone()
        g.mul_(2)
        return out


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_backward_writing_into_its_delta_is_caught_in_float32_too(dtype):
    """δ is shared with torch in float64, copied in float32 — where the write went unseen and
    the layer passed (a QA pass): the copy's change is written back, and the check says so."""
    cfg = {"name": "mutg", "seed": 0, "dtype": dtype, "loss": "mse",
           "input": {"batch": 2, "channels": 1, "height": 3, "width": 3},
           "layers": [{"custom": {"class": _DoublesGradOutput, "framework": "torch"}}, "flatten",
                      {"dense": {"units": 2}}]}
    rep = cnngrad.check(cfg, plugins=True)
    assert not rep.passed and any("backward changes the δ it is given" in s for s in rep.structural), rep.structural


def test_a_module_that_draws_leaves_the_global_generator_alone():
    """Dropout in training mode: still "forward is not deterministic" (each call draws anew),
    and the user's global torch generator is where it was (it moved, a QA pass)."""
    torch.manual_seed(0)
    before = torch.get_rng_state().clone()
    rep = cnngrad.check_layer(torch.nn.Dropout(0.5), (2, 3, 3))
    assert not rep.passed and any("forward is not deterministic" in s for s in rep.structural)
    assert torch.equal(before, torch.get_rng_state())


class _EatsInput(torch.autograd.Function):
    """y = 2x, right both ways, but forward halves its input in place after use (x.data)."""

    @staticmethod
    def forward(ctx, x):
        out = 2 * x
        x.data.mul_(0.5)
        return out

    @staticmethod
    def backward(ctx, g):
        return 2 * g


class _NudgesWeight(torch.nn.Module):
    """y = w·x, right both ways, but forward nudges w in place (w.data) every call."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))

    def forward(self, x):
        out = self.w * x
        self.w.data.add_(1e-3)
        return out


@pytest.mark.parametrize("layer, reason", [(_EatsInput, "forward changes its input"),
                                           (_NudgesWeight, "forward changes the layer's parameters")])
def test_a_forward_writing_into_its_input_or_parameters_is_caught(layer, reason):
    """torch ran on copies of the input and the parameters, so a forward writing into them
    (through .data, unseen by autograd) passed (a QA pass; gradcheck fails both): the copies'
    changes are written back, and the structural checks see them as in a numpy layer."""
    report = cnngrad.check_layer(layer, (2, 3, 3))
    assert any(reason in s for s in report.structural), report.structural
    assert report.return_code == 1


def test_a_stock_max_pool_whose_every_window_ties_is_unresolved_not_failed():
    """After a nearest upsampling every 2x2 window ties: every entry of the pool's δ sits on a
    kink at θ itself, and no complex step runs through a torch layer — the row FAILed ("nothing
    compared") where the built-in pool's is UNRESOLVED (a QA pass).  Central differences at a
    step a million times smaller still cross: UNRESOLVED, exit 0 (--strict: 1)."""
    raw = {"name": "ties", "seed": 0, "loss": "softmax_cross_entropy",
           "input": {"batch": 2, "channels": 1, "height": 4, "width": 4},
           "layers": [{"conv": {"filters": 2, "kernel": 3, "padding": 1}}, {"activation": "tanh"},
                      {"upsample": {"scale": 2}}, {"custom": {"class": torch.nn.MaxPool2d(2), "framework": "torch"}},
                      "flatten", {"dense": {"units": 3}}]}
    rep = cnngrad.check(raw, plugins=True)
    (pool_row,) = [r for r in rep.rows if r.ref.path == (3,) and r.ref.is_delta]
    assert pool_row.unresolved and pool_row.reason.startswith("on its kinks"), (pool_row.status, pool_row.reason)
    assert rep.return_code == 0 and cnngrad.check(raw, plugins=True, strict=True).return_code == 1
