"""Hostile input and faults (issue 11), each case a real `python -m cnngrad` process against
a temporary folder, bounded in time.

No test here ever names /dev/null, /dev/full or another real device as an output: a bug
would destroy it for the whole machine.  Devices are made inside a private mount namespace
(`unshare -m`, a tmpfs on a scratch folder, mknod), FIFOs and symlinks in tmp_path.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from importlib import resources
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cnngrad import baseline as baseline_mod
from cnngrad import escape

TIMEOUT = 180
SEED = (resources.files("cnngrad") / "configs" / "seed.yaml").read_text(encoding="utf-8")

PLUGIN = '''
import os
import sys

KEY = "w\\x1b[31m[/x]|\\n<b>"


class Scale:
    """z = a ⊙ w entry by entry; ``bug``: the gradient of w doubled."""

    per_sample = True

    def __init__(self, in_shape, rng, *, bug=False, boom=None):
        if boom:
            raise ValueError(boom)
        self.out_shape, self.bug = tuple(in_shape), bug
        self.params = {KEY: rng.normal(1.0, 0.1, size=in_shape)}

    def forward(self, a):
        print("plugin says hello on stdout")
        os.write(1, b"and C code writes to descriptor 1\\n")
        sys.stderr.write("FORWARD RAN\\n")
        return a * self.params[KEY], a

    def backward(self, delta, a):
        g = (delta * a).sum(axis=0)
        return delta * self.params[KEY], {KEY: 2 * g if self.bug else g}
'''


def hostile(folder: Path, name: str = "[/oops]", bug: bool = False, boom: str = "", file: str = "hostile.yaml") -> Path:
    """A config with a plugin layer, named ``name`` (written as a YAML double-quoted string)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hostile.py").write_text(PLUGIN, encoding="utf-8")
    options = {"class": "hostile:Scale", "bug": bug} | ({"boom": boom} if boom else {})
    raw = {"name": name, "seed": 1, "input": {"batch": 2, "channels": 1, "height": 4, "width": 4},
           "layers": [{"custom": options}, {"flatten": {}}, {"dense": {"units": 3}}], "loss": "mse"}
    path = folder / file
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def cnngrad(*args: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnngrad", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT, **kwargs)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.fixture()
def seed_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "seed.yaml"
    path.write_text(SEED, encoding="utf-8")
    return path


def _can_unshare() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs none /mnt 2>/dev/null || exit 1"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


needs_namespace = pytest.mark.skipif(not _can_unshare(), reason="no private mount namespace here (unshare -m)")


def in_namespace(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``script`` (sh) in a private mount namespace: mounts made there vanish with it."""
    return subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT, env={**os.environ, "PY": sys.executable})


# --------------------------------------------------------------------------- 1. output files


def test_a_fifo_is_written_through_not_replaced(tmp_path: Path, seed_yaml: Path):
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader is there: the writer's open won't block
    try:
        result = cnngrad("check", str(seed_yaml), "--format", "json", "--output", str(fifo), cwd=tmp_path)
        got = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(reader, 1 << 16):  # a small report: it waits whole in the pipe's buffer
                got += chunk
    finally:
        os.close(reader)
    assert result.returncode == 0, result.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert json.loads(got)["passed"] is True


@needs_namespace
def test_device_nodes_survive_as_outputs(tmp_path: Path):
    """A null and a full device made in a private tmpfs: the report goes through the first,
    the second's ENOSPC is one line, exit 2; both stay character devices."""
    scratch = tmp_path / "dev"
    scratch.mkdir()
    script = (f"mount -t tmpfs none {scratch} && mknod {scratch}/null c 1 3 && mknod {scratch}/full c 1 7 && "
              f'"$PY" -m cnngrad check seed --output {scratch}/null; echo "rc=$?"; '
              f'"$PY" -m cnngrad check seed --save {scratch}/null; echo "rc=$?"; '
              f'"$PY" -m cnngrad check seed --output {scratch}/full; echo "rc=$?"; '
              f"stat -c %F {scratch}/null {scratch}/full")
    result = in_namespace(script, tmp_path)
    codes = re.findall(r"^rc=\d+$", result.stdout, re.M)
    assert codes == ["rc=0", "rc=0", "rc=2"], (result.stdout, result.stderr)
    assert result.stdout.splitlines()[-2:] == ["character special file"] * 2, result.stdout
    assert "No space left on device" in result.stderr and "Traceback" not in result.stderr


def test_dev_stdout_through_a_symlink_writes_to_our_stdout(tmp_path: Path, seed_yaml: Path):
    link = tmp_path / "out"
    link.symlink_to("/dev/stdout")
    result = cnngrad("check", str(seed_yaml), "--format", "json", "--output", str(link), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["passed"] is True
    assert link.is_symlink() and os.readlink(link) == "/dev/stdout"
    # stdout a file the shell opened for appending (`>> log`): the report is appended to it
    log = tmp_path / "log"
    log.write_text("before\n")
    with open(log, "a") as f:
        done = subprocess.run([sys.executable, "-m", "cnngrad", "check", str(seed_yaml), "--format", "json",
                               "--output", str(link)], cwd=tmp_path, stdout=f, stderr=subprocess.PIPE,
                              timeout=TIMEOUT)
    assert done.returncode == 0
    text = log.read_text()
    assert text.startswith("before\n") and json.loads(text[len("before\n"):])["passed"] is True


def test_a_symlink_stays_a_link_and_its_target_keeps_its_mode(tmp_path: Path, seed_yaml: Path):
    target = tmp_path / "real" / "report.txt"
    target.parent.mkdir()
    target.write_text("old")
    target.chmod(0o640)
    link = tmp_path / "report-link"
    link.symlink_to(target)
    result = cnngrad("check", str(seed_yaml), "--output", str(link), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert "PASSED" in target.read_text()
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in target.parent.iterdir()] == ["report.txt"]  # no temp file left behind


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o027, 0o640)])
def test_a_new_file_gets_the_umasks_mode(tmp_path: Path, seed_yaml: Path, umask: int, mode: int):
    out = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", "cnngrad", "check", str(seed_yaml), "--format", "json",
                             "--output", str(out)], cwd=tmp_path, capture_output=True, timeout=TIMEOUT,
                            preexec_fn=lambda: os.umask(umask))
    assert result.returncode == 0
    assert stat.S_IMODE(out.stat().st_mode) == mode


