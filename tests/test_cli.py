"""The ``cnngrad`` command line end to end: tables, verdicts, exit codes, saved runs."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cnngrad
from cnngrad import config as cfg
from cnngrad.cli import main
from cnngrad.network import build

SHIPPED = sorted(cfg.shipped_configs())
COLUMNS = ("layer", "kind", "tensor", "shape", "checked", "max abs", "max rel", "norm rel", "status")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # shipped names must not be shadowed by stray files; --save lands here


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def table_rows(stdout: str) -> list[dict[str, str]]:
    """The body rows of the rich table (lines drawn with │)."""
    rows = []
    for line in stdout.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip().strip("│").split("│")]
            assert len(cells) == len(COLUMNS), line
            rows.append(dict(zip(COLUMNS, cells)))
    return rows


def fmt(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def expected_rows(conf: cfg.Config) -> list[tuple[str, str, str, str]]:
    """(layer, kind, tensor, shape) the report must have: δ input, then every parameter
    tensor in layer order (W, then b), worked out from the config alone."""
    rows = [("0", conf.layers[0].kind, "δ input", fmt((conf.batch,) + conf.in_shape))]
    for s in depth_first(conf.layers):
        name = ".".join(map(str, s.path))  # "3", or inside a block "3.1.0"
        if s.kind == "conv":
            kh, kw = s.options["kernel"]
            cin = s.in_shape[0] // s.options.get("groups", 1)
            rows.append((name, "conv", "W", fmt((s.options["filters"], cin, kh, kw))))
            bias = {"tied": s.out_shape[:1], "untied": s.out_shape}.get(s.options["bias"])
            if bias is not None:
                rows.append((name, "conv", "b", fmt(bias)))
        elif s.kind == "dense":
            rows.append((name, "dense", "W", fmt((s.options["units"], s.in_shape[0]))))
            if s.options["bias"]:
                rows.append((name, "dense", "b", fmt((s.options["units"],))))
        elif s.kind == "conv_transpose":  # W (C, F, kh, kw), b (F,)
            f = s.options["filters"]
            rows.append((name, s.kind, "W", fmt((s.in_shape[0], f) + tuple(s.options["kernel"]))))
            if s.options["bias"] == "tied":
                rows.append((name, s.kind, "b", fmt((f,))))
        elif s.kind in ("batchnorm", "groupnorm"):
            rows += [(name, s.kind, p, fmt(s.in_shape[:1])) for p in ("gamma", "beta")]
    return rows


# shipped configs with a gradient that is 0 in truth (a bias right before a train-mode batch
# norm): below the resolution, "unresolved" — never a failure (tests/test_layers13_verdicts.py)
ZERO_IN_TRUTH = {"bn-train": {("0", "b"), ("8", "b")}}


def depth_first(specs: list) -> list:
    """Every layer spec, a block's paths' layers right after it, in file order."""
    return [t for s in specs for t in [s] + [u for path in s.paths for u in depth_first(path)]]


def summary_line(stdout: str) -> str:
    return [ln for ln in stdout.splitlines() if ln.strip()][-1]


# --------------------------------------------------------------------------- check: passing runs


def test_check_seed() -> None:
    result = invoke("check", "seed")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    rows = table_rows(result.stdout)
    want = expected_rows(cfg.load("seed"))
    assert len(want) == 5  # 2 convs x (W, untied b) + δ input
    assert [(r["layer"], r["kind"], r["tensor"], r["shape"]) for r in rows] == want
    assert sum(r["tensor"] == "δ input" for r in rows) == 1
    assert all(r["status"] == "PASS" for r in rows)
    for r in rows:  # samples: all
        assert int(r["checked"]) == math.prod(int(d) for d in r["shape"].split("x"))
    summary = summary_line(result.stdout)
    assert summary.startswith("PASSED")
    assert "5/5" in summary and "seed 0" in summary
    assert "cnngrad check: seed" in result.stdout


@pytest.mark.parametrize("name", SHIPPED)
def test_check_every_shipped_config(name: str) -> None:
    args = ["check", name] + (["--samples", "200"] if name == "lenet" else [])
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    rows = table_rows(result.stdout)
    assert [(r["layer"], r["kind"], r["tensor"], r["shape"]) for r in rows] == expected_rows(cfg.load(name))
    zero = ZERO_IN_TRUTH.get(name, set())
    assert all(r["status"].startswith("UNRESOLVED" if (r["layer"], r["tensor"]) in zero else "PASS")
               for r in rows), result.stdout
    assert summary_line(result.stdout).startswith("PASSED")
    if name == "lenet":
        assert all(int(r["checked"]) <= 200 for r in rows)


@pytest.mark.parametrize("name", SHIPPED)
def test_library_check_every_shipped_config(name: str) -> None:
    """Full checks (every entry; lenet takes a while) through the library API."""
    report = cnngrad.check(name)
    conf = cfg.load(name)
    assert report.passed and report.return_code == 0
    assert report.name == name and np.isfinite(report.loss)
    assert [(str(r.layer), r.kind, "δ input" if r.tensor == "input" else r.tensor, fmt(r.shape))
            for r in report.rows] == expected_rows(conf)
    for r in report.rows:
        assert r.checked + r.kinks == math.prod(r.shape)  # samples: all
        if (str(r.layer), r.tensor) in ZERO_IN_TRUTH.get(name, set()):
            assert r.status == "unresolved"
            continue
        assert r.status == "pass"
        if conf.dtype == "float64":
            assert r.metrics.norm_rel < 1e-7, (r.layer, r.tensor, r.metrics)
        else:
            assert r.metrics.norm_rel <= report.tol


def test_samples_7() -> None:
    result = invoke("check", "seed", "--samples", "7")
    assert result.exit_code == 0, result.output
    rows = table_rows(result.stdout)
    assert len(rows) == 5
    for r in rows:
        assert int(r["checked"]) == min(7, math.prod(int(d) for d in r["shape"].split("x")))
    report = cnngrad.check("strided", samples=7)
    assert all(r.checked <= 7 for r in report.rows)
    assert report.passed


def test_samples_all_is_accepted() -> None:
    result = invoke("check", "seed", "--samples", "all")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("args", [
    ["--samples", "0"], ["--samples", "-3"], ["--samples", "abc"], ["--samples", "1.5"],
    ["--eps", "-1"], ["--eps", "0"], ["--eps", "abc"], ["--tol", "0"], ["--tol", "-1"],
    ["--method", "nope"], ["--seed", "-1"], ["--seed", "x"], ["--bogus"],
    # non-finite steps/tolerances: refused on the command line as in a config's check:
    ["--eps", "nan"], ["--eps", "inf"], ["--tol", "nan"], ["--tol", "inf"],
], ids=lambda a: " ".join(a))
def test_bad_options_exit_2(args: list[str]) -> None:
    result = invoke("check", "seed", *args)
    assert result.exit_code == 2, f"exit {result.exit_code}\n{result.output}"
    assert result.stdout == ""  # refused before any maths
    assert "Error" in result.stderr and "Traceback" not in result.stderr


def test_method_forward() -> None:
    result = invoke("check", "seed", "--method", "forward", "--tol", "1e-4")
    assert result.exit_code == 0, result.output
    assert "forward differences" in summary_line(result.stdout)


# --------------------------------------------------------------------------- failing runs


def test_tiny_tol_fails_with_exit_1() -> None:
    result = invoke("check", "seed", "--tol", "1e-30")
    assert result.exit_code == 1, result.output
    assert result.stderr == ""
    rows = table_rows(result.stdout)
    assert any(r["status"] == "FAIL" for r in rows)
    failures = [ln for ln in result.stdout.splitlines() if ln.startswith("layers[")]
    assert failures
    pattern = re.compile(r"^layers\[\d+\] \w+ (W|b|δ input): norm rel \S+ > tol 1e-30; "
                         r"analytic \S+ numeric \S+ at \[\d+(, \d+)*\]$")
    for ln in failures:
        assert pattern.match(ln), ln
        assert "analytic" in ln and "numeric" in ln
    assert len(failures) == sum(r["status"] == "FAIL" for r in rows)
    assert summary_line(result.stdout).startswith("FAILED")


def test_report_return_code_on_failure() -> None:
    report = cnngrad.check("seed", tol=1e-30)
    assert not report.passed and report.return_code == 1


# --------------------------------------------------------------------------- --save


def _expected_keys(conf: cfg.Config) -> set[str]:
    keys = {"x", "y", "loss", "grad.input", "numgrad.input"}
    for s in conf.layers:
        names = []
        if s.kind == "conv":
            names = ["W"] + ([] if s.options["bias"] == "none" else ["b"])
        elif s.kind == "dense":
            names = ["W"] + (["b"] if s.options["bias"] else [])
        for n in names:
            keys |= {f"layers.{s.index}.{n}", f"grad.layers.{s.index}.{n}", f"numgrad.layers.{s.index}.{n}"}
    return keys


def test_save_strided(tmp_path: Path) -> None:
    result = invoke("check", "strided", "--save", "run.npz")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    conf = cfg.load("strided")
    with np.load(tmp_path / "run.npz") as data:
        arrays = {k: data[k] for k in data.files}
    assert set(arrays) == _expected_keys(conf)
    assert "layers.4.W" in arrays and "layers.4.b" not in arrays  # bias: none
    shapes = {
        "x": (3, 3, 17, 15), "y": (3, 6), "loss": (),
        "layers.0.W": (4, 3, 3, 5), "layers.0.b": (4,),
        "layers.2.W": (5, 4, 3, 3), "layers.2.b": (5, 5, 8),  # untied
        "layers.4.W": (2, 5, 2, 3),
        "layers.6.W": (6, 12), "layers.6.b": (6,),
    }
    for k, shape in shapes.items():
        assert arrays[k].shape == shape, k
    for k in arrays:
        if k.startswith("layers."):
            assert arrays["grad." + k].shape == arrays[k].shape, k
            assert arrays["numgrad." + k].shape == arrays[k].shape, k
    assert arrays["grad.input"].shape == arrays["numgrad.input"].shape == arrays["x"].shape
    assert all(a.dtype == np.float64 for k, a in arrays.items() if k != "y")
    for k in arrays:
        if k.startswith(("grad.", "numgrad.")):  # samples: all -> no NaN
            assert np.all(np.isfinite(arrays[k])), k
    # the file and the config rebuild the same problem
    problem = build(conf)
    np.testing.assert_array_equal(arrays["x"], problem.x)
    np.testing.assert_array_equal(arrays["y"], problem.y)
    for i, layer in enumerate(problem.net.layers):
        for n, p in layer.params.items():
            np.testing.assert_array_equal(arrays[f"layers.{i}.{n}"], p)
    assert np.isfinite(float(arrays["loss"]))


def test_save_with_samples_marks_unchecked_as_nan(tmp_path: Path) -> None:
    result = invoke("check", "seed", "--samples", "7", "--save", "s.npz")
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "s.npz") as data:
        for k in data.files:
            if k.startswith("numgrad."):
                a = data[k]
                assert np.isfinite(a).sum() == min(7, a.size), k
                g = data["grad." + k[len("numgrad."):]]
                ok = np.isfinite(a)
                np.testing.assert_allclose(a[ok], g[ok], rtol=1e-5, atol=1e-8)


def test_save_unwritable_path_exits_2() -> None:
    result = invoke("check", "seed", "--save", "no/such/dir/run.npz")
    assert result.exit_code == 2, result.output
    lines = result.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1 and "--save" in lines[0] and "Traceback" not in result.stderr


def test_determinism(tmp_path: Path) -> None:
    for out, extra in (("a.npz", []), ("b.npz", []), ("c.npz", ["--seed", "5"])):
        result = invoke("check", "strided", "--save", out, *extra)
        assert result.exit_code == 0, result.output
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b, np.load(tmp_path / "c.npz") as c:
        assert sorted(a.files) == sorted(b.files) == sorted(c.files)
        for k in a.files:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
            assert np.array_equal(a[k], b[k], equal_nan=True), k
            assert a[k].tobytes() == b[k].tobytes(), k  # bit-identical
        assert not np.array_equal(a["x"], c["x"])
        assert not np.array_equal(a["layers.0.W"], c["layers.0.W"])


def test_seed_override_shows_in_summary() -> None:
    result = invoke("check", "seed", "--seed", "5")
    assert result.exit_code == 0, result.output
    assert "seed 5" in summary_line(result.stdout)


# --------------------------------------------------------------------------- plugins


PLUGIN = '''
import numpy as np

class Scale:
    """Multiply every entry by its own weight."""
    def __init__(self, in_shape, rng, **options):
        self.out_shape = tuple(in_shape)
        self.params = {"W": rng.normal(1.0, 0.1, size=in_shape)}
    def forward(self, a_prev):
        return a_prev * self.params["W"], (a_prev,)
    def backward(self, delta, cache):
        (a_prev,) = cache
        return delta * self.params["W"], {"W": (delta * a_prev).sum(axis=0)}
'''

PLUGIN_CONFIG = """
input: {batch: 2, channels: 1, height: 4, width: 4}
layers:
  - conv: {filters: 2, kernel: 3}
  - activation: tanh
  - flatten: {}
  - dense: {units: 3}
  - custom: {class: "%s:Scale"}
