"""Snapshot tests of what `cnngrad explain` and `--heatmap` draw.  To accept a deliberate
change: CNNGRAD_UPDATE_SNAPSHOTS=1 pytest tests/test_pictures.py, then review the diff."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from cnngrad.cli import main

HERE = Path(__file__).resolve().parent
SNAPSHOTS = HERE / "snapshots"


def snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    text = "\n".join(line.rstrip() for line in text.splitlines()) + "\n"
    if os.environ.get("CNNGRAD_UPDATE_SNAPSHOTS") or not path.exists():
        path.write_text(text, encoding="utf-8")
        if not os.environ.get("CNNGRAD_UPDATE_SNAPSHOTS"):
            pytest.fail(f"snapshot {name} did not exist: written, review and commit it")
    assert text == path.read_text(encoding="utf-8"), f"{name} changed (CNNGRAD_UPDATE_SNAPSHOTS=1 to accept)"


@pytest.mark.parametrize("config, layer, size", [("seed", 0, 4), ("strided", 2, 4), ("lenet", 3, 5)])
def test_explain(config, layer, size):
    result = CliRunner().invoke(main, ["explain", config, "--layer", str(layer), "--size", str(size)])
    assert result.exit_code == 0, result.output
    assert "✓ equal to the layer's backward" in result.stdout
    snapshot(f"explain_{config}_{layer}.txt", result.stdout)


def test_explain_refuses_a_layer_that_is_not_conv():
    result = CliRunner().invoke(main, ["explain", "lenet", "--layer", "1"])
    assert result.exit_code == 2 and "is an activation layer" in result.stderr and "0, 3" in result.stderr


@pytest.mark.parametrize("config", ["conv_border_zeroed", "conv_stride_grid_only", "conv_crop_off_by_one"])
def test_heatmap(config):
    result = CliRunner().invoke(main, ["check", str(HERE / "plugins" / f"{config}.yaml"), "--plugins",
                                       "--heatmap", "--quiet"])
    assert result.exit_code == 1
    maps = [ln for ln in result.stdout.splitlines() if "|analytic − numeric|" in ln or set(ln) <= set("·░▒▓█ ")]
    assert any("δ input" in ln for ln in maps)
    # the two lowest levels are rounding noise, which differs a little between machines
    snapshot(f"heatmap_{config}.txt", "\n".join(maps).replace("░░", "··"))