def test_an_input_is_never_an_output(tmp_path: Path):
    config = hostile(tmp_path / "c")
    before = config.read_text(), (tmp_path / "c" / "hostile.py").read_text()
    (tmp_path / "alias.yaml").symlink_to(config)
    for option, path in (("--output", config), ("--output", tmp_path / "alias.yaml"),
                         ("--save", tmp_path / "c" / "hostile.py")):
        result = cnngrad("check", "--plugins", str(config), option, str(path), cwd=tmp_path)
        line = one_line_error(result)
        assert line.startswith(f"Error: {option} {path}: is an input of this run"), line
        assert "FORWARD RAN" not in result.stderr  # refused before any maths
    assert (config.read_text(), (tmp_path / "c" / "hostile.py").read_text()) == before
    record = cnngrad("baseline", "record", str(config), "--plugins", "-o", str(config), cwd=tmp_path)
    assert "is an input of this run" in one_line_error(record)
    baseline = tmp_path / "b.json"
    assert cnngrad("baseline", "record", "seed", "-o", str(baseline), cwd=tmp_path).returncode == 0
    kept = baseline.read_text()
    result = cnngrad("check", "seed", "--baseline", str(baseline), "--output", str(baseline), cwd=tmp_path)
    assert "is an input of this run" in one_line_error(result) and baseline.read_text() == kept


def test_a_missing_folder_is_refused_before_the_check(tmp_path: Path):
    config = hostile(tmp_path / "c")
    for option in ("--output", "--save"):
        result = cnngrad("check", "--plugins", str(config), option, str(tmp_path / "missing" / "x"), cwd=tmp_path)
        assert "folder" in one_line_error(result) and "does not exist" in result.stderr
        assert "FORWARD RAN" not in result.stderr