loss: mse
"""

# the plugin between built-in layers, as CONVENTIONS.md's "a layer is any class with this shape" allows
PLUGIN_MIDDLE_CONFIG = """
input: {batch: 2, channels: 1, height: 4, width: 4}
layers:
  - conv: {filters: 2, kernel: 3}
  - custom: {class: "%s:Scale"}
  - activation: tanh
  - flatten: {}
  - dense: {units: 3}
loss: softmax_cross_entropy
"""


def _plugin_rows(result) -> list[tuple[str, str, str, str]]:
    return [(r["layer"], r["kind"], r["tensor"], r["shape"]) for r in table_rows(result.stdout)]


def test_plugin_layer(tmp_path: Path) -> None:
    (tmp_path / "cnngrad_test_plugin_ok.py").write_text(PLUGIN, encoding="utf-8")
    path = tmp_path / "plug.yaml"
    path.write_text(PLUGIN_CONFIG % "cnngrad_test_plugin_ok", encoding="utf-8")
    refused = invoke("check", str(path))
    assert refused.exit_code == 2 and "--plugins" in refused.stderr
    result = invoke("check", str(path), "--plugins")
    assert result.exit_code == 0, result.output
    assert ("4", "Scale", "W", "3") in _plugin_rows(result)  # rows named after the class
    assert all(r["status"] == "PASS" for r in table_rows(result.stdout))


def test_plugin_layer_between_builtin_layers(tmp_path: Path) -> None:
    """A plugin is an ordinary layer: built-in layers after it get their shapes from it."""
    (tmp_path / "cnngrad_test_plugin_mid.py").write_text(PLUGIN, encoding="utf-8")
    path = tmp_path / "plug.yaml"
    path.write_text(PLUGIN_MIDDLE_CONFIG % "cnngrad_test_plugin_mid", encoding="utf-8")
    result = invoke("check", str(path), "--plugins")
    assert result.exit_code == 0, result.output
    assert ("1", "Scale", "W", "2x2x2") in _plugin_rows(result)


def test_plugin_import_error_is_one_line(tmp_path: Path) -> None:
    """A multi-line exception message from user code still gives a one-line error."""
    (tmp_path / "cnngrad_test_plugin_bad.py").write_text(
        'raise RuntimeError("first line\\nsecond line")\n', encoding="utf-8")
    path = tmp_path / "plug.yaml"
    path.write_text(PLUGIN_CONFIG % "cnngrad_test_plugin_bad", encoding="utf-8")
    result = invoke("check", str(path), "--plugins")
    assert result.exit_code == 2, result.output
    assert "layers[4].custom.class" in result.stderr and "RuntimeError" in result.stderr
    assert len(result.stderr.rstrip("\n").split("\n")) == 1, repr(result.stderr)


# --------------------------------------------------------------------------- other commands


def test_validate_lenet() -> None:
    result = invoke("validate", "lenet")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert "lenet: input 4x1x28x28" in result.stdout
    rows = [[c.strip() for c in ln.strip().strip("│").split("│")]
            for ln in result.stdout.splitlines() if ln.startswith("│")]
    assert [r[0] for r in rows] == [str(i) for i in range(10)]
    assert [r[1] for r in rows] == ["conv", "activation", "pool", "conv", "activation", "pool",
                                    "flatten", "dense", "activation", "dense"]
    assert [r[-1] for r in rows] == ["6x24x24", "6x24x24", "6x12x12", "16x8x8", "16x8x8", "16x4x4",
                                     "256", "120", "120", "10"]


def test_validate_bad_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("input: {batch: 2, channels: 1, height: 4, width: 4}\nlayers: [{conv: {filters: 1, kernel: 5}}]\n",
                    encoding="utf-8")
    result = invoke("validate", str(path))
    assert result.exit_code == 2
    want = "Error: layers[0].conv.kernel: 5x5 kernel does not fit a 4x4 input (after padding 0)"
    assert result.stderr.strip() == want


def test_examples() -> None:
    result = invoke("examples")
    assert result.exit_code == 0, result.output
    names = [ln.split()[0] for ln in result.stdout.splitlines() if ln.strip()]
    assert {"lenet", "seed", "strided", "maxpool", "float32"} <= set(names)
    assert names == SHIPPED
    for ln in result.stdout.splitlines():
        assert len(ln.split(None, 1)) == 2, ln  # each with its one-line description


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"cnngrad, version {cnngrad.__version__}"


def test_help() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("check", "validate", "examples"):
        assert command in result.stdout


def test_a_json_check_does_not_load_rich() -> None:
    """rich is ~20 ms of a start-up that bounds a small check's time: the commands that print
    tables load it, a JSON report (what CI and the benchmarks read) never does."""
    import subprocess
    import sys

    code = ("import sys\nfrom cnngrad.cli import main\ntry:\n"
            "    main(['check', 'lenet', '--format', 'json', '--samples', '3'])\n"
            "except SystemExit as e:\n    code = e.code\n"
            "print(code, sorted(m for m in sys.modules if m.split('.')[0] == 'rich'), file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stderr.strip().splitlines()[-1] == "0 []", done.stderr[-2000:]
    assert '"passed": true' in done.stdout
    table = subprocess.run([sys.executable, "-c", code.replace("'json'", "'table'")], capture_output=True,
                           text=True, timeout=120)
    assert "rich.console" in table.stderr.strip().splitlines()[-1]  # the probe sees rich when it is there


def test_progress_bar_only_on_a_terminal_and_only_for_long_checks() -> None:
    import io

    from rich.console import Console

    from cnngrad.cli import LazyProgress

    quiet = LazyProgress(after=0.0, console=Console(file=io.StringIO(), force_terminal=False))
    quiet(10, 100)
    assert quiet.bar is None  # not a terminal: no bar, ever
    soon = LazyProgress(after=60.0, console=Console(file=io.StringIO(), force_terminal=True))
    soon(10, 100)
    assert soon.bar is None  # a terminal, but the check has not run long yet
    buf = io.StringIO()
    late = LazyProgress(after=0.0, console=Console(file=buf, force_terminal=True, width=100))
    late(10, 100)
    late(100, 100)
    assert late.bar is not None
    assert late.bar.tasks[0].completed == 100 and late.bar.tasks[0].total == 100
    late.close()
    assert "100%" in buf.getvalue()


def test_of_several_configs_each_error_line_names_its_file(tmp_path):
    """``cnngrad check a.yaml b.yaml``: a bad config's one line says which it is (as
    ``validate`` does), with --jobs too; a single config's line stays the place alone."""
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    head = "input: {batch: 1, channels: 1, height: 4, width: 4}\n"
    good.write_text(head + "layers: [{flatten: {}}, {dense: {units: 2}}]\n")
    bad.write_text(head + "layers: [{conv: {filters: 1, kernel: '3x3'}}]\n")
    for extra in ([], ["--jobs", "2"]):
        result = invoke("check", str(good), str(bad), *extra)
        assert result.exit_code == 2
        assert result.stderr.splitlines() == [
            f"Error: {bad}: layers[0].conv.kernel: expected an integer >= 1, got '3x3'"]
    result = invoke("check", str(bad))
    assert result.exit_code == 2
    assert result.stderr == "Error: layers[0].conv.kernel: expected an integer >= 1, got '3x3'\n"


