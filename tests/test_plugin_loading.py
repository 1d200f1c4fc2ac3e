"""Plugins are loaded by file path, beside their config, one module object per file, with
no sys.path edits and no sys.modules collisions; and a plugin that leaves the process
(sys.exit, exit(), os._exit) stops only its own config, with exit 2 naming the layer."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cnngrad import config as cfg
from cnngrad.cli import main

PLUGINS = Path(__file__).resolve().parent / "plugins"
COLLISION = PLUGINS / "collision"

PLAIN = """input: {batch: 2, channels: 1, height: 5, width: 5}
layers:
  - conv: {filters: 2, kernel: 3}
  - activation: tanh
  - flatten: {}
  - dense: {units: 3}
loss: softmax_cross_entropy
"""


def own_import(path: Path, name: str):
    """The test's own loading of a plugin file, for the oracle (not cnngrad's)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def naive_dg_error(module) -> float:
    """norm rel of Gain.backward's ∂C/∂g against a plain loop of central differences of
    C(g) = Σ R ⊙ forward(a) (so δ = R), written here."""
    rng = np.random.default_rng(0)
    layer = module.Gain((3, 4, 4), rng)
    a, R = rng.normal(size=(3, 3, 4, 4)), rng.normal(size=(3, 3, 4, 4))
    _, grads = layer.backward(R, layer.forward(a)[1])
    g, h, num = layer.params["g"], 1e-6, np.zeros(3)
    for c in range(3):
        keep = g[c]
        g[c] = keep + h
        up = np.sum(R * layer.forward(a)[0])
        g[c] = keep - h
        down = np.sum(R * layer.forward(a)[0])
        g[c] = keep
        num[c] = (up - down) / (2 * h)
    return float(np.linalg.norm(grads["g"] - num) / (np.linalg.norm(grads["g"]) + np.linalg.norm(num)))


def test_the_oracle_says_a_is_right_and_b_is_wrong():
    assert naive_dg_error(own_import(COLLISION / "a" / "mylayers.py", "oracle_a")) < 1e-8
    assert naive_dg_error(own_import(COLLISION / "b" / "mylayers.py", "oracle_b")) > 1e-2


@pytest.mark.parametrize("order", [("a", "b"), ("b", "a")])
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_two_folders_with_one_module_name_each_run_their_own_code(order, jobs):
    result = CliRunner().invoke(main, ["check", *(str(COLLISION / d / "net.yaml") for d in order), "--plugins",
                                       "--format", "json", "--jobs", jobs])
    assert result.exit_code == 1, result.output
    verdicts = {c["name"]: c["passed"] for c in json.loads(result.stdout)["configs"]}
    assert verdicts == {"gain_a": True, "gain_b": False}
    failing = [r for c in json.loads(result.stdout)["configs"] for r in c["records"] if r["status"] != "pass"]
    assert {(r["config"], r["kind"], r["tensor"]) for r in failing} >= {("gain_b", "Gain", "g")}
    assert all(r["config"] == "gain_b" for r in failing)


def test_no_sys_path_edit_and_no_plain_module_name_taken():
    before = list(sys.path)
    a = cfg.load(str(COLLISION / "a" / "net.yaml"), plugins=True)
    b = cfg.load(str(COLLISION / "b" / "net.yaml"), plugins=True)
    assert sys.path == before
    assert "mylayers" not in sys.modules or not sys.modules["mylayers"].__file__.startswith(str(COLLISION))
    ga, gb = a.layers[1].cls, b.layers[1].cls
    assert ga is not gb and ga.__module__ != gb.__module__
    assert sys.modules[ga.__module__].__file__ == str((COLLISION / "a" / "mylayers.py").resolve())
    # one module object per file: loading a.yaml again gives the very same class
    assert cfg.load(str(COLLISION / "a" / "net.yaml"), plugins=True).layers[1].cls is ga


def with_plugin(tmp_path: Path, files: dict[str, str], cls: str) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    path = tmp_path / "net.yaml"
    path.write_text(PLAIN.replace("  - activation: tanh\n", f"  - custom: {{class: \"{cls}\"}}\n"))
    return path


IDENTITY = "class Same:\n    def __init__(self, s, rng):\n        self.out_shape, self.params = s, {}\n" \
           "    def forward(self, a):\n        return a, None\n    def backward(self, d, c):\n        return d, {}\n"


@pytest.mark.parametrize("files, cls", [
    ({"pkg/mod.py": IDENTITY}, "pkg.mod:Same"),  # a dotted name is a path below the folder
    ({"lib/__init__.py": "from .impl import Same\n", "lib/impl.py": IDENTITY}, "lib:Same"),  # a package
    ({"pkg/__init__.py": "", "pkg/mod.py": "from .helpers import Same\n", "pkg/helpers.py": IDENTITY},
     "pkg.mod:Same"),  # a module of a package, importing its sibling relatively
])
def test_dotted_names_and_packages_resolve_beside_the_config(tmp_path, files, cls):
    result = CliRunner().invoke(main, ["check", str(with_plugin(tmp_path, files, cls)), "--plugins"])
    assert result.exit_code == 0, result.output
    assert "│ Same" in result.stdout