@needs_namespace
def test_a_read_only_folder_is_refused_before_the_check(tmp_path: Path):
    config = hostile(tmp_path / "c", bug=True)
    ro = tmp_path / "ro"
    ro.mkdir()
    runs = [f'"$PY" -m cnngrad check --plugins {config} {option} {path} 2>&1; echo "rc=$?"'
            for option, path in (("--reproducer", ro / "repro"), ("--output", ro / "r.txt"), ("--save", ro / "s.npz"))]
    runs.append(f'"$PY" -m cnngrad baseline record --plugins {config} -o {ro}/b.json 2>&1; echo "rc=$?"')
    result = in_namespace(f"mount -t tmpfs -o ro none {ro} && " + "; ".join(runs), tmp_path)
    lines = result.stdout.splitlines()
    assert len(lines) == 8, result.stdout + result.stderr
    for message, rc in zip(lines[::2], lines[1::2]):
        assert rc == "rc=2" and "Read-only file system" in message, result.stdout


# --------------------------------------------------------------------------- 2. names are data

NASTY = "[/oops] \x1b[31mred\x1b]0;title\x07 | pipe\nnew[link=http://x]line\x00 <b>"


def test_markup_and_escapes_in_names_reach_no_terminal(tmp_path: Path):
    config = hostile(tmp_path, name=NASTY, bug=True)
    result = cnngrad("check", "--plugins", str(config), "--heatmap", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    for stream in (result.stdout, result.stderr):
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", stream), repr(stream)
    assert "[/oops] \\x1b[31mred" in result.stdout  # shown as written, escapes spelled out
    assert "w\\x1b[31m[/x]|\\x0a<b>" in result.stdout  # the plugin's parameter name too
    assert "[link=http://x]" in result.stdout  # markup is text


def test_a_plugin_message_is_escaped(tmp_path: Path):
    config = hostile(tmp_path, boom="\x1b[2J[bold]cleared[/bold]\nsecond line")
    for args in (["check"], ["validate"]):
        result = cnngrad(*args, "--plugins", str(config), cwd=tmp_path)
        line = one_line_error(result)
        assert "\\x1b[2J[bold]cleared[/bold]" in line and "\x1b" not in result.stderr, line
    record = cnngrad("baseline", "record", "-o", str(tmp_path / "b.json"), "--plugins", str(config), cwd=tmp_path)
    assert record.returncode == 2 and "\\x1b[2J[bold]cleared[/bold]" in record.stderr
    assert "\x1b" not in record.stderr and "Traceback" not in record.stderr


def test_junit_stays_valid_xml_and_markdown_keeps_its_table(tmp_path: Path):
    config = hostile(tmp_path, name=NASTY, bug=True)
    junit = cnngrad("check", "--plugins", str(config), "--format", "junit", cwd=tmp_path)
    assert junit.returncode == 1
    root = ET.fromstring(junit.stdout.encode())  # control characters would make this raise
    assert root.find("testsuite").get("name").startswith("[/oops] \\x1b[31mred")
    md = cnngrad("check", "--plugins", str(config), "--format", "markdown", cwd=tmp_path)
    assert md.returncode == 1
    records = json.loads(cnngrad("check", "--plugins", str(config), "--format", "json", cwd=tmp_path).stdout)
    rows = len(records["configs"][0]["records"])
    lines = md.stdout.splitlines()
    tables = [ln for ln in lines if ln.startswith("|")]
    assert len(tables) == 2 + 1 + 2 + rows  # summary head + 1 config, per-config head + its rows
    for line in tables:
        cells = re.split(r"(?<!\\)\|", line)[1:-1]
        assert len(cells) in (5, 9) and line.endswith("|"), line
    assert sum(ln.startswith("### ") for ln in lines) == 1 and not any(ln.startswith("new[link") for ln in lines)
    assert "\x1b" not in md.stdout and "<b>" not in md.stdout


def test_a_reproducer_file_stays_inside_its_folder(tmp_path: Path):
    config = hostile(tmp_path / "c", name="../../escaped", bug=True)
    repro = tmp_path / "deep" / "repro"
    result = cnngrad("check", "--plugins", str(config), "--reproducer", str(repro), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    written = sorted(p.relative_to(repro) for p in repro.rglob("*") if p.is_file())
    assert len(written) == 2 and all(".." not in p.parts for p in written), written
    assert not list(tmp_path.glob("escaped*")) and not list((tmp_path / "deep").glob("escaped*"))


# --------------------------------------------------------------------------- 3. baselines


@pytest.mark.parametrize("content, where", [
    ('{"baseline_version": 1, "cnngrad_version": "0", "configs": []}', "configs: expected object"),
    ('{"baseline_version": 2, "cnngrad_version": "0", "configs": {}}', "baseline_version: expected 1"),
    ('{"baseline_version": 1, "cnngrad_version": "0", "configs": {"seed": {"digest": "d", "method": "central", '
     '"eps": 1e-6, "fd_dtype": "float64", "tensors": {"0.W": {"norm_rel": "big", "max_abs": 0}}}}}',
     "configs.seed.tensors.0.W.norm_rel: expected number or null"),
    ('{"baseline_version": 1, "cnngrad_version": "0", "configs": {"seed": {"digest": "d", "method": "central", '
     '"eps": 1e-6, "fd_dtype": "float64", "tensors": {"0.W": {"norm_rel": NaN, "max_abs": 0}}}}}',
     "configs.seed.tensors.0.W.norm_rel: expected a finite number"),
    ("[1, 2", "not valid JSON at line 1"),
])
def test_a_baseline_of_the_wrong_shape_is_one_line(tmp_path: Path, content: str, where: str):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    line = one_line_error(cnngrad("check", "seed", "--baseline", str(bad), cwd=tmp_path))
    assert line.startswith(f"Error: --baseline {bad}: ") and where in line, line


def test_the_baseline_schema_file_agrees_with_the_loader(tmp_path: Path):
    jsonschema = pytest.importorskip("jsonschema")
    out = tmp_path / "b.json"
    assert cnngrad("baseline", "record", "seed", "lenet", "-o", str(out), cwd=tmp_path).returncode == 0
    data = json.loads(out.read_text())
    jsonschema.validate(data, baseline_mod.schema())
    assert baseline_mod.load(str(out)) == data
    data["configs"]["seed"]["tensors"]["0.W"]["norm_rel"] = -1.0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, baseline_mod.schema())
    out.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"configs\.seed\.tensors\.0\.W\.norm_rel: expected a number >= 0"):
        baseline_mod.load(str(out))


