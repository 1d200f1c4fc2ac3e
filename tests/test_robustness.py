"""Robustness: hostile and broken input, huge networks, numerical faults, Ctrl-C,
determinism across processes."""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnngrad.cli import main
from cnngrad.config import shipped_configs

SHIPPED = {name: yaml.safe_load(res.read_text(encoding="utf-8")) for name, res in shipped_configs().items()}


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def invoke_counting_memory(*args: str):
    """The run and the peak of the memory Python and numpy allocated for it, in bytes: a
    refusal "before any work" is one that never allocates the work's arrays (a bound on
    bytes, not on seconds, holds on a loaded machine too)."""
    tracemalloc.start()
    try:
        result = invoke(*args)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def assert_calm(result, codes=(0, 1, 2)) -> None:
    """An exit code of the contract, never a traceback."""
    assert result.exit_code in codes, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert result.stderr.count("\n") >= 1 and all(ln.startswith("Error: ") for ln in result.stderr.splitlines())


# --------------------------------------------------------------------------- fuzzing

YAML_BITS = st.sampled_from([
    "input:", "layers:", "loss:", "- conv:", "- dense:", "{filters: 2, kernel: 3}", "[", "]", "{", "}", ": ", "- ",
    "&a", "*a", "!!python/object:os.system", "!!binary", "'", '"', "\t", "\n", "  ", "1e999", "-1", "0x10",
    "~", "null", "true", ".nan", "%YAML 1.2", "---", "...", "#", "? ", "|", ">", "\\x00", "é", "😀",
])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=200), st.lists(YAML_BITS, max_size=30).map("".join),
                 st.binary(max_size=200)))
