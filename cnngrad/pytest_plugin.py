"""pytest plugin (entry point ``pytest11``): gradient checks as test items, and a fixture.

- Every ``*.cnngrad.yaml`` (or ``.yml``) file pytest comes across, and every ``*.yaml`` in a
  folder (or file) named by ``--cnngrad PATH``, is collected as one test item per tensor the
  check compares — ``lenet.cnngrad.yaml::layers.0.W``, ``…::input`` (∂C/∂x) — named by
  ``TensorRef.key``, so ``-k``, ``-x``, ``--junitxml`` and xdist work on them; plus one
  item ``…::network`` for what is no tensor's verdict (structural checks, inf/NaN, a row
  that was not collected), so a failing check always fails an item.
- The check runs once per config, when its first item runs (under xdist, use
  ``--dist loadfile`` to keep a config's items on one worker: else each worker runs it).
- A failing item shows its table row, the worst entry, what halving h and the complex step
  said, the localisation and the diagnosis (``report.plain``); an UNRESOLVED tensor is
  skipped with its reason (``--cnngrad-strict``: failed).
- ``custom:`` layers import code: allowed only with ``--cnngrad-plugins`` (or the ini
  option ``cnngrad_plugins = true``); without it the config's items fail saying so.
- The ``cnngrad`` fixture checks configs from a test: ``cnngrad.check(path_or_name_or_dict,
  **options)`` (relative paths from the test file's folder) and ``cnngrad.assert_passes(…)``.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from . import config as cfg
from .checker import Report, check, targets
from .compare import TensorCheck
from .network import build
from .refs import TensorRef
from .report import plain

SUFFIXES = (".cnngrad.yaml", ".cnngrad.yml")
NETWORK_ITEM = "network"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cnngrad", "gradient checks of cnngrad configs")
    group.addoption("--cnngrad", action="append", default=[], metavar="PATH",
                    help="Collect the configs (*.yaml) in this folder, or this config file, as gradient checks.")
    group.addoption("--cnngrad-plugins", action="store_true", default=None,
                    help="Allow `custom:` layers in collected configs to import code beside them.")
    group.addoption("--cnngrad-strict", action="store_true", default=False,
                    help="Fail (not skip) a tensor below the resolution of the differences (UNRESOLVED).")
    parser.addini("cnngrad_plugins", "allow `custom:` layers in collected configs (true/false)", type="bool",
                  default=False)


def pytest_configure(config: pytest.Config) -> None:
    for path in config.getoption("cnngrad") or []:  # collected even when not among the test paths
        if not Path(path).exists():
            raise pytest.UsageError(f"--cnngrad {path}: no such file or folder")
        if path not in config.args:
            config.args.append(path)


def _named(config: pytest.Config, file_path: Path) -> bool:
    """Is ``file_path`` a config named by --cnngrad (the path itself, or a .yaml in the folder)?"""
    if file_path.suffix not in (".yaml", ".yml"):
        return False
    for p in config.getoption("cnngrad") or []:
        root = Path(p).resolve()
        if file_path.resolve() == root or (root.is_dir() and root in file_path.resolve().parents):
            return True
    return False


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.name.endswith(SUFFIXES) or _named(parent.config, file_path):
        return ConfigFile.from_parent(parent, path=file_path)
    return None


def _plugins_allowed(config: pytest.Config) -> bool:
    flag = config.getoption("cnngrad_plugins")
    return bool(flag) if flag is not None else bool(config.getini("cnngrad_plugins"))


class ConfigFile(pytest.File):
    """One config: its items are the tensors the check compares, then ``network``."""

    _report: Report | None = None
    _config: cfg.Config | None = None

    def collect(self) -> Iterator[pytest.Item]:
        try:
            self._config = cfg.load(str(self.path), plugins=_plugins_allowed(self.config))
        except cfg.ConfigError as e:
            hint = " (pytest --cnngrad-plugins allows it)" if "--plugins" in str(e) else ""
            yield BadConfigItem.from_parent(self, name="config", message=f"{e}{hint}")
            return
        try:  # the rows a check compares: one forward and backward (cheap) at collection
            problem = build(self._config)
            with np.errstate(all="ignore"):
                _, deltas, grads, _ = problem.net.trace(problem.x, problem.y)
            refs = [row.ref for row in targets(problem.net, deltas, grads)]
        except Exception:  # a plugin that breaks: the check itself says how, in the network item
            refs = []
        for ref in refs:
            yield TensorItem.from_parent(self, name=ref.key, ref=ref)
        yield NetworkItem.from_parent(self, name=NETWORK_ITEM, refs=refs)

    def report(self) -> Report:
        """The config's check, run once (by the first item that needs it)."""
        if self._report is None:
            assert self._config is not None
            try:
                self._report = check(self._config, strict=bool(self.config.getoption("cnngrad_strict")))
            except cfg.ConfigError as e:  # e.g. a plugin that raises in forward: every item says so, once run
                self._report = Report.failed_to_load(self._config.name, str(e))
        return self._report


