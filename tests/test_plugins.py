"""Layers of your own: tests/plugins/ holds a user's Conv2D and Tanh, each with deliberate
bugs beside its correct twin.  Each bug must give exit 1, name the right layer and print
the right diagnosis; each twin must pass; a plugin that breaks the protocol is exit 2."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cnngrad.cli import main

PLUGINS = Path(__file__).resolve().parent / "plugins"


def run(*args: str):
    return CliRunner().invoke(main, ["check", *args])


@pytest.mark.parametrize("config, layer, phrase", [
    ("conv_dw_rotated", "layer 0 (Conv2D)", "∂C/∂W matches ROT180(numeric)"),
    ("conv_dw_one_flip", "layer 0 (Conv2D)", "one axis flipped — ROT180 flips both"),
    ("conv_dw_swapped", "layer 0 (Conv2D)", "in/out channels swapped"),
    ("conv_bias_batch_mean", "layer 0 (Conv2D)", "= 1/N: a batch mean where a sum belongs"),
    ("conv_crop_off_by_one", "layer 0 (Conv2D)", "δ matches the numeric δ one pixel down"),
    ("conv_border_zeroed", "layer 0 (Conv2D)", "wrong only within 1 pixel of the border"),
    ("conv_stride_grid_only", "layer 0 (Conv2D)", "right on the stride-2 grid and wrong off it"),
    ("tanh_no_sigma_prime", "layer 1 (Tanh)", "σ' (its ⊙ σ'(z)) is missing"),
])
def test_each_bug_is_caught_located_and_diagnosed(config, layer, phrase):
    result = run(str(PLUGINS / f"{config}.yaml"), "--plugins")
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    located = [ln for ln in lines if "backward is wrong" in ln]
    assert located and located[0].startswith(f"{layer}: backward is wrong"), located
    assert any(ln.strip().startswith("diagnosis:") and phrase in ln for ln in lines), result.stdout
    assert "Traceback" not in result.output


@pytest.mark.parametrize("config", ["conv_null", "tanh_null"])
def test_the_correct_twins_pass(config):
    result = run(str(PLUGINS / f"{config}.yaml"), "--plugins")
    assert result.exit_code == 0, result.output
    kind = "Conv2D" if config.startswith("conv") else "Tanh"
    assert f"│ {kind}" in result.stdout  # the plugin's rows are named after its class
    if kind == "Tanh":  # no parameters: its row is δ at its input, which its backward produces
        assert any("│ Tanh" in ln and "δ input" in ln and "PASS" in ln for ln in result.stdout.splitlines())


def test_a_plugin_config_needs_plugins():
    result = run(str(PLUGINS / "conv_null.yaml"))
    assert result.exit_code == 2 and "--plugins" in result.stderr


def broken(tmp_path: Path, how: str) -> Path:
    cfg = tmp_path / f"broken_{how}.yaml"
    cfg.write_text(f"input: {{batch: 2, channels: 1, height: 4, width: 4}}\n"
                   f"layers:\n  - conv: {{filters: 2, kernel: 3}}\n"
                   f"  - custom: {{class: \"mylayers:Broken\", how: {how}}}\n  - flatten: {{}}\n"
                   f"  - dense: {{units: 3}}\nloss: softmax_cross_entropy\n")
    (tmp_path / "mylayers.py").write_text((PLUGINS / "mylayers.py").read_text())
    return cfg


@pytest.mark.parametrize("how, message", [
    ("raise", "layers[1].custom: Broken.forward raised RuntimeError: boom in forward"),
    ("shape", "layers[1].custom: Broken.forward returned shape (2, 1, 2, 2), expected (2, 2, 2, 2)"),
    ("keys", "layers[1].custom: Broken.backward returned gradients for ['gain'], expected one per parameter: ['g']"),
])
def test_a_plugin_that_breaks_the_protocol_is_exit_2_naming_the_layer(tmp_path, how, message):
    result = run(str(broken(tmp_path, how)), "--plugins")
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert "Traceback" not in result.output


def test_debug_shows_the_plugins_own_exception(tmp_path):
    """--debug prints the plugin's own traceback — and the exit code stays bad input's, 2 (it was
    1, a gradient failure to CI, a QA pass)."""
    result = run(str(broken(tmp_path, "raise")), "--plugins", "--debug")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "RuntimeError" in result.stderr