def test_random_yaml_never_tracebacks(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    assert_calm(invoke("validate", str(path)), codes=(0, 2))


MUTANTS = st.sampled_from([-1, 0, 1, 2, 1.5, -2.5, "x", "", None, [], {}, True, False, 10**30, 1e300,
                           [1, 2, 3], {"a": 1}, "tanh", "avg", "conv", [3, 3], "float16", "nan"])


@st.composite
def near_valid(draw):
    """A shipped config with one value somewhere replaced, one key dropped or one added."""
    raw = copy.deepcopy(SHIPPED[draw(st.sampled_from(sorted(SHIPPED)))])
    node = raw
    path = []
    while isinstance(node, (dict, list)) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else list(range(len(node)))))
        path.append(key)
        parent, node = node, node[key]
    if not path:
        parent, key = raw, draw(st.sampled_from(sorted(raw)))
    else:
        key = path[-1]
    action = draw(st.sampled_from(["replace", "drop", "add"]))
    if action == "replace":
        parent[key] = draw(MUTANTS)
    elif action == "drop" and isinstance(parent, dict):
        del parent[key]
    elif isinstance(parent, dict):
        parent[draw(st.sampled_from(["kernal", "units", "stride", "bias", "extra"]))] = draw(MUTANTS)
    return raw


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_valid())
def test_near_valid_configs_never_traceback(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("mut") / "c.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert_calm(invoke("check", str(path), "--samples", "2", "--max-params", "100000"))


# --------------------------------------------------------------------------- hostile and huge


def test_billion_laughs_is_refused_fast(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    lines += ["input: {batch: 1, channels: 1, height: 4, width: 4}", "layers: *i"]
    (tmp_path / "lol.yaml").write_text("\n".join(lines) + "\n")
    result, peak = invoke_counting_memory("check", str(tmp_path / "lol.yaml"))
    assert_calm(result, codes=(2,))
    assert peak < 20e6, f"{peak:,} bytes"
    assert "aliases" in result.stderr


def test_a_billion_parameters_is_refused_fast_with_the_estimate_and_the_flag(tmp_path):
    (tmp_path / "big.yaml").write_text("input: {batch: 1, channels: 100, height: 100, width: 100}\n"
                                       "layers: [{flatten: {}}, {dense: {units: 1000}}]\nloss: mse\n")
    result, peak = invoke_counting_memory("check", str(tmp_path / "big.yaml"))
    assert_calm(result, codes=(2,))
    assert peak < 20e6, f"{peak:,} bytes"  # W alone would be 8 GB
    assert "1,000,001,000 parameters" in result.stderr and "--max-memory" in result.stderr
    result, peak = invoke_counting_memory("check", str(tmp_path / "big.yaml"), "--max-memory", "1e9")
    assert_calm(result, codes=(2,))
    assert peak < 20e6, f"{peak:,} bytes"
    assert "more than --max-params 10,000,000" in result.stderr and "--samples" in result.stderr


def test_python_tags_never_run(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "evil.yaml").write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    result = invoke("check", str(tmp_path / "evil.yaml"))
    assert_calm(result, codes=(2,))
    assert not marker.exists()


def test_overflow_is_a_failed_check_naming_the_layer(tmp_path):
    (tmp_path / "of.yaml").write_text(
        "input: {batch: 2, channels: 1, height: 6, width: 6}\ninit: {normal: 1.0e+200}\nlayers:\n"
        "  - conv: {filters: 2, kernel: 3}\n  - activation: softplus\n  - conv: {filters: 2, kernel: 3}\n"
        "  - flatten: {}\n  - dense: {units: 3}\nloss: softmax_cross_entropy\n")
    result = invoke("check", str(tmp_path / "of.yaml"))
    assert_calm(result, codes=(1,))
    assert "numerical fault: layers[2] conv: the forward pass gives inf or NaN" in result.stdout
    assert result.stderr == ""  # no RuntimeWarning noise


def test_an_overflow_blames_no_backward():
    """Weights ~1e300: the loss is inf.  That is the finding — no layer's backward is said to be
    wrong, no complex step "confirms" a NaN, no adjoint test says "not the adjoint" (found by a
    QA pass: the last dense layer was blamed, and the adjoint test failed flatten and conv)."""
    from cnngrad import check
    report = check({"seed": 0, "input": {"batch": 2, "channels": 1, "height": 6, "width": 6},
                    "init": {"normal": 1e300}, "loss": "mse",
                    "layers": [{"conv": {"filters": 2, "kernel": 3}}, {"activation": "tanh"}, {"flatten": {}},
                               {"dense": {"units": 3}}]})
    assert report.return_code == 1 and "the loss is inf" in report.faults
    assert report.culprit is None
    assert report.localisation.startswith("not localised: the loss is inf — where the forward's numbers overflow")
    assert not any("confirms it" in r.note for r in report.rows)
    assert not any("not the adjoint" in a.line() for a in report.adjoint)
    # each linear layer's own numbers are finite (z ~1e301; only the loss's square overflows): its test
    # is taken and passes — or, where it cannot be, says so
    assert all(not a.failed or not a.finite for a in report.adjoint)


# --------------------------------------------------------------------------- processes


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnngrad", *args], capture_output=True, text=True, **kw)


def without_timings(text: str) -> str:
    data = json.loads(text)
    for c in data["configs"]:
        c.pop("seconds")
    return json.dumps(data)


def test_same_json_in_separate_processes_and_job_counts():
    configs = str(Path(__file__).resolve().parent.parent / "configs")
    runs = [cli("check", configs, "--format", "json", "--samples", "50", *jobs).stdout
            for jobs in ([], [], ["--jobs", "2"])]
    assert len({without_timings(r) for r in runs}) == 1


SLOW = """input: {batch: 8, channels: 3, height: 32, width: 32}
layers:
  - conv: {filters: 16, kernel: 5, padding: 2}
  - activation: tanh
  - conv: {filters: 16, kernel: 5, padding: 2}
  - activation: tanh
  - flatten: {}
  - dense: {units: 10}
  - custom: {class: "reached:Reached", after: 40}  # past the structural checks (per_sample: each of 8 samples alone)
loss: softmax_cross_entropy
"""


def wait_for_line(stream, want: str, timeout: float) -> tuple[bool, list[str], threading.Thread]:
    """Read ``stream`` on a thread; return once a line equal to ``want`` came (True), or
    after ``timeout`` s without it (False).  The thread goes on collecting lines into the
    list until the stream ends (join it)."""
    lines: list[str] = []
    seen = threading.Event()

    def pump() -> None:
        for line in stream:
            lines.append(line)
            if line.rstrip("\n") == want:
                seen.set()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return seen.wait(timeout), lines, thread


@pytest.mark.skipif(os.name != "posix", reason="SIGINT to a child process")
def test_ctrl_c_leaves_no_partial_files(tmp_path):
    """SIGINT once the finite differences are under way — the plugin layer says so on stderr
    at its 10th forward call — never after a fixed sleep."""
    (tmp_path / "slow.yaml").write_text(SLOW)
    (tmp_path / "reached.py").write_text((Path(__file__).parent / "plugins" / "reached.py").read_text())
    outdir = tmp_path / "out"
    outdir.mkdir()
    out, npz = outdir / "report.json", outdir / "run.npz"
    proc = subprocess.Popen([sys.executable, "-m", "cnngrad", "check", str(tmp_path / "slow.yaml"), "--plugins",
                             "--method", "richardson", "--format", "json", "--output", str(out), "--save", str(npz)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, out_lines, out_pump = wait_for_line(proc.stdout, "", timeout=0)  # stdout: collected meanwhile
        reached, err_lines, err_pump = wait_for_line(proc.stderr, "reached", timeout=300)
        assert reached, "".join(err_lines)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out_pump.join(timeout=60)  # the streams end with the process
    err_pump.join(timeout=60)
    stdout, stderr = "".join(out_lines), "".join(err_lines)
    assert proc.returncode == 130, (stdout, stderr)
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert "slow: interrupted after" in stdout  # the tensors finished so far are shown above it
    assert list(outdir.iterdir()) == []  # no report, no .npz, no temp file