def test_two_configs_of_one_name_are_refused_at_record(tmp_path: Path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "net.yaml").write_text(SEED)
    result = cnngrad("baseline", "record", "a/net.yaml", "b/net.yaml", "-o", str(tmp_path / "b.json"), cwd=tmp_path)
    line = one_line_error(result)
    assert "'seed'" in line and "a/net.yaml" in line and "b/net.yaml" in line, line
    assert not (tmp_path / "b.json").exists()


# --------------------------------------------------------------------------- 4. reproducers reproduce


def test_a_plugin_reproducer_reruns_to_the_same_verdict_and_numbers(tmp_path: Path):
    config = hostile(tmp_path / "c", name="scaled", bug=True)
    options = ["--method", "forward", "--eps", "3e-7", "--tol", "2e-5", "--samples", "5", "--seed", "7",
               "--directions", "2", "--fd-dtype", "native"]
    first = cnngrad("check", "--plugins", str(config), *options, "--format", "json", "--reproducer",
                    str(tmp_path / "repro"), cwd=tmp_path)
    assert first.returncode == 1, first.stderr
    (yaml_path,) = (tmp_path / "repro").rglob("*.yaml")
    assert (yaml_path.parent / "hostile.py").read_text() == PLUGIN  # the module travels with it
    rerun = next(ln for ln in yaml_path.read_text().splitlines() if ln.startswith("# rerun: "))
    assert rerun == f"# rerun: cnngrad check --plugins {yaml_path}"
    shutil.rmtree(tmp_path / "c")  # only the reproducer's own copy is left to import
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = cnngrad(*rerun.split()[3:], "--format", "json", cwd=elsewhere)
    assert again.returncode == 1, again.stderr

    def numbers(text: str) -> list:
        (config_report,) = json.loads(text)["configs"]
        keep = ("method", "eps", "tol", "seed", "dtype", "fd_dtype", "directions", "loss", "records", "passed")
        return [config_report[k] for k in keep]

    assert numbers(again.stdout) == numbers(first.stdout)
    check = yaml.safe_load(yaml_path.read_text())["check"]
    # a float64 network's own dtype is float64: "native" is written as what it was
    assert check == {"method": "forward", "eps": 3e-7, "tol": 2e-5, "samples": 5, "fd_dtype": "float64",
                     "directions": 2}


