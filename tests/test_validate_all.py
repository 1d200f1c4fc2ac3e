"""`cnngrad validate` takes files and folders and lists every error of every config
(cnngrad/config_errors.py): three mistakes, three lines, exit 2 — and never an error that
only the first mistake caused."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from test_config import CASES

from cnngrad import config as cfg
from cnngrad.cli import main
from cnngrad.config_errors import all_errors, errors_of

LENET = cfg.shipped_configs()["lenet"].read_text(encoding="utf-8")


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def errors_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip()]


THREE = (LENET.replace("seed: 0", "seed: -1")
         .replace("activation: tanh", "activation: tanhh", 1)
         .replace("dense: {units: 120}", "dense: {units: 120, bias: maybe}"))


def test_three_mistakes_three_lines_exit_2(tmp_path: Path) -> None:
    assert THREE.count("tanhh") == 1 and "bias: maybe" in THREE  # the three edits took
    path = tmp_path / "three.yaml"
    path.write_text(THREE)
    result = invoke("validate", str(path))
    assert result.exit_code == 2
    assert errors_lines(result.stderr) == [
        f"Error: seed: expected an integer from 0 to {2**63 - 1}, got -1",
        "Error: layers[1].activation: unknown value 'tanhh' (did you mean 'tanh'?); choose one of sigmoid, "
        "tanh, relu, leaky_relu, softplus, identity",
        "Error: layers[7].dense.bias: expected true or false, got 'maybe'",
    ]
    assert result.stdout == ""


def test_each_mistake_alone_is_the_line_the_list_gives(tmp_path: Path) -> None:
    """Oracle: each mistake made on its own, validated by config.validate (which stops at one)."""
    singles = [LENET.replace("seed: 0", "seed: -1"), LENET.replace("activation: tanh", "activation: tanhh", 1),
               LENET.replace("dense: {units: 120}", "dense: {units: 120, bias: maybe}")]
    want = []
    for text in singles:
        with pytest.raises(cfg.ConfigError) as e:
            cfg.validate(cfg.parse_yaml(text))
        want.append(str(e.value))
    assert all_errors(cfg.parse_yaml(THREE)) == want


def test_no_error_that_only_the_first_caused() -> None:
    """A kernel too big for layer 0 leaves the later shapes unknown: the later layers'
    options are still checked, their fit is not (it may be right once layer 0 is fixed)."""
    raw = cfg.parse_yaml(LENET.replace("conv: {filters: 6, kernel: 5}", "conv: {filters: 6, kernel: 50}"))
    assert all_errors(raw) == ["layers[0].conv.kernel: 50x50 kernel does not fit a 28x28 input (after padding 0)"]
    raw["layers"][3]["conv"]["kernal"] = 3  # an option error later on is found all the same
    raw["layers"][9]["dense"]["units"] = 0
    assert all_errors(raw)[1:] == [
        "layers[3].conv.kernal: unknown key (did you mean 'kernel'?); allowed: filters, kernel, stride, padding, "
        "dilation, bias, mode, groups",
        "layers[9].dense.units: expected an integer from 1 to 2147483648, got 0"]


def test_check_block_and_input_errors_are_each_listed() -> None:
    raw = cfg.parse_yaml(LENET)
    raw["check"] = {"eps": -1, "tol": "small", "bogus": 1}
    raw["input"]["channels"] = 0
    raw["loss"] = "hinge"
    errors = all_errors(raw)
    assert errors[0] == "input.channels: expected an integer from 1 to 65536, got 0"
    assert sorted(e.split(":")[0] for e in errors[1:]) == ["check.bogus", "check.eps", "check.tol", "loss"]


@pytest.mark.parametrize("case_id, text", [(c[0], c[1]) for c in CASES])
def test_the_first_error_is_the_one_validate_gives(tmp_path: Path, case_id: str, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(cfg.ConfigError) as e:
        cfg.load(str(path))
    errors = errors_of(str(path))
    assert errors[0] == str(e.value), case_id
    assert len(errors) == len(set(errors))


def test_valid_configs_have_no_errors() -> None:
    for name in cfg.shipped_configs():
        assert errors_of(name) == [], name


def test_files_and_folders(tmp_path: Path) -> None:
    folder = tmp_path / "nets"
    folder.mkdir()
    (folder / "a_good.yaml").write_text(LENET)
    (folder / "b_three.yaml").write_text(THREE)
    (folder / "c_one.yaml").write_text(LENET.replace("loss: softmax_cross_entropy", "loss: hinge"))
    (tmp_path / "d.yaml").write_text(LENET)
    result = invoke("validate", str(folder), str(tmp_path / "d.yaml"), "strided")
    assert result.exit_code == 2
    lines = errors_lines(result.stderr)
    assert len(lines) == 4
    assert [ln.split(": ")[1] for ln in lines] == [str(folder / "b_three.yaml")] * 3 + [str(folder / "c_one.yaml")]
    assert result.stdout.count("lenet: input 4x1x28x28") == 2 and "strided: input" in result.stdout
    good = invoke("validate", str(tmp_path / "d.yaml"), "strided", "seed")
    assert good.exit_code == 0 and good.stderr == ""
    empty = tmp_path / "empty"
    empty.mkdir()
    none = invoke("validate", str(empty))
    assert none.exit_code == 2 and "no .yaml configs in this directory" in none.stderr
