"""The layers of modern CNNs (issue 13): grouped/depthwise conv, conv_transpose, batchnorm,
groupnorm, upsample, global_pool, dropout.

Each vectorised forward/backward against its loop reference (``naive_modern``,
``grouped.*_naive``), and against torch autograd (functional ops, no cnngrad code on that
side) to 1e-12; their config checks; the draw order of CONVENTIONS.md (params, then buffers).
"""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from cnngrad import conv as C
from cnngrad import grouped as GC
from cnngrad import naive_modern as naive
from cnngrad.cli import main
from cnngrad.config import ConfigError, load, validate
from cnngrad.finite_diff.shortcuts import capabilities
from cnngrad.layers import LAYERS, Conv
from cnngrad.layers_modern import ConvTranspose, Dropout, GlobalPool, Upsample
from cnngrad.layers_norm import BatchNorm, GroupNorm
from cnngrad.network import build

RNG = np.random.default_rng(13)


def close(a: np.ndarray, b: np.ndarray, rel: float = 1e-12) -> None:
    """Equal to ``rel`` of the larger array's scale (entries that are ~0 included)."""
    scale = max(float(np.max(np.abs(a))), float(np.max(np.abs(b))), 1e-300)
    np.testing.assert_allclose(a, b, rtol=0, atol=rel * scale)


# --------------------------------------------------------------------------- loops


GROUPED = [  # (c, filters, groups, kernel, stride, padding, dilation, mode)
    (4, 6, 2, (3, 3), (1, 1), (0, 0), (1, 1), "correlation"),
    (4, 4, 4, (3, 2), (2, 1), (1, 0), (1, 2), "correlation"),   # depthwise
    (6, 12, 3, (2, 3), (1, 2), (1, 1), (2, 1), "convolution"),
    (3, 6, 3, (3, 3), (2, 2), (1, 1), (1, 1), "correlation"),   # depthwise, 2 filters a channel
]