@pytest.mark.parametrize("files, cls, message", [
    ({}, "nomod:X", "layers[1].custom.class: cannot import nomod:X: no file nomod.py (nor nomod/__init__.py) in "),
    ({"m.py": IDENTITY}, "m:Nope", "layers[1].custom.class: cannot import m:Nope: module m ("),
    ({"m.py": "1 / 0\n"}, "m:X", "layers[1].custom.class: cannot import m:X: ZeroDivisionError: division by zero"),
    ({"m.py": "import sibling\n", "sibling.py": ""}, "m:X",
     "layers[1].custom.class: cannot import m:X: ModuleNotFoundError: No module named 'sibling'"),
    ({}, "../up:X", "layers[1].custom.class: cannot import ../up:X: '../up' is not a module name"),
])
def test_import_problems_are_one_line_naming_the_class_key(tmp_path, files, cls, message):
    result = CliRunner().invoke(main, ["check", str(with_plugin(tmp_path, files, cls)), "--plugins"])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.output


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnngrad", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_a_module_in_the_working_directory_is_not_taken_for_the_configs(tmp_path):
    """``python -m`` puts the working directory on sys.path; the config's folder decides."""
    work, conf = tmp_path / "work", tmp_path / "conf"
    shutil.copytree(COLLISION / "b", work)  # the broken Gain, where an import by name would find it
    shutil.copytree(COLLISION / "a", conf)
    proc = cli("check", str(conf / "net.yaml"), "--plugins", cwd=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (conf / "mylayers.py").unlink()
    proc = cli("check", str(conf / "net.yaml"), "--plugins", cwd=work)
    assert proc.returncode == 2 and "no file mylayers.py" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- leaving the process


def exiting_config(tmp_path: Path, options: str, module: str = "exiting", cls: str = "Exiting") -> Path:
    shutil.copy(PLUGINS / f"{module}.py", tmp_path / f"{module}.py")
    path = tmp_path / "leaves.yaml"
    path.write_text(PLAIN.replace("  - activation: tanh\n",
                                  f"  - activation: tanh\n  - custom: {{class: \"{module}:{cls}\"{options}}}\n"))
    return path


@pytest.mark.parametrize("options, message", [
    (", how: sys", "layers[2].custom: Exiting.forward called sys.exit(0)"),
    (", how: builtin, code: 3", "layers[2].custom: Exiting.forward called sys.exit(3)"),
    (", how: os", "layers[2].custom: Exiting.forward called os._exit(0)"),
    (", how: from_os", "layers[2].custom: Exiting.forward called os._exit(0)"),
    (", how: os, at: backward", "layers[2].custom: Exiting.backward called os._exit(0)"),
    # in the differences: the structural checks call a per-sample plugin's forward 7 times (two, two around
    # a forward on another input, three trying per_sample)
    (", how: os, after: 9", "layers[2].custom: Exiting.forward called os._exit(0)"),
    (", how: os, at: build", "layers[2].custom: plugin Exiting called os._exit(0) while being built"),
])
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_plugin_that_exits_stops_its_config_and_the_next_is_still_checked(tmp_path, options, message, jobs):
    (tmp_path / "plain.yaml").write_text(PLAIN)
    proc = cli("check", str(exiting_config(tmp_path, options)), str(tmp_path / "plain.yaml"), "--plugins",
               "--jobs", jobs)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"Error: {tmp_path / 'leaves.yaml'}: {message}\n" in proc.stderr and "Traceback" not in proc.stderr
    assert "PASSED" in proc.stdout and "│ plain" in proc.stdout  # the later config: checked, reported
    assert "ERROR" in proc.stdout  # its row in the summary of all configs


def test_a_module_that_exits_while_imported_is_exit_2_and_the_next_config_runs(tmp_path):
    (tmp_path / "plain.yaml").write_text(PLAIN)
    proc = cli("check", str(exiting_config(tmp_path, "", "exiting_on_import", "Never")),
               str(tmp_path / "plain.yaml"), "--plugins")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert ("layers[2].custom.class: cannot import exiting_on_import:Never: the module called os._exit(0) "
            "while being imported") in proc.stderr
    assert "PASSED" in proc.stdout


def test_os_exit_is_itself_again_after_plugin_code_ran(tmp_path):
    import os

    real = os._exit
    cfg.load(str(exiting_config(tmp_path, ", how: os")), plugins=True)
    assert os._exit is real


def test_os_exit_comes_back_when_the_last_of_overlapping_guarded_calls_ends():
    """Two threads in plugin code at once, leaving in the other order than they came."""
    import os
    import threading

    from cnngrad.plugins import ExitCalled, no_exit

    real = os._exit
    inside, leave_first = threading.Event(), threading.Event()

    def first() -> None:
        with no_exit():
            inside.set()
            leave_first.wait(60)

    t = threading.Thread(target=first)
    t.start()
    assert inside.wait(60)
    with no_exit():
        leave_first.set()
        t.join(60)
        with pytest.raises(ExitCalled):
            os._exit(5)  # the first has left, this call is still under way: still guarded
    assert os._exit is real
