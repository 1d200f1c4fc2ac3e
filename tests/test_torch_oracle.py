"""An independent oracle: a network written from CONVENTIONS.md alone, in another
framework (torch autograd), reproduces the gradients saved with ``cnngrad check --save``.

The torch network is built only from the shipped YAML (parsed here with
``yaml.safe_load``) and the arrays of the ``.npz`` file; nothing of cnngrad's layer,
network or loss code is imported.  Float64 configs must agree to 1e-9 relative; the
float32 config to ~1e-4.  Skipped where torch is not installed (it is not a dependency).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

torch = pytest.importorskip("torch")
F = torch.nn.functional

from cnngrad.cli import main  # noqa: E402
from cnngrad.config import shipped_configs  # noqa: E402

# configs with blocks have their own rebuild: test_torch_blocks.py
NAMES = [n for n, res in shipped_configs().items() if "block:" not in res.read_text(encoding="utf-8")]

# Tolerances per dtype: (loss rtol, gradient rtol, gradient atol as a fraction of the
# tensor's largest entry, finite-difference norm-rel bound).
#  float64: the brief's 1e-12 / 1e-9; atol 1e-12 relative to scale absorbs summation-order
#           noise on entries that are ~0; central differences with h = 1e-6 land ~1e-9.
#  float32: both frameworks round every op to ~6e-8; sums of a few hundred terms in a
#           different order leave ~1e-6 relative, so 1e-4; numeric gradients with h = 1e-2
#           are good to ~1e-3 (cnngrad's own float32 verdict uses 1e-2).
TOL = {
    "float64": {"loss": 1e-12, "rtol": 1e-9, "atol": 1e-12, "fd": 1e-7},
    "float32": {"loss": 1e-4, "rtol": 1e-4, "atol": 1e-5, "fd": 1e-2},
}
TORCH_DTYPE = {"float64": torch.float64, "float32": torch.float32}


# --------------------------------------------------------------------------- running the CLI


def run_cli(name: str, out: Path, *extra: str) -> dict[str, np.ndarray]:
    result = CliRunner().invoke(main, ["check", name, "--save", str(out), *extra])
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


def shipped_yaml(name: str) -> dict[str, Any]:
    return yaml.safe_load(shipped_configs()[name].read_text(encoding="utf-8"))


@pytest.fixture(scope="module", params=NAMES)
def saved(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict, dict]:
    """(name, parsed config, arrays of `cnngrad check NAME --save run.npz`), once per config."""
    name = request.param
    arrays = run_cli(name, tmp_path_factory.mktemp(name) / "run.npz")
    return name, shipped_yaml(name), arrays


# --------------------------------------------------------------------------- the torch network, from CONVENTIONS.md


def pair(v: Any) -> tuple[int, int]:
    """An int, or a list [h, w]."""
    if isinstance(v, (list, tuple)):
        h, w = v
        return int(h), int(w)
    return int(v), int(v)


def entries(config: dict) -> list[tuple[str, Any]]:
    """The config's ``layers:`` as (kind, options); a bare string is a kind without options."""
    out = []
    for e in config["layers"]:
        if isinstance(e, str):
            out.append((e, None))
        else:
            ((kind, opts),) = e.items()
            out.append((kind, opts))
    return out


def expected_param_keys(config: dict) -> set[str]:
    """Which ``layers.{i}.W`` / ``layers.{i}.b`` keys the conventions say the file holds."""
    keys = set()
    for i, (kind, o) in enumerate(entries(config)):
        if kind == "conv":
            keys.add(f"layers.{i}.W")
            if o.get("bias", "tied") != "none":
                keys.add(f"layers.{i}.b")
        elif kind == "dense":
            keys.add(f"layers.{i}.W")
            if (o or {}).get("bias", True):
                keys.add(f"layers.{i}.b")
        elif kind == "conv_transpose":
            keys.add(f"layers.{i}.W")
            if o.get("bias", "tied") != "none":
                keys.add(f"layers.{i}.b")
        elif kind in ("batchnorm", "groupnorm"):
            keys |= {f"layers.{i}.gamma", f"layers.{i}.beta"}
    return keys