class CheckFailed(Exception):
    """An item's verdict is FAIL; ``str()`` is what pytest shows."""


class _Item(pytest.Item):
    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, (CheckFailed, cfg.ConfigError)):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"cnngrad: {self.name}"


class BadConfigItem(_Item):
    """A config that cannot be checked: fails with the one-line error."""

    def __init__(self, *, message: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.message = message

    def runtest(self) -> None:
        raise CheckFailed(f"{self.path.name}: {self.message}")


class TensorItem(_Item):
    """One tensor of one config: passes, fails with its row, or is skipped as UNRESOLVED."""

    def __init__(self, *, ref: TensorRef, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ref = ref
        self.user_properties.append(("tensor", str(ref)))

    def runtest(self) -> None:
        parent = self.parent
        assert isinstance(parent, ConfigFile)
        report = parent.report()
        row = _row(report, self.ref)
        if row is None:
            raise CheckFailed(f"{self.ref}: not in the report of {report.name} ({report.error or 'no such row'})")
        self.user_properties.append(("norm_rel", row.metrics.norm_rel))
        if row.failed or (row.unresolved and report.strict):
            raise CheckFailed(plain(report, rows=[row]))
        if row.unresolved:
            pytest.skip(f"UNRESOLVED: {row.reason}")


class NetworkItem(_Item):
    """What fails a check beyond a single tensor's row: structural checks, inf/NaN, a failing
    row that no item was collected for (e.g. δ at an inner boundary, checked to localise)."""

    def __init__(self, *, refs: list[TensorRef], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.refs = set(refs)

    def runtest(self) -> None:
        parent = self.parent
        assert isinstance(parent, ConfigFile)
        report = parent.report()
        if report.passed:
            return
        uncovered = [r for r in report.failures if r.ref not in self.refs]
        covered = [r for r in report.failures if r.ref in self.refs]
        if report.structural or report.faults or report.error or report.regressions or uncovered \
                or not (covered or (report.strict and report.unresolved)):
            raise CheckFailed(plain(report, rows=uncovered))


def _row(report: Report, ref: TensorRef) -> TensorCheck | None:
    return next((r for r in report.rows if r.ref == ref), None)


class CnngradFixture:
    """The ``cnngrad`` fixture: check configs from a test, paths relative to the test's file."""

    def __init__(self, folder: Path, plugins: bool) -> None:
        self.folder, self.plugins = folder, plugins

    def _resolve(self, config: Any) -> Any:
        if isinstance(config, (str, Path)) and not Path(config).is_absolute() and (self.folder / config).exists():
            return str(self.folder / config)
        return str(config) if isinstance(config, Path) else config

    def check(self, config: Any, **options: Any) -> Report:
        """``cnngrad.check`` (a path, a shipped config's name, a Config or a dict); a path
        relative to the test file's folder is found there first."""
        options.setdefault("plugins", self.plugins)
        return check(self._resolve(config), **options)

    def assert_passes(self, config: Any, **options: Any) -> Report:
        """Check ``config`` and fail the test with the failing rows unless it passed."""
        report = self.check(config, **options)
        report.assert_passed()
        return report


@pytest.fixture
def cnngrad(request: pytest.FixtureRequest) -> CnngradFixture:
    """Check configs from a test: ``cnngrad.assert_passes("net.yaml", samples=50)``."""
    return CnngradFixture(Path(request.path).parent, _plugins_allowed(request.config))