def test_an_init_that_overflows_float32_is_a_failed_check_with_no_warning(tmp_path):
    """``init: {normal: 1e76}`` in float32: the weights are inf — a numerical fault, exit 1 —
    and no numpy RuntimeWarning on stderr (the cast in the layers' init printed four lines)."""
    path = tmp_path / "big.yaml"
    path.write_text("dtype: float32\ninput: {batch: 2, channels: 1, height: 5, width: 5}\ninit: {normal: 1.0e76}\n"
                    "layers: [{conv: {filters: 2, kernel: 3}}, {flatten: {}}, {dense: {units: 3}}]\n")
    for command, code in (("check", 1), ("validate", 0)):  # a process of its own: pytest would catch the warning
        result = subprocess.run([sys.executable, "-m", "cnngrad", command, str(path)], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == code, result.stdout + result.stderr
        assert "Warning" not in result.stderr and "overflow encountered" not in result.stderr, result.stderr
        assert command == "validate" or "numerical fault" in result.stdout


SMALL = "input: {batch: 1, channels: 1, height: 4, width: 4}\nlayers: [{flatten: {}}, {dense: {units: 2}}]\n"


@pytest.mark.parametrize("option, what", [("--output", "file"), ("--save", "file"), ("--reproducer", "folder")])
def test_an_empty_output_path_is_refused_before_any_maths(tmp_path, option, what):
    """``--save "$OUT"`` with OUT unset: an empty path was taken for no path (--save,
    --reproducer: nothing written, exit 0) or said "Is a directory" (--output)."""
    config = tmp_path / "c.yaml"
    config.write_text(SMALL)
    result = invoke("check", str(config), option, "")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == f"Error: {option} '': an empty path; name a {what}\n"


def test_small_memory_limits_and_dates_are_said_as_given(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(SMALL)
    result = invoke("check", str(config), "--max-memory", "0.001")
    assert result.exit_code == 2 and "more than --max-memory 0.001 MB" in result.stderr, result.stderr
    config.write_text("seed: 2001-01-01\n" + SMALL)
    result = invoke("check", str(config))
    assert result.exit_code == 2 and result.stderr == "Error: seed: expected an integer >= 0, got a date (2001-01-01)\n"


def test_a_run_with_no_judged_row_shows_no_worst_error_and_directions_say_their_range():
    """A QA pass: every row UNRESOLVED (float32 at --tol 1e-12) read "worst norm rel 0.00e+00",
    a perfect match; the markdown cell of a config that errored read nan.  Both show "—" now.
    --directions 99999999999 said "an integer from 0", while the command line refuses 0."""
    result = CliRunner().invoke(main, ["check", "float32", "--tol", "1e-12"])
    assert result.exit_code == 0 and "worst norm rel — ·" in result.stdout.splitlines()[-1], result.output
    result = CliRunner().invoke(main, ["check", "seed", "--directions", "99999999999"])
    assert result.exit_code == 2 and "1<=x<=2147483648" in result.stderr, result.output


# --------------------------------------------------------------------------- QA: exit codes and reports agree


def test_debug_keeps_the_exit_code_of_bad_input_and_checks_the_others(tmp_path: Path) -> None:
    """--debug shows the traceback, but a bad config is still exit 2 (it was 1, a gradient
    failure to CI) and the good config beside it is still checked (the run stopped)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: {batch: 1, channels: 1, height: 4, width: 4}\nlayers:\n  - conv: {filters: 1, kernel: 7}\n"
                   "  - flatten: {}\n  - dense: {units: 2}\nloss: mse\n")
    result = CliRunner().invoke(main, ["check", "seed", str(bad), "--debug", "--format", "json"])
    assert result.exit_code == 2, result.output
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr
    import json

    configs = json.loads(result.stdout)["configs"]
    assert [c["return_code"] for c in configs] == [0, 2]
    assert configs[1]["adjoint"] == [] and configs[1]["structural"] == []  # the keys the contract lists


def test_a_nan_in_an_entry_not_sampled_fails_its_row_in_every_format(tmp_path: Path) -> None:
    from oracles import plugin_config

    path = plugin_config(tmp_path, "nan_grad", "class: \"nan_grad:NaNGrad\"", seed=1,
                         shape="{batch: 2, channels: 4, height: 3, width: 3}")
    report = cnngrad.check(path, plugins=True, samples=1)
    (row,) = [r for r in report.rows if r.tensor == "s"]
    assert 0 not in row.indices  # the NaN's entry is not among those checked
    assert row.failed and "inf or NaN" in row.reason
    result = CliRunner().invoke(main, ["check", path, "--plugins", "--samples", "1", "--format", "junit"])
    assert result.exit_code == 1
    assert re.search(r'<testsuites name="cnngrad" tests="\d+" failures="[1-9]', result.stdout), result.stdout[:300]


def test_junit_fails_what_strict_fails() -> None:
    """bn-train has rows unresolved in truth (a bias before a train-mode batch norm): with
    --strict the exit code is 1, and the JUnit report carries a failure, not a skip."""
    plain = invoke("check", "bn-train", "--format", "junit")
    strict = invoke("check", "bn-train", "--strict", "--format", "junit")
    assert plain.exit_code == 0 and 'failures="0"' in plain.stdout and 'skipped="0"' not in plain.stdout
    assert strict.exit_code == 1 and 'skipped="0"' in strict.stdout
    assert re.search(r'<testsuites name="cnngrad" tests="\d+" failures="[1-9]', strict.stdout)


def test_an_unreadable_entry_of_a_folder_is_not_skipped(tmp_path: Path) -> None:
    """A dangling symlink among a folder's configs: exit 2, named (it was skipped, exit 0)."""
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "a.yaml").write_text((Path(cfg.__file__).parent / "configs" / "seed.yaml").read_text())
    (folder / "broken.yaml").symlink_to(tmp_path / "nowhere.yaml")
    result = invoke("check", str(folder))
    assert result.exit_code == 2 and "broken.yaml" in result.output + result.stderr


def test_a_baseline_with_a_config_that_cannot_be_checked_is_not_written(tmp_path: Path) -> None:
    """It was written with the other configs only, and said "recorded" (a QA pass)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: {batch: 1, channels: 1, height: 4, width: 4}\nlayers:\n  - conv: {filters: 1, kernel: 7}\n"
                   "  - flatten: {}\n  - dense: {units: 2}\nloss: mse\n")
    out = tmp_path / "baseline.json"
    result = invoke("baseline", "record", "seed", str(bad), "-o", str(out))
    assert result.exit_code == 2 and not out.exists()
    assert "no baseline written" in result.stderr


def test_sweep_refuses_a_plot_in_a_missing_folder_before_the_maths(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = invoke("sweep", "seed", "--plot", str(tmp_path / "nowhere" / "x.png"))
    assert result.exit_code == 2 and "does not exist" in result.stderr
    assert "│" not in result.stdout  # no table: nothing was computed


def test_a_dash_output_is_stdout_as_click_has_it(tmp_path, monkeypatch):
    """``--output -`` wrote a file named "-" in the working folder; it is stdout now, for the
    report and for ``baseline record -o -``; ``--save -`` (a binary .npz) is refused, exit 2."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(SMALL)
    result = invoke("check", str(config), "--format", "json", "--output", "-")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["passed"] is True and not (tmp_path / "-").exists()
    result = invoke("baseline", "record", str(config), "-o", "-")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) and not (tmp_path / "-").exists() and "in stdout" in result.stderr
    result = invoke("check", str(config), "--save", "-")
    assert result.exit_code == 2 and result.stdout == "" and "--save" in result.stderr and "binary" in result.stderr
    assert not (tmp_path / "-").exists()


