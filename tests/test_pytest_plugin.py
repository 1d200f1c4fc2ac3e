"""The pytest plugin (cnngrad/pytest_plugin.py): configs as items, one per tensor; failures
show the row, localisation and diagnosis; -k, -x, JUnit, --cnngrad PATH; the fixture.
Also Report's str() and assert_passed().

The failing configs use tests/plugins/mylayers.py's Conv2D with a deliberate bug
(`bug: dw_rotated`: ∂C/∂W rotated by 180°), so which item must fail is known without cnngrad.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import cnngrad

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = Path(__file__).parent / "plugins"
LENET = (ROOT / "cnngrad" / "configs" / "lenet.yaml").read_text()
# lenet: conv, tanh, pool, conv, tanh, pool, flatten, dense, tanh, dense (README's table)
LENET_ITEMS = ["input", "layers.0.W", "layers.0.b", "layers.3.W", "layers.3.b", "layers.7.W", "layers.7.b",
               "layers.9.W", "layers.9.b", "network"]
SMALL = """name: small
seed: 3
input: {batch: 2, channels: 1, height: 6, width: 6}
layers:
  - conv: {filters: 2, kernel: 3}
  - activation: tanh
  - flatten: {}
  - dense: {units: 3}
loss: softmax_cross_entropy
"""


def rotated(name: str = "rot", bug: str = "dw_rotated") -> str:
    return (PLUGINS / "conv_dw_rotated.yaml").read_text().replace("conv_dw_rotated", name).replace(
        "bug: dw_rotated", f"bug: {bug}")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "cnngrad.pytest_plugin", "-p", "no:cacheprovider", *args)


def test_the_entry_point_names_the_plugin_module() -> None:
    text = (ROOT / "pyproject.toml").read_text()  # (tomllib is 3.11+; the project supports 3.10)
    section = text.split("[project.entry-points.pytest11]\n", 1)[1].split("\n[", 1)[0]
    entries = [ln for ln in section.splitlines() if ln.strip() and not ln.startswith("#")]
    assert entries == ['"cnngrad.pytest_plugin" = "cnngrad.pytest_plugin"']


def test_one_item_per_tensor_named_by_its_key(pytester: pytest.Pytester) -> None:
    pytester.makefile(".cnngrad.yaml", lenet=LENET)
    pytester.makefile(".yaml", other=SMALL)  # not *.cnngrad.yaml: not collected
    result = run(pytester, "--collect-only", "-q")
    ids = [ln for ln in result.outlines if "::" in ln]
    assert ids == [f"lenet.cnngrad.yaml::{name}" for name in LENET_ITEMS]


def test_a_correct_config_passes_and_k_selects(pytester: pytest.Pytester) -> None:
    pytester.makefile(".cnngrad.yaml", small=SMALL)
    run(pytester, "-v").assert_outcomes(passed=6)  # input, layers.0.W, layers.0.b, layers.3.W, .b, network
    result = run(pytester, "-v", "-k", "layers.0.W")
    result.assert_outcomes(passed=1, deselected=5)
    assert "small.cnngrad.yaml::layers.0.W PASSED" in result.stdout.str()


def test_a_wrong_backward_fails_its_item_with_row_localisation_and_diagnosis(pytester: pytest.Pytester) -> None:
    pytester.copy_example(str(PLUGINS / "mylayers.py"))
    pytester.makefile(".cnngrad.yaml", rot=rotated())
    result = run(pytester, "--cnngrad-plugins", "-v")
    result.assert_outcomes(failed=1, passed=7)  # input, 0.W, 0.b, 2.W, 2.b, 4.W, 4.b, network
    out = result.stdout.str()
    assert "rot.cnngrad.yaml::layers.0.W FAILED" in out
    assert "rot.cnngrad.yaml::network PASSED" in out  # the W item tells it; not twice
    assert "│     0 │ Conv2D │ W      │ 2x2x3x3 │" in out  # the table row
    assert "layer 0 (Conv2D): backward is wrong; layers 1-4 check out" in out
    assert "diagnosis: ∂C/∂W matches ROT180(numeric)" in out
    assert "Traceback" not in out


def test_x_stops_at_the_first_failure(pytester: pytest.Pytester) -> None:
    pytester.copy_example(str(PLUGINS / "mylayers.py"))
    pytester.makefile(".cnngrad.yaml", a_rot=rotated("a"), b_rot=rotated("b"))
    run(pytester, "--cnngrad-plugins").assert_outcomes(failed=2, passed=14)
    run(pytester, "--cnngrad-plugins", "-x").assert_outcomes(failed=1, passed=1)  # a's input, then a's W


def test_junit_has_a_testcase_per_tensor(pytester: pytest.Pytester) -> None:
    pytester.copy_example(str(PLUGINS / "mylayers.py"))
    pytester.makefile(".cnngrad.yaml", rot=rotated())
    xml = pytester.path / "out.xml"
    run(pytester, "--cnngrad-plugins", f"--junitxml={xml}")
    cases = ET.parse(xml).getroot().iter("testcase")
    verdicts = {c.get("name"): [child.tag for child in c if child.tag != "properties"] for c in cases}
    assert verdicts["layers.0.W"] == ["failure"] and verdicts["input"] == []
    props = {p.get("name"): p.get("value") for p in ET.parse(xml).getroot().iter("property")}
    assert "tensor" in props and "norm_rel" in props
    assert len(verdicts) == 8


def test_cnngrad_option_collects_a_folder_of_plain_yaml(pytester: pytest.Pytester) -> None:
    folder = pytester.mkdir("nets")
    (folder / "small.yaml").write_text(SMALL)
    (folder / "notes.txt").write_text("not a config")
    (pytester.path / "test_nothing.py").write_text("def test_ok():\n    pass\n")
    result = run(pytester, "test_nothing.py", "--cnngrad", "nets", "-v")
    result.assert_outcomes(passed=7)
    assert "nets/small.yaml::layers.0.W PASSED" in result.stdout.str()
    missing = run(pytester, "--cnngrad", "nope")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR and "--cnngrad nope: no such file or folder" in \
        missing.stderr.str()


def test_plugins_must_be_allowed_and_bad_configs_fail_in_one_line(pytester: pytest.Pytester) -> None:
    pytester.copy_example(str(PLUGINS / "mylayers.py"))
    pytester.makefile(".cnngrad.yaml", rot=rotated(), bad=SMALL.replace("kernel: 3", "kernel: 9"))
    result = run(pytester, "-v")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "bad.cnngrad.yaml: layers[0].conv.kernel: 9x9 kernel does not fit a 6x6 input" in out
    assert "run with --plugins to allow it (pytest --cnngrad-plugins allows it)" in out
    pytester.makeini("[pytest]\ncnngrad_plugins = true\n")
    run(pytester, "-k", "rot").assert_outcomes(failed=1, passed=7)


def test_a_structural_failure_fails_the_network_item(pytester: pytest.Pytester) -> None:
    pytester.copy_example(str(PLUGINS / "reentrancy.py"))
    pytester.makefile(".cnngrad.yaml", cache=SMALL.replace(
        "  - activation: tanh", '  - custom: {class: "reentrancy:TanhCache", bug: cache_in_place}'))
    result = run(pytester, "--cnngrad-plugins", "-v")
    out = result.stdout.str()
    assert "cache.cnngrad.yaml::network FAILED" in out
    assert "structural: layers[1] TanhCache: backward changes its cache" in out


def test_the_fixture(pytester: pytest.Pytester) -> None:
    pytester.copy_example(str(PLUGINS / "mylayers.py"))
    pytester.makefile(".yaml", rot=rotated())
    pytester.makepyfile(test_lib="""
        def test_shipped(cnngrad):
            report = cnngrad.assert_passes("lenet", samples=20)
            assert report.passed and len(report.rows) == 9

        def test_relative_to_the_test_file(cnngrad):
            cnngrad.assert_passes("rot.yaml", plugins=True)
    """)
    result = run(pytester, "-v")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "AssertionError: rot: FAILED: 10/11 tensors" in out
    assert "layers[0] Conv2D W: norm rel" in out


def test_xdist_runs_the_items(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    pytester.makefile(".cnngrad.yaml", small=SMALL)
    run(pytester, "-n", "2", "--dist", "loadfile").assert_outcomes(passed=6)


# --------------------------------------------------------------------------- Report str / assert_passed


def test_report_str_and_assert_passed() -> None:
    good = cnngrad.check("lenet", samples=10)
    good.assert_passed()
    assert str(good).startswith("lenet: PASSED: 9/9 tensors within tol 1e-06")
    assert "│" not in str(good)  # nothing failed: no table
    bad = cnngrad.check(str(PLUGINS / "conv_dw_rotated.yaml"), plugins=True)
    with pytest.raises(AssertionError) as caught:
        bad.assert_passed()
    message = str(caught.value)
    assert message == str(bad)
    assert message.startswith("conv_dw_rotated: FAILED: 10/11")
    assert "│     0 │ Conv2D │ W      │ 2x2x3x3 │" in message and "FAIL" in message
    assert "diagnosis: ∂C/∂W matches ROT180(numeric)" in message
    assert "Report(" not in message
    unloadable = cnngrad.Report.failed_to_load("x.yaml", "layers[0].conv.kernel: too big")
    with pytest.raises(AssertionError, match=r"x.yaml: ERROR: layers\[0\].conv.kernel: too big"):
        unloadable.assert_passed()


def test_a_plugin_that_raises_fails_the_network_item_in_one_line(pytester: pytest.Pytester) -> None:
    pytester.copy_example(str(PLUGINS / "mylayers.py"))
    pytester.makefile(".cnngrad.yaml", boom=SMALL.replace(
        "  - activation: tanh", '  - custom: {class: "mylayers:Broken", how: raise}'))
    result = run(pytester, "--cnngrad-plugins", "-v")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "boom.cnngrad.yaml::network FAILED" in out and "boom in forward" in out
    assert "Traceback" not in out
