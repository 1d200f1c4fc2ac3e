"""`cnngrad sweep`: a flat error is a wrong gradient (exit 1, no best step for it);
matplotlib is checked before any maths; the plot has the tolerance, the reference slopes,
seed and dtype; the command says where it wrote it.

The wrong gradient is tests/plugins/mylayers.py's Conv2D with `bug: dw_rotated` (∂C/∂W
rotated by 180°), so which tensor is wrong is known without cnngrad."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cnngrad import config as cfg
from cnngrad import sweep as sw
from cnngrad.cli import main

ROTATED = str(Path(__file__).parent / "plugins" / "conv_dw_rotated.yaml")


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_a_wrong_gradient_is_flat_and_exits_1() -> None:
    result = invoke("sweep", ROTATED, "--plugins", "--samples", "10")
    assert result.exit_code == 1, result.output
    flat = [ln for ln in result.stdout.splitlines() if "flat: the gradient is wrong" in ln]
    assert len(flat) == 1 and flat[0].startswith("0 Conv2D W: flat: the gradient is wrong")
    assert "  b 0 Conv2D W  (flat)" in result.stdout  # no best step for it
    conf = cfg.load(ROTATED, plugins=True)
    swept = sw.sweep(conf, samples=10)
    row = swept.errors[swept.labels.index("0 Conv2D W")]
    assert np.nanmax(row) < 10 * np.nanmin(row) and np.nanmin(row) > 1e-2  # flat, by the numbers themselves
    assert swept.verdicts().count("ok") == len(swept.labels) - 1
    assert np.isfinite(swept.best())  # the right tensors still name a step


def test_a_correct_network_has_no_flat_tensor() -> None:
    result = invoke("sweep", "seed")
    assert result.exit_code == 0, result.output
    assert "flat" not in result.stdout and "best step for every tensor at once: 1e-" in result.stdout


def test_verdicts_of_made_up_curves() -> None:
    eps = [10.0 ** -k for k in range(1, 7)]
    errors = np.array([[1e-2, 1e-4, 1e-6, 1e-8, 1e-7, 1e-6],    # a V: ok
                       [0.3, 0.31, 0.3, 0.29, 0.3, 0.32],       # flat: wrong
                       [1e-1, 1e-2, 1e-3, 1e-4, 1e-4, 1e-3],    # moves with h, never within tol
                       [np.nan] * 6])
    result = sw.Sweep("t", "central", eps, ["a", "b", "c", "d"], errors, tol=1e-6)
    assert result.verdicts() == ["ok", "flat", "fails", "nan"]
    assert result.best() == 1e-4 and np.isnan(result.best_per_tensor()[1])
    lines = result.problems()
    assert [ln.split(":")[0] for ln in lines] == ["b", "c", "d"] and "flat: the gradient is wrong" in lines[0]
    assert sw.Sweep("t", "central", eps, ["b"], errors[1:2]).problems()  # alone: still flagged
    assert np.isnan(sw.Sweep("t", "central", eps, ["b"], errors[1:2]).best())


def test_plot_needs_matplotlib_before_any_maths(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    calls = []
    monkeypatch.setattr(sw, "sweep", lambda *a, **k: calls.append(1))
    result = invoke("sweep", "seed", "--plot", str(tmp_path / "v.png"))
    assert result.exit_code == 2
    assert result.stderr.strip() == "Error: --plot needs matplotlib: pip install 'cnngrad[plot]'"
    assert calls == [] and not (tmp_path / "v.png").exists()


def test_the_plot_has_tol_slopes_seed_and_dtype(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    conf = cfg.load("seed")
    conf.seed = 5
    result = sw.sweep(conf)
    fig = sw.figure(result)
    ax = fig.axes[0]
    assert ax.get_title() == "cnngrad sweep: seed (central differences, seed 5, float64)"
    labels = {line.get_label(): line for line in ax.get_lines()}
    assert np.allclose(labels["tol 1e-06"].get_ydata(), 1e-6)
    truncation, rounding = labels["slope h² (truncation)"], labels["slope ε/h (rounding)"]
    h = np.asarray(truncation.get_xdata())
    assert np.allclose(truncation.get_ydata() / h ** 2, truncation.get_ydata()[0] / h[0] ** 2)
    assert np.allclose(rounding.get_ydata() * h, rounding.get_ydata()[0] * h[0])
    assert f"best eps {result.best():.0e}" in labels
    out = invoke("sweep", "seed", "--seed", "5", "--plot", str(tmp_path / "v.png"))
    assert out.exit_code == 0 and f"wrote the plot to {tmp_path / 'v.png'}" in out.stderr
    assert (tmp_path / "v.png").read_bytes()[:4] == b"\x89PNG"
    f32 = sw.sweep(cfg.load("float32"), samples=5)
    assert "float32" in sw.figure(f32).axes[0].get_title() and f32.tol == 1e-4