# --------------------------------------------------------------------------- seed range, stdout, pipes, loops


def test_the_seed_range_is_one_rule(tmp_path: Path, seed_yaml: Path):
    too_big = 2**63
    cli = one_line_error_of_usage(cnngrad("validate", str(seed_yaml), "--seed", str(too_big), cwd=tmp_path))
    (tmp_path / "big.yaml").write_text(SEED.replace("seed: 0", f"seed: {too_big}"))
    conf = one_line_error(cnngrad("validate", str(tmp_path / "big.yaml"), cwd=tmp_path))
    message = f"expected an integer from 0 to {2**63 - 1}, got {too_big}"
    assert cli.endswith(message) and conf.endswith(message), (cli, conf)
    (tmp_path / "max.yaml").write_text(SEED.replace("seed: 0", f"seed: {too_big - 1}"))
    assert cnngrad("validate", str(tmp_path / "max.yaml"), cwd=tmp_path).returncode == 0
    assert cnngrad("validate", str(seed_yaml), "--seed", str(too_big - 1), cwd=tmp_path).returncode == 0


def one_line_error_of_usage(result: subprocess.CompletedProcess) -> str:
    """click's usage errors come with a usage line and a hint: the last line is the message."""
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_a_plugins_print_does_not_corrupt_json(tmp_path: Path):
    config = hostile(tmp_path)
    for jobs in ("1", "2"):
        result = cnngrad("check", "--plugins", str(config), "seed", "--format", "json", "--jobs", jobs, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["passed"] is True
        assert "plugin says hello on stdout" in result.stderr
        assert "and C code writes to descriptor 1" in result.stderr


@pytest.mark.parametrize("bug, code", [(False, 0), (True, 1)])
def test_a_broken_pipe_ends_quietly_with_the_verdicts_code(tmp_path: Path, bug: bool, code: int):
    """The reader is gone before the first byte (`| head -0`, deterministically)."""
    config = hostile(tmp_path, bug=bug)
    for fmt in ("table", "json"):
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            result = subprocess.run([sys.executable, "-m", "cnngrad", "check", "--plugins", str(config),
                                     "--format", fmt], cwd=tmp_path, stdout=write_end, stderr=subprocess.PIPE,
                                    text=True, timeout=TIMEOUT)
        finally:
            os.close(write_end)
        assert result.returncode == code, result.stderr
        assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr


def test_a_symlink_loop_is_called_one(tmp_path: Path):
    (tmp_path / "a.yaml").symlink_to(tmp_path / "b.yaml")
    (tmp_path / "b.yaml").symlink_to(tmp_path / "a.yaml")
    line = one_line_error(cnngrad("check", "a.yaml", cwd=tmp_path))
    assert "symlink loop" in line and "no such file" not in line, line
    line = one_line_error(cnngrad("check", "seed", "--output", "a.yaml", cwd=tmp_path))
    assert "symlink loop" in line, line


# --------------------------------------------------------------------------- the escapes themselves


@settings(max_examples=300)
@given(st.text())
def test_escapes_hold_for_any_string(s: str):
    shown = escape.printable(s)
    assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]", shown)
    if not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]", s):
        assert shown == s  # only control characters change
    element = ET.Element("e", name=escape.xml(s))
    element.text = escape.xml(s)
    ET.fromstring(ET.tostring(element))  # well-formed XML whatever s held
    cell = escape.markdown(s)
    assert "\n" not in cell and not re.search(r"(?<!\\)\|", cell)
    name = escape.file_name(s)
    assert name and "/" not in name and not name.startswith(".") and name not in ("..", ".")
    assert len(name) <= 80
