"""``cnngrad.check``'s keyword arguments are held to the command line's rules: a library call
must not get through with what ``cnngrad check`` refuses (a QA pass found ``samples=0``
checking nothing and passing a wrong backward, ``tol=inf`` passing anything)."""
from __future__ import annotations

import numpy as np
import pytest

import cnngrad
from cnngrad.config import ConfigError

# the conv backward of this net is right; tests/test_faults.py & co break it, here options do
RAW = {"seed": 0, "input": {"batch": 2, "channels": 1, "height": 5, "width": 5},
       "layers": [{"conv": {"filters": 2, "kernel": 3}}, {"activation": "tanh"}, {"flatten": {}},
                  {"dense": {"units": 3}}], "loss": "mse"}


@pytest.mark.parametrize("option, value, words", [
    ("samples", 0, "samples: expected an integer from 1"),
    ("samples", -1, "samples: expected an integer from 1"),
    ("samples", "x", "samples: expected an integer >= 1, got 'x'"),
    ("tol", float("inf"), "tol: expected a positive finite number, got inf"),
    ("tol", float("nan"), "tol: expected a positive finite number, got nan"),
    ("tol", 0, "tol: expected a positive finite number"),
    ("tol", 1, "tol: expected a number below 1, got 1: norm rel is at most 1"),
    ("tol", 5.0, "tol: expected a number below 1, got 5"),
    ("eps", 0, "eps: expected a positive finite number"),
    ("eps", -1e-6, "eps: expected a positive finite number"),
    ("eps", float("nan"), "eps: expected a positive finite number, got nan"),
    ("method", "magic", "method: unknown value 'magic'"),
    ("directions", -1, "directions: expected an integer from 0"),
    ("workers", 0, "workers: expected an integer from 1"),
    ("scope", "everything", "scope: unknown value 'everything'"),
    ("fd_dtype", "float16", "fd_dtype: unknown value 'float16'"),
    ("strict", 1, "strict: expected True or False, got 1"),
    ("max_memory_mb", -5, "max_memory_mb: expected a positive finite number"),
])
def test_a_bad_option_is_a_config_error_naming_it(option, value, words):
    with pytest.raises(ConfigError) as e:
        cnngrad.check(RAW, **{option: value})
    assert str(e.value).startswith(words), str(e.value)


def test_a_wrong_backward_is_not_passed_by_an_option(monkeypatch):
    """The options that used to let it through are refused; the ones that are right still fail it."""
    from cnngrad.layers import Conv
    original = Conv.backward
    monkeypatch.setattr(Conv, "backward", lambda self, d, c: (lambda r: (r[0] * 2, r[1]))(original(self, d, c)))
    for bad in ({"samples": 0}, {"tol": float("inf")}, {"tol": 1.0}, {"eps": float("nan")}):
        with pytest.raises(ConfigError):
            cnngrad.check(RAW, **bad)
    assert not cnngrad.check(RAW, samples=3).passed


def test_numpy_scalars_and_all_are_accepted():
    rep = cnngrad.check(RAW, samples=np.int64(4), eps=np.float64(1e-6), tol=np.float32(1e-6), workers=np.int32(1))
    assert rep.passed
    assert cnngrad.check(RAW, samples="all").passed
    assert cnngrad.check(RAW, directions=0).directions == 0  # 0: off, entry by entry, as reports record it
    assert cnngrad.check(RAW, tol="1e-6", samples="4").passed  # strings that read as numbers, as the CLI reads them
    with pytest.raises(ConfigError, match="samples"):
        cnngrad.check(RAW, samples=np.int64(0))


def test_a_tol_of_one_or_more_is_refused_by_the_config_and_the_command_line(tmp_path):
    """norm rel ‖g − n‖ / (‖g‖ + ‖n‖) is at most 1: a tol of 1 passes every gradient (a QA pass
    ran --tol 1 and --tol 5 on a wrong backward: PASSED).  Refused, one line, exit 2, the place named;
    a tol just below is shown as given (0.999 read "tol 1e+00")."""
    import yaml
    from click.testing import CliRunner

    from cnngrad.cli import main
    path = tmp_path / "net.yaml"
    path.write_text(yaml.safe_dump({**RAW, "check": {"tol": 1}}))
    with pytest.raises(ConfigError, match=r"check\.tol: expected a number below 1"):
        cnngrad.check(str(path))
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 2 and "check.tol: expected a number below 1" in result.stderr, result.output
    path.write_text(yaml.safe_dump(RAW))
    for tol in ("1", "5", "1e3"):
        result = CliRunner().invoke(main, ["check", str(path), "--tol", tol])
        assert result.exit_code == 2 and "is not below 1" in result.stderr and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["check", str(path), "--tol", "0.999"])
    assert result.exit_code == 0 and "within tol 0.999 " in result.stdout.splitlines()[-1], result.output