@pytest.mark.parametrize("c, f, groups, k, s, p, d, mode", GROUPED)
def test_grouped_conv_equals_its_loops(c, f, groups, k, s, p, d, mode):
    layer = Conv((c, 7, 6), np.random.default_rng(0), filters=f, kernel=list(k), stride=list(s),
                 padding=list(p), dilation=list(d), mode=mode, groups=groups)
    assert layer.params["W"].shape == (f, c // groups) + k
    a = RNG.standard_normal((2, c, 7, 6))
    z, cache = layer.forward(a)
    K = layer._kernel()
    a_pad = C.pad(a, p)
    close(z, GC.correlate_naive(a_pad, K, groups, s, d) + layer.params["b"][:, None, None])
    # the grouped conv is the ungrouped one with a block-diagonal kernel
    close(z, C.correlate_naive(a_pad, GC.dense_kernel(K, groups, c), s, d) + layer.params["b"][:, None, None])
    delta = RNG.standard_normal(z.shape)
    d_in, grads = layer.backward(delta, cache)
    close(d_in, C.crop(GC.full_convolve_naive(delta, K, groups, a_pad.shape[-2:], s, d), p))
    nabla = GC.weight_grad_naive(a_pad, delta, groups, k, s, d)
    close(grads["W"], C.rot180(nabla) if mode == "convolution" else nabla)


TRANSPOSED = [  # (kernel, stride, padding, output_padding, dilation)
    ((3, 3), (1, 1), (0, 0), (0, 0), (1, 1)),
    ((3, 3), (2, 2), (1, 1), (1, 1), (1, 1)),
    ((2, 3), (3, 1), (0, 1), (2, 0), (1, 2)),
    ((3, 2), (1, 2), (1, 0), (1, 1), (2, 1)),   # output_padding ≥ stride, < dilation
]


@pytest.mark.parametrize("k, s, p, op, d", TRANSPOSED)
def test_conv_transpose_equals_its_loops(k, s, p, op, d):
    layer = ConvTranspose((3, 4, 5), np.random.default_rng(1), filters=2, kernel=list(k), stride=list(s),
                          padding=list(p), output_padding=list(op), dilation=list(d))
    a = RNG.standard_normal((2, 3, 4, 5))
    W, b = layer.params["W"], layer.params["b"]
    z, cache = layer.forward(a)
    assert z.shape[1:] == layer.out_shape
    close(z, naive.conv_transpose_forward(a, W, b, s, p, op, d))
    delta = RNG.standard_normal(z.shape)
    d_in, grads = layer.backward(delta, cache)
    loop_in, loop_w = naive.conv_transpose_backward(a, W, delta, s, p, d)
    close(d_in, loop_in)
    close(grads["W"], loop_w)
    close(grads["b"], delta.sum(axis=(0, 2, 3)))


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("scale", [1, 2, 3])
def test_upsample_equals_its_loops(mode, scale):
    layer = Upsample((2, 3, 4), np.random.default_rng(0), scale=scale, mode=mode)
    a = RNG.standard_normal((2, 2, 3, 4))
    z, cache = layer.forward(a)
    close(z, naive.upsample_forward(a, scale, mode))
    delta = RNG.standard_normal(z.shape)
    close(layer.backward(delta, cache)[0], naive.upsample_backward(delta, scale, mode))


@pytest.mark.parametrize("kind", ["avg", "max"])
def test_global_pool_equals_its_loops(kind):
    layer = GlobalPool((3, 4, 5), np.random.default_rng(0), kind=kind)
    a = RNG.standard_normal((2, 3, 4, 5))
    z, cache = layer.forward(a)
    close(z, naive.global_pool_forward(a, kind)[0])
    delta = RNG.standard_normal(z.shape)
    close(layer.backward(delta, cache)[0], naive.global_pool_backward(a, delta, kind))


def test_global_max_pool_takes_the_first_maximum_and_says_which():
    layer = GlobalPool((1, 2, 2), np.random.default_rng(0), kind="max")
    a = np.array([[[[1.0, 3.0], [3.0, 0.0]]]])
    z, cache = layer.forward(a)
    assert z[0, 0] == 3.0
    np.testing.assert_array_equal(layer.backward(np.array([[2.0]]), cache)[0], [[[[0, 2.0], [0, 0]]]])
    np.testing.assert_array_equal(layer.kink_state(cache), [[1]])


@pytest.mark.parametrize("mode, shape", [("train", (4, 3, 3, 2)), ("train", (5, 4)), ("eval", (3, 2, 2, 3)),
                                         ("eval", (3, 4))])
def test_batchnorm_equals_its_loops(mode, shape):
    layer = BatchNorm(shape[1:], np.random.default_rng(2), mode=mode, eps=1e-3)
    x = RNG.standard_normal(shape) * 1.5 + 0.3
    g, b = layer.params["gamma"], layer.params["beta"]
    stats = None if mode == "train" else (layer.buffers["running_mean"], layer.buffers["running_var"])
    z, cache = layer.forward(x)
    close(z, naive.norm_forward(x, g, b, 1e-3, "batchnorm", stats=stats))
    delta = RNG.standard_normal(shape)
    d_in, grads = layer.backward(delta, cache)
    loop_in, loop_g, loop_b = naive.norm_backward(x, g, delta, 1e-3, "batchnorm", stats=stats)
    close(d_in, loop_in, 1e-10)
    close(grads["gamma"], loop_g)
    close(grads["beta"], loop_b)


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_groupnorm_equals_its_loops(groups):
    layer = GroupNorm((6, 3, 2), np.random.default_rng(3), groups=groups)
    x = RNG.standard_normal((2, 6, 3, 2)) * 2 - 0.5
    g, b = layer.params["gamma"], layer.params["beta"]
    z, cache = layer.forward(x)
    close(z, naive.norm_forward(x, g, b, 1e-5, "groupnorm", groups))
    delta = RNG.standard_normal(x.shape)
    d_in, grads = layer.backward(delta, cache)
    loop_in, loop_g, loop_b = naive.norm_backward(x, g, delta, 1e-5, "groupnorm", groups)
    close(d_in, loop_in, 1e-10)
    close(grads["gamma"], loop_g)
    close(grads["beta"], loop_b)


def test_dropout_mask_is_inverted_and_fixed():
    layer = Dropout((3, 4, 4), np.random.default_rng(0), rate=0.25, batch=50)
    mask = layer.buffers["mask"]
    assert mask.shape == (50, 3, 4, 4)
    assert set(np.unique(mask)) == {0.0, 1.0 / 0.75}
    assert abs(float(np.mean(mask == 0)) - 0.25) < 0.03  # 2400 draws
    a = RNG.standard_normal(mask.shape)
    z, cache = layer.forward(a)
    np.testing.assert_array_equal(z, a * mask)
    np.testing.assert_array_equal(layer.forward(a)[0], z)  # the same mask every call
    np.testing.assert_array_equal(layer.backward(a, cache)[0], a * mask)
    with pytest.raises(ValueError, match="mask"):
        layer.forward(a[:3])


# --------------------------------------------------------------------------- declarations


def test_declared_capabilities_hold_only_where_true():
    rng = np.random.default_rng(0)
    caps = {name: capabilities(layer) for name, layer in {
        "bn_train": BatchNorm((3, 4, 4), rng), "bn_eval": BatchNorm((3, 4, 4), rng, mode="eval"),
        "gn": GroupNorm((4, 3, 3), rng, groups=2), "ct": ConvTranspose((2, 3, 3), rng, filters=2),
        "up": Upsample((2, 3, 3), rng), "gp": GlobalPool((2, 3, 3), rng, kind="max"),
        "drop": Dropout((2, 3, 3), rng, rate=0.5, batch=2),
        "grouped": Conv((4, 5, 5), rng, filters=4, groups=2)}.items()}
    assert not caps["bn_train"].per_sample  # couples the samples through the batch statistics
    assert caps["bn_eval"].per_sample and caps["gn"].per_sample and caps["ct"].per_sample
    assert not caps["drop"].per_sample  # row n of the mask belongs to sample n
    assert caps["gp"].kink_state and not caps["bn_train"].kink_state
    assert all(c.complex_safe for c in caps.values())
    # per-channel parameters are not "elementwise" (the same function at every entry)
    assert not caps["bn_eval"].offers and not caps["gn"].offers and caps["up"].offers == {"channelwise"}
    assert caps["gp"].offers == {"piece"}  # global max pooling held on its argmax along a direction
    assert caps["grouped"].offers == {"perturbed", "input_delta", "window"}


def test_registry_holds_the_new_kinds():
    assert {"conv_transpose", "batchnorm", "groupnorm", "upsample", "global_pool", "dropout"} <= set(LAYERS)


# --------------------------------------------------------------------------- config


def conf(*layers, batch: int = 2, shape=(4, 6, 6), **top):
    c, h, w = shape
    return {"seed": 0, "input": {"batch": batch, "channels": c, "height": h, "width": w}, "layers": list(layers),
            "loss": "mse", **top}


@pytest.mark.parametrize("layer, place, words", [
    ({"conv": {"filters": 6, "kernel": 3, "groups": 3}}, "layers[0].conv.groups", "divide"),
    ({"conv": {"filters": 4, "kernel": 3, "groups": 0}}, "layers[0].conv.groups", "integer"),
    ({"conv_transpose": {"filters": 2, "kernel": 3, "stride": 2, "output_padding": 2}},
     "layers[0].conv_transpose.output_padding", "smaller than the stride"),
    ({"conv_transpose": {"filters": 2, "kernel": 3, "bias": "untied"}}, "layers[0].conv_transpose.bias", "tied"),
    ({"conv_transpose": {"filters": 2, "kernel": 1, "padding": 6}}, "layers[0].conv_transpose.padding", "crops"),
    ({"conv_transpose": {"kernel": 3}}, "layers[0].conv_transpose", "filters"),
    ({"batchnorm": {"mode": "training"}}, "layers[0].batchnorm.mode", "train"),
    ({"batchnorm": {"eps": 0}}, "layers[0].batchnorm.eps", "positive"),
    ({"batchnorm": {"momentum": 0.1}}, "layers[0].batchnorm.momentum", "unknown key"),
    ({"groupnorm": {"groups": 3}}, "layers[0].groupnorm.groups", "divide"),
    ({"groupnorm": {}}, "layers[0].groupnorm", "groups"),
    ({"upsample": {"mode": "bicubic"}}, "layers[0].upsample.mode", "nearest"),
    ({"upsample": {"scale": 1.5}}, "layers[0].upsample.scale", "integer"),
    ({"global_pool": {"kind": "sum"}}, "layers[0].global_pool.kind", "avg"),
    ({"dropout": {"rate": 1.0}}, "layers[0].dropout.rate", "from 0"),
    ({"dropout": {}}, "layers[0].dropout", "rate"),
])
def test_bad_options_are_one_line_errors_naming_the_place(layer, place, words):
    with pytest.raises(ConfigError) as e:
        validate(conf(layer))
    msg = str(e.value)
    assert msg.startswith(place + ":") and words in msg and "\n" not in msg, msg


def test_layers_that_need_a_map_say_so_on_a_flat_input():
    for layer in ({"groupnorm": {"groups": 1}}, {"upsample": {}}, {"global_pool": {}},
                  {"conv_transpose": {"filters": 1, "kernel": 1}}):
        with pytest.raises(ConfigError, match=r"^layers\[1\]\.\w+: needs an input of shape \(channels"):
            validate(conf("flatten", layer))
    flat = validate(conf("flatten", {"batchnorm": {}}, {"dropout": {"rate": 0.5}}))  # per feature over N
    assert [s.out_shape for s in flat.layers] == [(144,)] * 3


def test_cli_exits_2_with_the_place(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("input: {batch: 2, channels: 2, height: 4, width: 4}\n"
                    "layers:\n  - conv_transpose: {filters: 2, kernel: 3, stride: 2, output_padding: 3}\n")
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 2
    assert "layers[0].conv_transpose.output_padding" in result.output
    assert "Traceback" not in result.output


def test_shapes_and_param_counts():
    config = validate(conf({"conv": {"filters": 8, "kernel": 3, "padding": 1, "groups": 4}},
                           {"conv_transpose": {"filters": 3, "kernel": [3, 2], "stride": 2, "padding": 1,
                                               "output_padding": 1}},
                           {"upsample": {"scale": 3, "mode": "bilinear"}}, {"batchnorm": {}},
                           {"groupnorm": {"groups": 3}}, {"dropout": {"rate": 0.1}}, {"global_pool": {"kind": "max"}}))
    shapes = [s.out_shape for s in config.layers]
    assert shapes == [(8, 6, 6), (3, 12, 11), (3, 36, 33), (3, 36, 33), (3, 36, 33), (3, 36, 33), (3,)]
    net = build(config).net
    count = sum(p.size for layer in net.layers for p in layer.params.values())
    assert config.size["params"] == count == (8 * 1 * 9 + 8) + (8 * 3 * 6 + 3) + 6 + 6


# --------------------------------------------------------------------------- draws


def test_draw_order_params_then_buffers_then_x():
    """CONVENTIONS.md: depth-first, each layer's params then its buffers, then x; fan-in
    C/groups·kh·kw for conv, F·kh·kw for conv_transpose; gamma ~ 1 + N(0, 0.1²)…"""
    config = validate(conf({"conv": {"filters": 4, "kernel": 3, "groups": 2}}, {"batchnorm": {"mode": "eval"}},
                           {"conv_transpose": {"filters": 3, "kernel": 2, "bias": "tied"}},
                           {"dropout": {"rate": 0.5}}, {"groupnorm": {"groups": 1}}, seed=7, init="lecun"))
    p = build(config)
    rng = np.random.default_rng(7)
    want = {
        "0.W": rng.normal(0, np.sqrt(1 / (2 * 9)), (4, 2, 3, 3)), "0.b": rng.normal(0, 0.1, 4),
        "1.gamma": 1 + rng.normal(0, 0.1, 4), "1.beta": rng.normal(0, 0.1, 4),
        "1.running_mean": rng.normal(0, 0.1, 4), "1.running_var": rng.uniform(0.5, 1.5, 4),
        "2.W": rng.normal(0, np.sqrt(1 / (3 * 4)), (4, 3, 2, 2)), "2.b": rng.normal(0, 0.1, 3),
        "3.mask": (rng.random((2, 3, 5, 5)) >= 0.5) * 2.0,
        "4.gamma": 1 + rng.normal(0, 0.1, 3), "4.beta": rng.normal(0, 0.1, 3),
    }
    x = rng.normal(0, 1, (2, 4, 6, 6))
    for key, value in want.items():
        i, name = key.split(".")
        layer = p.net.layers[int(i)]
        got = layer.params.get(name, getattr(layer, "buffers", {}).get(name))
        np.testing.assert_array_equal(got, value, err_msg=key)
    np.testing.assert_array_equal(p.x, x)


def test_save_writes_buffers(tmp_path):
    out = tmp_path / "run.npz"
    result = CliRunner().invoke(main, ["check", "bn-train", "--save", str(out)])
    assert result.exit_code == 0, result.output
    p = build(load("bn-train"))
    with np.load(out) as f:
        for i, layer in enumerate(p.net.layers):
            for name, buf in getattr(layer, "buffers", {}).items():
                np.testing.assert_array_equal(f[f"layers.{i}.{name}"], buf)
        assert {"layers.1.running_mean", "layers.1.running_var", "layers.6.mask"} <= set(f.files)


# --------------------------------------------------------------------------- torch autograd, layer by layer


def torch_case(kind: str):
    """(cnngrad layer, torch function of (x, *params), input shape)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(5)
    if kind == "grouped":
        layer = Conv((6, 7, 7), rng, filters=9, kernel=3, stride=2, padding=1, dilation=1, groups=3)
        return layer, lambda x, W, b: F.conv2d(x, W, b, stride=2, padding=1, groups=3), (3, 6, 7, 7)
    if kind == "depthwise":
        layer = Conv((4, 6, 6), rng, filters=4, kernel=[3, 2], dilation=[1, 2], padding=1, groups=4, bias="none")
        return layer, lambda x, W: F.conv2d(x, W, None, padding=1, dilation=(1, 2), groups=4), (2, 4, 6, 6)
    if kind == "conv_transpose":
        layer = ConvTranspose((3, 4, 5), rng, filters=4, kernel=3, stride=[2, 3], padding=1,
                              output_padding=[1, 2], dilation=1)
        return layer, lambda x, W, b: F.conv_transpose2d(x, W, b, stride=(2, 3), padding=1,
                                                         output_padding=(1, 2)), (2, 3, 4, 5)
    if kind == "conv_transpose_dilated":
        layer = ConvTranspose((2, 3, 3), rng, filters=2, kernel=2, stride=1, output_padding=1, dilation=2,
                              bias="none")
        return layer, lambda x, W: F.conv_transpose2d(x, W, None, output_padding=1, dilation=2), (2, 2, 3, 3)
    if kind in ("bn_train", "bn_eval", "bn_flat"):
        shape = (5, 4) if kind == "bn_flat" else (4, 3, 3, 3)
        layer = BatchNorm(shape[1:], rng, mode="eval" if kind == "bn_eval" else "train")
        rm, rv = (torch.tensor(layer.buffers["running_mean"]), torch.tensor(layer.buffers["running_var"]))
        train = kind != "bn_eval"
        return layer, lambda x, g, b: F.batch_norm(x, None if train else rm, None if train else rv, g, b,
                                                   training=train, eps=1e-5), shape
    if kind == "groupnorm":
        layer = GroupNorm((6, 3, 4), rng, groups=3)
        return layer, lambda x, g, b: F.group_norm(x, 3, g, b, eps=1e-5), (2, 6, 3, 4)
    if kind in ("nearest", "bilinear", "bilinear3"):
        scale = 3 if kind == "bilinear3" else 2
        mode = "nearest" if kind == "nearest" else "bilinear"
        layer = Upsample((2, 3, 5), rng, scale=scale, mode=mode)
        return layer, lambda x: F.interpolate(x, scale_factor=scale, mode=mode,
                                              align_corners=None if mode == "nearest" else False), (2, 2, 3, 5)
    if kind in ("gp_avg", "gp_max"):
        layer = GlobalPool((3, 4, 4), rng, kind=kind[3:])
        pool = F.adaptive_avg_pool2d if kind == "gp_avg" else F.adaptive_max_pool2d
        return layer, lambda x: pool(x, 1).flatten(1), (2, 3, 4, 4)
    layer = Dropout((3, 2, 2), rng, rate=0.4, batch=3)
    mask = torch.tensor(layer.buffers["mask"])
    return layer, lambda x: x * mask, (3, 3, 2, 2)


TORCH_KINDS = ["grouped", "depthwise", "conv_transpose", "conv_transpose_dilated", "bn_train", "bn_eval", "bn_flat",
               "groupnorm", "nearest", "bilinear", "bilinear3", "gp_avg", "gp_max", "dropout"]


@pytest.mark.parametrize("kind", TORCH_KINDS)
def test_each_layer_against_torch_autograd(kind):
    torch = pytest.importorskip("torch")
    layer, fn, shape = torch_case(kind)
    x = RNG.standard_normal(shape) * 1.3 + 0.2
    names = list(layer.params)
    tx = torch.tensor(x, requires_grad=True)
    tp = [torch.tensor(layer.params[n], requires_grad=True) for n in names]
    out = fn(tx, *tp)
    z, cache = layer.forward(x)
    close(z, out.detach().numpy())
    delta = RNG.standard_normal(z.shape)
    out.backward(torch.tensor(delta))
    d_in, grads = layer.backward(delta, cache)
    close(d_in, tx.grad.numpy(), 1e-11)
    for n, t in zip(names, tp):
        close(grads[n], t.grad.numpy(), 1e-11)