def test_two_outputs_into_one_file_and_a_dash_folder_are_refused(tmp_path, monkeypatch):
    """A QA pass: ``--save x --output x`` wrote the report, then the .npz over it (exit 0, the
    report lost); ``--reproducer -`` made a folder named "-".  Both are refused before any
    maths, exit 2, one line; a link to the same file is the same file."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(SMALL)
    result = invoke("check", str(config), "--save", "x.npz", "--output", "x.npz")
    assert result.exit_code == 2 and result.stdout == "" and not (tmp_path / "x.npz").exists()
    assert result.stderr == "Error: --save x.npz: is also --output's file; name another\n", result.stderr
    (tmp_path / "link.npz").symlink_to(tmp_path / "x.npz")
    result = invoke("check", str(config), "--output", "x.npz", "--save", "link.npz")
    assert result.exit_code == 2 and "is also --output's file" in result.stderr
    result = invoke("check", str(config), "--reproducer", "-")
    assert result.exit_code == 2 and "--reproducer" in result.stderr and not (tmp_path / "-").exists()
    result = invoke("check", str(config), "--save", "x.npz", "--output", "y.json")  # two files: as ever
    assert result.exit_code == 0 and (tmp_path / "x.npz").exists() and (tmp_path / "y.json").exists()


def test_a_config_tol_estimate_names_the_config_key():
    """``check: {tol: estimate}`` without ridders named only the flag (--method ridders)."""
    raw = {"input": {"batch": 1, "channels": 1, "height": 4, "width": 4},
           "layers": [{"flatten": {}}, {"dense": {"units": 2}}], "check": {"tol": "estimate"}}
    said = r"check\.tol: estimate needs --method ridders or check\.method: ridders"
    with pytest.raises(cnngrad.config.ConfigError, match=said):
        cnngrad.check(raw)
