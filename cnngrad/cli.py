"""``cnngrad`` command line: report to stdout, messages to stderr, exit 0 / 1 / 2."""
from __future__ import annotations

import functools
import sys
import time
from typing import Any, Callable

import click
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeRemainingColumn)
from rich.text import Text

from . import __version__
from . import config as cfg
from . import report as render
from .checker import check as run_check
from .checker import save_npz
from .finite_diff import METHODS


class UsageFailure(click.ClickException):
    """A bad config, file or option: one line on stderr, exit 2 (CONVENTIONS.md)."""

    exit_code = 2


class PositiveFloat(click.ParamType):
    """A finite number > 0 (``click.FloatRange`` lets nan and inf through)."""

    name = "float"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not (0 < v < float("inf")):
            self.fail(f"{value!r} is not a finite number > 0", param, ctx)
        return v


class Samples(click.ParamType):
    name = "N|all"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | None:
        if value is None or value == "all":
            return None
        try:
            n = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a whole number or 'all'", param, ctx)
        if n < 1:
            self.fail(f"{n} is not >= 1", param, ctx)
        return n


class LazyProgress:
    """A rich progress bar on stderr, shown only on a terminal and only once a check has
    run for more than ``after`` seconds (a quick check prints no bar at all)."""

    def __init__(self, after: float = 1.0, console: Console | None = None) -> None:
        self.after, self.t0, self.bar, self.task = after, time.monotonic(), None, None
        self.console = console or Console(stderr=True)

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            if not self.console.is_terminal or time.monotonic() - self.t0 < self.after:
                return
            self.bar = Progress(TextColumn("checking"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("entries"), RateColumn(), TimeRemainingColumn(),
                                console=self.console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("check", total=total)
        self.bar.update(self.task, completed=done, total=total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class RateColumn(ProgressColumn):
    def render(self, task: Any) -> Text:
        return Text(f"{task.speed:,.0f}/s" if task.speed else "")


def stdout() -> Console:
    out = Console()
    return out if out.is_terminal else Console(width=160, no_color=True, highlight=False)


def config_option(f: Callable) -> Callable:
    """Options shared by every command that reads a config."""
    f = click.option("--plugins", is_flag=True, help="Allow `custom:` layers to import code next to the config.")(f)
    f = click.option("--seed", type=click.IntRange(min=0), default=None, help="Override the config's seed.")(f)
    f = click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")(f)
    return f


def load_config(ref: str, seed: int | None, plugins: bool) -> cfg.Config:
    try:
        config = cfg.load(ref, plugins=plugins)
    except cfg.ConfigError as e:
        raise UsageFailure(str(e)) from None
    if seed is not None:
        config.seed = seed
    return config


def guarded(f: Callable) -> Callable:
    """Turn errors of user input (config, plugin) into exit 2 with one line, unless --debug."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except cfg.ConfigError as e:
            if kwargs.get("debug"):
                raise
            raise UsageFailure(str(e)) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cnngrad")
def main() -> None:
    """Prove a CNN's backpropagation right or wrong against finite differences."""


@main.command()
@click.argument("config")
@click.option("--eps", type=PositiveFloat(), default=None,
              help="Finite-difference step h [default: config's for its method, else the method's: "
                   "central 1e-6 (float32 1e-2), forward 1e-8, richardson 1e-3, complex 1e-20].")
@click.option("--tol", type=PositiveFloat(), default=None,
              help="Pass when norm rel <= TOL [default: config's, else the method's: 1e-6 "
                   "(forward 1e-5, complex 1e-9); float32 1e-2].")
@click.option("--samples", type=Samples(), default=None,
              help="Check N random entries per tensor [default: all].")
@click.option("--method", type=click.Choice(list(METHODS)), default=None,
              help="Finite-difference formula: " + "; ".join(f"{m.name} {m.order}" for m in METHODS.values())
              + " [default: config's check.method, else central].")
@click.option("--directions", type=click.IntRange(min=1), default=None, metavar="K",
              help="Compare v·∇C along K random unit directions per tensor (2 passes each) instead of "
                   "every entry; a tensor that fails is then checked entry by entry.")
@click.option("--fd-dtype", type=click.Choice(["float64", "native"]), default="float64", show_default=True,
              help="Dtype of the numeric side: float64 (a float32 network's parameters cast up exactly) "
                   "or the network's own.")
@click.option("--convergence", is_flag=True,
              help="Difference every tensor again at h/2 and show how the error moved (failing tensors "
                   "always are): a wrong gradient does not shrink with h.")
@click.option("--save", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write x, y, parameters and both gradients to FILE.npz.")
@config_option
@guarded
def check(config: str, eps: float | None, tol: float | None, samples: int | None, method: str | None,
          directions: int | None, fd_dtype: str, convergence: bool, save: str | None, seed: int | None,
          plugins: bool, debug: bool) -> None:
    """Check every gradient of CONFIG (a YAML file, or a shipped config's name)."""
    conf = load_config(config, seed, plugins)
    bar = LazyProgress()
    try:
        report = run_check(conf, eps=eps, tol=tol, samples=samples, method=method, progress=bar,
                           directions=directions, fd_dtype=fd_dtype, convergence=convergence)
    finally:
        bar.close()
    out = stdout()
    out.print(render.table(report))
    for line in render.failure_lines(report):  # whole lines, never wrapped: CI logs get grepped
        out.print(line, markup=False, highlight=False, soft_wrap=True)
    out.print(render.summary(report), markup=False, highlight=False, soft_wrap=True)
    if save:
        try:
            save_npz(report, save)
        except OSError as e:
            raise UsageFailure(f"--save {save}: {e.strerror or e}") from None
    sys.exit(report.return_code)


@main.command()
@click.argument("config")
@click.option("--samples", type=Samples(), default=None, help="Check N random entries per tensor [default: all].")
@click.option("--method", type=click.Choice(list(METHODS)), default="central", show_default=True,
              help="Finite-difference formula.")
@click.option("--from", "start", type=click.IntRange(min=0, max=30), default=1, show_default=True,
              help="Largest step: 1e-FROM.")
@click.option("--to", "stop", type=click.IntRange(min=0, max=30), default=12, show_default=True,
              help="Smallest step: 1e-TO.")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False), default=None,
              help="Also draw the curves into FILE.png or FILE.svg (needs the `plot` extra: matplotlib).")
@config_option
@guarded
def sweep(config: str, samples: int | None, method: str, start: int, stop: int, plot_file: str | None,
          seed: int | None, plugins: bool, debug: bool) -> None:
    """Run the check over steps h = 1e-FROM … 1e-TO: error against h per tensor, the best h."""
    from . import sweep as sw

    if stop < start:
        raise click.BadParameter(f"--to {stop} is before --from {start}", param_hint="--to")
    if plot_file and not plot_file.lower().endswith((".png", ".svg")):
        raise click.BadParameter(f"{plot_file}: write a .png or .svg", param_hint="--plot")
    conf = load_config(config, seed, plugins)
    result = sw.sweep(conf, tuple(10.0 ** -k for k in range(start, stop + 1)), samples=samples, method=method)
    out = stdout()
    out.print(render.sweep_table(result))
    out.print(render.sweep_plot(result))
    if plot_file:
        try:
            sw.save_plot(result, plot_file)
        except ImportError:
            raise UsageFailure("--plot needs matplotlib: pip install 'cnngrad[plot]'") from None
        except OSError as e:
            raise UsageFailure(f"--plot {plot_file}: {e.strerror or e}") from None


@main.command()
@click.argument("config")
@config_option
@guarded
def validate(config: str, seed: int | None, plugins: bool, debug: bool) -> None:
    """Validate CONFIG and print the inferred shape after every layer; no maths."""
    conf = load_config(config, seed, plugins)
    stdout().print(render.shapes(conf))


@main.command()
def examples() -> None:
    """List the shipped configs (run one with `cnngrad check NAME`)."""
    for name, res in cfg.shipped_configs().items():
        first = next((ln[1:].strip() for ln in res.read_text(encoding="utf-8").splitlines()
                      if ln.startswith("#")), "")
        click.echo(f"{name:<14} {first}")