def expected_buffer_keys(config: dict) -> set[str]:
    """The buffers ``--save`` writes (``layers.{i}.{buffer}``): not checked, but needed to rebuild."""
    keys = set()
    for i, (kind, _) in enumerate(entries(config)):
        if kind == "batchnorm":
            keys |= {f"layers.{i}.running_mean", f"layers.{i}.running_var"}
        elif kind == "dropout":
            keys.add(f"layers.{i}.mask")
    return keys


def activation(o: Any, z: Any) -> Any:
    if isinstance(o, dict):
        ((fn, param),) = o.items()
    else:
        fn, param = o, None
    if fn == "sigmoid":
        return torch.sigmoid(z)
    if fn == "tanh":
        return torch.tanh(z)
    if fn == "relu":
        return torch.relu(z)
    if fn == "leaky_relu":
        return F.leaky_relu(z, negative_slope=0.01 if param is None else float(param))
    if fn == "softplus":
        return F.softplus(z, beta=1.0, threshold=1e9)  # exact log(1 + e^z), no linear cut-off
    if fn == "identity":
        return z
    raise AssertionError(f"unknown activation {fn!r}")


def forward(config: dict, params: dict[str, Any], x: Any, buffers: dict[str, Any] | None = None) -> Any:
    """The last layer's output for input x, params keyed ``layers.{i}.W|b``, buffers
    (running statistics, dropout masks) ``layers.{i}.{buffer}``."""
    a = x
    for i, (kind, o) in enumerate(entries(config)):
        if kind == "conv":
            W = params[f"layers.{i}.W"]
            kh, kw = pair(o["kernel"])
            groups = o.get("groups", 1)
            assert tuple(W.shape) == (o["filters"], a.shape[1] // groups, kh, kw), f"layers.{i}.W shape"
            if o.get("mode", "correlation") == "convolution":
                W = torch.flip(W, dims=(-2, -1))  # ROT180(W): a true convolution
            z = F.conv2d(a, W, stride=pair(o.get("stride", 1)), padding=pair(o.get("padding", 0)),
                         dilation=pair(o.get("dilation", 1)), groups=groups)
            bias = o.get("bias", "tied")
            if bias == "tied":
                b = params[f"layers.{i}.b"]
                assert tuple(b.shape) == (o["filters"],)
                z = z + b[None, :, None, None]
            elif bias == "untied":
                b = params[f"layers.{i}.b"]
                assert tuple(b.shape) == tuple(z.shape[1:]), f"untied bias {tuple(b.shape)} vs z {tuple(z.shape)}"
                z = z + b[None]
            else:
                assert bias == "none"
            a = z
        elif kind == "activation":
            a = activation(o, a)
        elif kind == "pool":
            size = pair(o["size"])
            stride = pair(o.get("stride", o["size"]))
            if o["kind"] == "max":
                a = F.max_pool2d(a, size, stride=stride, padding=0)
            else:
                assert o["kind"] == "avg"
                a = F.avg_pool2d(a, size, stride=stride, padding=0)
        elif kind == "flatten":
            a = a.reshape(a.shape[0], -1)  # C order over (C, H, W)
        elif kind == "dense":
            W = params[f"layers.{i}.W"]
            assert tuple(W.shape) == (o["units"], a.shape[1]), f"layers.{i}.W shape"
            a = a @ W.T
            if f"layers.{i}.b" in params:
                a = a + params[f"layers.{i}.b"]
        elif kind in MODERN:
            a = MODERN[kind](a, o or {}, params, buffers or {}, f"layers.{i}")
        else:
            raise AssertionError(f"unknown layer kind {kind!r}")
    return a


def _conv_transpose(a: Any, o: dict, params: dict, buffers: dict, key: str) -> Any:
    W = params[f"{key}.W"]
    kh, kw = pair(o["kernel"])
    assert tuple(W.shape) == (a.shape[1], o["filters"], kh, kw), f"{key}.W shape"
    return F.conv_transpose2d(a, W, params.get(f"{key}.b"), stride=pair(o.get("stride", 1)),
                              padding=pair(o.get("padding", 0)), output_padding=pair(o.get("output_padding", 0)),
                              dilation=pair(o.get("dilation", 1)))


def _batchnorm(a: Any, o: dict, params: dict, buffers: dict, key: str) -> Any:
    train = o.get("mode", "train") == "train"  # train: batch statistics, the buffers unused
    mean, var = (None, None) if train else (buffers[f"{key}.running_mean"], buffers[f"{key}.running_var"])
    return F.batch_norm(a, mean, var, params[f"{key}.gamma"], params[f"{key}.beta"], training=train,
                        eps=float(o.get("eps", 1e-5)))


def _groupnorm(a: Any, o: dict, params: dict, buffers: dict, key: str) -> Any:
    return F.group_norm(a, o["groups"], params[f"{key}.gamma"], params[f"{key}.beta"], eps=float(o.get("eps", 1e-5)))


def _upsample(a: Any, o: dict, params: dict, buffers: dict, key: str) -> Any:
    mode = o.get("mode", "nearest")
    return F.interpolate(a, scale_factor=o.get("scale", 2), mode=mode,
                         align_corners=False if mode == "bilinear" else None)


def _global_pool(a: Any, o: dict, params: dict, buffers: dict, key: str) -> Any:
    pool = F.adaptive_max_pool2d if o.get("kind", "avg") == "max" else F.adaptive_avg_pool2d
    return pool(a, 1).reshape(a.shape[0], a.shape[1])


def _dropout(a: Any, o: dict, params: dict, buffers: dict, key: str) -> Any:
    mask = buffers[f"{key}.mask"]
    rate = float(o["rate"])
    kept = mask != 0
    assert torch.all(mask[kept] == 1.0 / (1.0 - rate)), f"{key}.mask holds 0 and 1/(1-rate) only"
    return a * mask


MODERN = {"conv_transpose": _conv_transpose, "batchnorm": _batchnorm, "groupnorm": _groupnorm,
          "upsample": _upsample, "global_pool": _global_pool, "dropout": _dropout}


def loss_fn(name: str, out: Any, y: Any) -> Any:
    n = out.shape[0]
    if name == "mse":
        return 0.5 * ((out - y) ** 2).reshape(n, -1).sum() / n
    assert name == "softmax_cross_entropy"
    return -torch.log_softmax(out, dim=1)[torch.arange(n), y].mean()


def torch_gradients(config: dict, arrays: dict[str, np.ndarray],
                    overrides: dict[str, np.ndarray] | None = None) -> tuple[float, dict[str, np.ndarray]]:
    """Loss and ∂C/∂(every W, b, x) by torch autograd, keyed like the file's ``grad.*``."""
    dtype = TORCH_DTYPE[config.get("dtype", "float64")]
    src = {**arrays, **(overrides or {})}
    leaves = {k: torch.tensor(src[k], dtype=dtype, requires_grad=True) for k in sorted(expected_param_keys(config))}
    x = torch.tensor(arrays["x"], dtype=dtype, requires_grad=True)
    loss_name = config.get("loss", "mse")
    y = torch.tensor(arrays["y"], dtype=torch.int64 if loss_name == "softmax_cross_entropy" else dtype)
    buffers = {k: torch.tensor(arrays[k], dtype=dtype) for k in sorted(expected_buffer_keys(config))}
    C = loss_fn(loss_name, forward(config, leaves, x, buffers), y)
    C.backward()
    grads = {f"grad.{k}": t.grad.detach().numpy() for k, t in leaves.items()}
    grads["grad.input"] = x.grad.detach().numpy()
    return float(C.item()), grads


def assert_grads_equal(torch_grads: dict[str, np.ndarray], arrays: dict[str, np.ndarray], dtype: str) -> None:
    tol = TOL[dtype]
    # a gradient 0 in truth (a bias right before a train-mode batch norm) is rounding in both
    # frameworks: its entries agree to the network's gradient scale, not to their own
    network = max(float(np.max(np.abs(g))) for g in torch_grads.values() if g.size)
    for key, g in torch_grads.items():
        saved = arrays[key]
        assert saved.shape == g.shape, key
        scale = float(np.max(np.abs(g))) if g.size else 0.0
        scale = max(scale, network)
        np.testing.assert_allclose(saved, g, rtol=tol["rtol"], atol=tol["atol"] * max(scale, 1e-300), err_msg=key)


def norm_rel(g: np.ndarray, n: np.ndarray) -> float:
    denom = np.linalg.norm(g) + np.linalg.norm(n)
    return float(np.linalg.norm(g - n) / denom) if denom > 0 else 0.0


# --------------------------------------------------------------------------- the tests


def test_file_holds_the_conventions_keys(saved: tuple[str, dict, dict]) -> None:
    name, config, arrays = saved
    params = expected_param_keys(config)
    expected = {"x", "y", "loss", "grad.input", "numgrad.input"} | params | expected_buffer_keys(config)
    expected |= {f"grad.{k}" for k in params} | {f"numgrad.{k}" for k in params}
    assert set(arrays) == expected
    inp = config["input"]
    assert arrays["x"].shape == (inp["batch"], inp["channels"], inp["height"], inp["width"])
    assert arrays["x"].dtype == np.dtype(config.get("dtype", "float64"))


def test_torch_reproduces_loss_and_gradients(saved: tuple[str, dict, dict]) -> None:
    name, config, arrays = saved
    dtype = config.get("dtype", "float64")
    loss, grads = torch_gradients(config, arrays)
    np.testing.assert_allclose(float(arrays["loss"]), loss, rtol=TOL[dtype]["loss"], atol=0)
    assert set(grads) == {k for k in arrays if k.startswith("grad.")}
    assert_grads_equal(grads, arrays, dtype)


def test_saved_numeric_gradients_agree_with_torch(saved: tuple[str, dict, dict]) -> None:
    name, config, arrays = saved
    dtype = config.get("dtype", "float64")
    _, grads = torch_gradients(config, arrays)
    errors = {}
    network = max(float(np.max(np.abs(g))) for g in grads.values() if g.size)
    for key, g in grads.items():
        n = arrays["num" + key]
        checked = ~np.isnan(n)
        assert checked.all(), f"{key}: samples: all leaves {int((~checked).sum())} entries unchecked"
        if max(np.max(np.abs(g)), np.max(np.abs(n))) <= 1e-6 * network:  # 0 in truth (a bias before a
            errors[key] = 0.0  # train-mode batch norm): rounding on both sides, no ratio to take
            continue
        errors[key] = norm_rel(g[checked].astype(np.float64), n[checked])
    assert max(errors.values()) < TOL[dtype]["fd"], errors


def test_samples_leaves_the_rest_nan(tmp_path: Path) -> None:
    name = "lenet"  # every tensor of it has more than 5 entries
    config = shipped_yaml(name)
    arrays = run_cli(name, tmp_path / "run.npz", "--samples", "5")
    _, grads = torch_gradients(config, arrays)
    for key, g in grads.items():
        n, a = arrays["num" + key], arrays[key]
        assert n.size > 5, key
        checked = ~np.isnan(n)
        assert int(checked.sum()) == 5, (key, int(checked.sum()))
        assert np.all(np.isfinite(a)), f"{key}: analytic gradient must be complete"
        assert norm_rel(g[checked], n[checked]) < TOL["float64"]["fd"], key
    assert_grads_equal(grads, arrays, "float64")  # the analytic arrays are whole, and right


def test_comparison_has_power(saved: tuple[str, dict, dict]) -> None:
    """Move one saved weight by 1e-3 in the torch model: its gradients no longer match."""
    name, config, arrays = saved
    dtype = config.get("dtype", "float64")
    first_w = min((k for k in expected_param_keys(config) if k.endswith(".W")),
                  key=lambda k: int(k.split(".")[1]))
    W = arrays[first_w].copy()
    W.flat[0] += 1e-3
    loss, grads = torch_gradients(config, arrays, overrides={first_w: W})
    worst = max(float(np.max(np.abs(g - arrays[k]))) for k, g in grads.items())
    assert worst > 1e-6, worst
    with pytest.raises(AssertionError):
        assert_grads_equal(grads, arrays, dtype)
