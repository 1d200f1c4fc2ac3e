"""``cnngrad`` command line: report to stdout, messages to stderr, exit 0 / 1 / 2."""
from __future__ import annotations

import functools
import io
import json
import stat
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import __version__, _malloc, pool
from . import baseline as baseline_mod
from . import config as cfg
from . import output as out_files
from .checker import Report, save_npz
from .checker import check as run_check
from .escape import printable
from .finite_diff import METHODS
from .formats import FORMATS
from .progress import LazyProgress, tick
from .sources import survey

if TYPE_CHECKING:
    from rich.console import Console


class UsageFailure(click.ClickException):
    """A bad config, file or option: one line on stderr, exit 2 (CONVENTIONS.md)."""

    exit_code = 2

    def format_message(self) -> str:
        return printable(self.message)  # paths, names, plugin messages: no control characters


class Seed(click.ParamType):
    """The config's `seed:` rule (config.seed_value), same range, same message."""

    name = "integer"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        try:
            value = int(value)
        except (TypeError, ValueError):
            pass
        try:
            return cfg.seed_value("--seed", value)
        except cfg.ConfigError as e:
            self.fail(str(e).removeprefix("--seed: "), param, ctx)


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


class Tolerance(click.ParamType):
    """``--tol T|estimate``: a number, or each tensor's tol from Ridders' estimate (tolerance.py)."""

    name = "T|estimate"

    def convert(self, value: Any, param: Any, ctx: Any) -> float | str:
        if value == "estimate":
            return "estimate"
        tol = PositiveFloat().convert(value, param, ctx)
        if tol >= cfg.TOL_BELOW:
            self.fail(f"{value!r} is not below 1: norm rel is at most 1, so a tol of 1 or more passes any gradient",
                      param, ctx)
        return tol


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


@functools.cache
def _report_console() -> type[Console]:
    """The report's console class (rich is loaded by the commands that print with it: a JSON
    report never loads it): a closed pipe is a BrokenPipeError for quiet_on_broken_pipe to end
    with the verdict's code (rich's own handler exits 1, the "failed" code)."""
    from rich.console import Console

    class ReportConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError

    return ReportConsole


def stdout() -> Console:
    out = _report_console()()
    return out if out.is_terminal else _report_console()(width=160, no_color=True, highlight=False)


def string_console() -> Console:
    """A console writing into a string (``--output``): no colour, 160 columns."""
    from rich.console import Console

    return Console(file=io.StringIO(), width=160, no_color=True, highlight=False)


def config_option(f: Callable) -> Callable:
    """Options shared by every command that reads a config."""
    f = click.option("--plugins", is_flag=True, help="Allow `custom:` layers to import code next to the config.")(f)
    f = click.option("--seed", type=Seed(), default=None, help="Override the config's seed.")(f)
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
            if kwargs.get("debug"):  # the traceback, and still the exit code of bad input (it was 1)
                traceback.print_exc(file=sys.stderr)
                verdict(2)
                sys.exit(2)
            raise UsageFailure(str(e)) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cnngrad")
def main() -> None:
    """Prove a CNN's backpropagation right or wrong against finite differences."""
    _malloc.tune()  # the CLI's process only (never on import): CNNGRAD_NO_MALLOC_TUNING=1 leaves malloc alone


def check_options(f: Callable) -> Callable:
    """How to check: shared by ``check`` and ``baseline record``."""
    for option in reversed([
        click.option("--eps", type=PositiveFloat(), default=None,
                     help="Finite-difference step h [default: config's for its method, else the method's: "
                          "central 1e-6 (float32 1e-2), forward 1e-8, richardson 5e-3, complex 1e-20]."),
        click.option("--tol", type=Tolerance(), default=None,
                     help="Pass when norm rel <= TOL [default: config's, else the method's: 1e-6 "
                          "(forward 1e-5, complex 1e-9); float32 1e-4 (native: 1e-2, forward 5e-2)]. 'estimate' (with "
                          "--method ridders): each tensor's tol is 10x Ridders' error estimate (in norm rel, "
                          "plus the backward's rounding), at least 1.8e-15, at most that default: stricter only."),
        click.option("--samples", type=Samples(), default=None,
                     help="Check N random entries per tensor [default: all]."),
        click.option("--method", type=click.Choice(list(METHODS)), default=None,
                     help="Finite-difference formula: " + "; ".join(f"{m.name} {m.order}" for m in METHODS.values())
                     + " [default: config's check.method, else central]."),
        click.option("--directions", type=click.IntRange(min=1, max=1 << 31), default=None, metavar="K",
                     help="Compare v·∇C along K random unit directions per tensor (2 passes each) instead "
                          "of every entry; a tensor that fails is then checked entry by entry."),
        click.option("--fd-dtype", type=click.Choice(["float64", "native"]), default=None,
                     help="Dtype of the numeric side: float64 (a float32 network's parameters cast up "
                          "exactly) or the network's own [default: config's check.fd_dtype, else float64]."),
        click.option("--convergence", is_flag=True,
                     help="Difference every tensor again at h/2 and show how the error moved (failing "
                          "tensors always are): a wrong gradient does not shrink with h."),
        click.option("--avoid-kinks", is_flag=True,
                     help="Draw the input again until no checked entry's stencil crosses a ReLU or "
                          "max-pool kink (up to 10 times)."),
        click.option("--strict", is_flag=True,
                     help="Fail (exit 1) a config with an unresolved tensor too: one whose gradients are "
                          "below what the differences can resolve at its loss scale (by default reported, exit 0)."),
        click.option("--localize", is_flag=True,
                     help="Check δ at every layer boundary and name the first layer whose backward is "
                          "wrong (done anyway when a tensor fails)."),
        click.option("--max-params", type=PositiveFloat(), default=None, metavar="N",
                     help="Refuse a check that would difference more than N entries [default: 1e7]."),
        click.option("--max-memory", "max_memory_mb", type=PositiveFloat(), default=None, metavar="MB",
                     help="Refuse a check estimated to need more memory [default: a quarter of the available]."),
        click.option("--scope", type=click.Choice(["network", "layer"]), default="network", show_default=True,
                     help="network: difference the loss end to end for every entry; layer: difference each "
                          "layer alone against the δ its backward received (cost linear in depth, the "
                          "culprit named by construction), plus an end-to-end check along 2 directions."),
        click.option("--workers", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Processes sharing one config's differences [default: every core this process "
                          "may use]; the numbers are the same bit for bit for any N."),
        click.option("--max-layers", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Refuse a config of more than N layers before building it [default: 1000]."),
        click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Check this many configs at once, in separate processes (same numbers as one; "
                          "at most one per config and usable core; they share --max-memory)."),
    ]):
        f = option(f)
    return f


def expand(refs: tuple[str, ...]) -> list[str]:
    """Paths and shipped names; a directory stands for its *.yaml / *.yml entries, sorted —
    every one that is not a folder: a dangling symlink, a symlink loop or a FIFO among them is
    an unreadable config (exit 2, as when named), not one skipped in silence (a QA pass)."""
    out: list[str] = []
    for ref in refs:
        p = Path(ref)
        if p.is_dir():
            files = sorted(str(f) for f in p.iterdir() if f.suffix in (".yaml", ".yml") and not f.is_dir())
            if not files:
                raise UsageFailure(f"{ref}: no .yaml configs in this directory")
            out += files
        else:
            out.append(ref)
    return out


def _check_one(ref: str, seed: int | None, plugins: bool, options: dict[str, Any],
               progress: Callable | None = None, debug: bool = False) -> Report:
    """One config's report; a config that cannot be loaded, whose plugin breaks the layer
    protocol, or whose worker process died, becomes a report saying why (with --debug: the
    traceback)."""
    try:
        config = cfg.load(ref, plugins=plugins)
        if seed is not None:
            config.seed = seed
        return run_check(config, progress=progress, **options)
    except (cfg.ConfigError, pool.WorkerDied) as e:
        if debug:  # the traceback; the config still fails as bad input (exit 2), and the others run
            traceback.print_exc(file=sys.stderr)
        return Report.failed_to_load(ref, f"{ref}: {e}" if isinstance(e, pool.WorkerDied) else str(e))


def _check_one_slim(args: tuple) -> Report:
    """In a --jobs worker: the report without what cannot or need not travel back."""
    report = _check_one(*args)
    report.problem, report.analytic, report.numeric = None, {}, {}
    return report


def run_all(refs: list[str], seed: int | None, plugins: bool, options: dict[str, Any], jobs: int,
            debug: bool) -> list[Report]:
    """Every config's report, in the order given; on Ctrl-C/SIGTERM, those finished (a
    config cut short in this process with its finished rows, ``interrupted`` set).
    ``--jobs`` runs configs on that many worker processes (no more than configs and usable
    cores): a worker that dies fails its config (exit 2) and the others go on."""
    workers = pool.cap(jobs, len(refs))
    if workers > 1:
        return _run_parallel(refs, seed, plugins, {**options, "workers": 1, "jobs": workers}, workers, debug)
    reports: list[Report] = []
    for ref in refs:
        bar = LazyProgress()
        try:
            reports.append(_check_one(ref, seed, plugins, options, progress=bar, debug=debug))
        except KeyboardInterrupt as stop:  # Ctrl-C: stop here; the caller reports what finished
            partial = getattr(stop, "report", None)
            if partial is None:  # stopped before any row was done (loading, planning): say so all the same
                partial = Report.failed_to_load(ref, "")
                partial.interrupted = True
            reports.append(partial)
            break
        finally:
            bar.close()
    return reports


def _run_parallel(refs: list[str], seed: int | None, plugins: bool, options: dict[str, Any], workers: int,
                  debug: bool) -> list[Report]:
    """Configs shared among worker processes (each config's own chunks stay in its worker),
    one bar row per config in flight.  A worker's death fails its config (exit 2); a fresh
    worker takes the configs left."""
    bar = LazyProgress()
    done: dict[int, Report] = {}

    def one(i: int) -> Report:
        return _check_one_slim((refs[i], seed, plugins, options, tick(pool.send), debug))

    def on_message(i: int, message: tuple[int, int]) -> None:
        bar.update(i, Path(refs[i]).stem, *message)

    def buried(i: int, error: pool.WorkerDied) -> Report:
        if debug:
            raise error
        return Report.failed_to_load(refs[i], f"{refs[i]}: {error}")

    bar.configs(0, len(refs))
    try:
        for i, report in pool.run_jobs(one, range(len(refs)), workers, on_message, dead=buried):
            done[i] = report
            bar.finish(i)
            bar.configs(len(done), len(refs))
    except KeyboardInterrupt:  # the caller reports what finished
        pass
    finally:
        bar.close()
    return [done[i] for i in sorted(done)]


def preflight(refs: list[str], files: dict[str, str | None], folders: dict[str, str | None],
              also: tuple[str | None, ...] = ()) -> None:
    """Before any maths: every output file and folder can be written, and none is an input
    (a config, a plugin module, or ``also``: e.g. the --baseline file)."""
    inputs = survey(refs).files + [Path(p) for p in also if p]
    written: dict[Path, str] = {}  # the regular files written so far, by what they really are
    for option, path in [*files.items(), *folders.items()]:
        try:
            if path is not None and option in files:  # "" too: an empty path is refused, not taken for none
                out_files.preflight(path, inputs)
                real, st = out_files.resolve(path)
                if st is None or stat.S_ISREG(st.st_mode):  # a device or a descriptor may take both
                    if real in written:  # --save x --output x: the second write replaced the first
                        raise out_files.OutputError(f"{path}: is also {written[real]}'s file; name another")
                    written[real] = option
            elif path is not None:
                out_files.preflight_folder(path)
        except out_files.OutputError as e:
            raise UsageFailure(f"{option} {e}") from None


def error_line(rep: Report, configs: int) -> str:
    """The ``Error: …`` line of a config that could not be checked; of several configs, each
    line names its own (unless the message already does), as ``validate``'s do."""
    where = f"{rep.name}: " if configs > 1 and not rep.error.startswith(rep.name) else ""
    return printable(f"Error: {where}{rep.error}")


def verdict(code: int) -> None:
    """Remember the exit code the verdict deserves, for quiet_on_broken_pipe."""
    click.get_current_context().meta["cnngrad.verdict"] = code


def quiet_on_broken_pipe(f: Callable) -> Callable:
    """`cnngrad check ... | head -1`: when the reader goes away, end quietly with the code
    the verdict deserves (0 if it passed), not a traceback nor click's exit 1."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except BrokenPipeError:
            out_files.quiet_broken_pipe(click.get_current_context().meta.get("cnngrad.verdict", 1))

    return wrapper


@main.command()
@click.argument("configs", nargs=-1, required=True, metavar="CONFIG...")
@check_options
@click.option("--format", "fmt", type=click.Choice(["table", "json", "junit", "markdown"]), default="table",
              show_default=True, help="Report format (on stdout, or into --output).")
@click.option("--output", type=click.Path(dir_okay=False, writable=True, allow_dash=True), default=None,
              help="Write the report to FILE (whole or not at all) instead of stdout; - is stdout.")
@click.option("--quiet", is_flag=True, help="Print only failures and the summary.")
@click.option("--baseline", "baseline_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Fail a tensor whose error grew past --baseline-factor times its baseline.")
@click.option("--baseline-factor", type=PositiveFloat(), default=baseline_mod.DEFAULT_FACTOR, show_default=True,
              help="How much an error may grow over its baseline.")
@click.option("--reproducer", type=click.Path(file_okay=False, writable=True), default=None, metavar="DIR",
              help="Write each failing config into DIR as a YAML reproducer.")
@click.option("--heatmap", is_flag=True, help="Draw each failing tensor's per-entry error as coloured cells.")
@click.option("--save", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write x, y, parameters and both gradients to FILE.npz (one config).")
@config_option
@quiet_on_broken_pipe
def check(configs: tuple[str, ...], fmt: str, output: str | None, quiet: bool, baseline_file: str | None,
          baseline_factor: float, reproducer: str | None, heatmap: bool, save: str | None, seed: int | None,
          plugins: bool, debug: bool, jobs: int, **options: Any) -> None:
    """Check every gradient of each CONFIG (a YAML file, a folder of them, or a shipped
    config's name); exit with the worst verdict of all."""
    refs = expand(configs)
    if output == "-":  # as click.File has it: stdout
        output = None
    if save == "-":
        raise click.BadParameter("- (stdout) cannot take a binary .npz: name a file", param_hint="--save")
    if reproducer == "-":
        raise click.BadParameter("- (stdout) cannot take a folder of reproducers: name a folder",
                                 param_hint="--reproducer")
    if save and len(refs) > 1:
        raise click.BadParameter("--save takes a single config", param_hint="--save")
    preflight(refs, {"--output": output, "--save": save}, {"--reproducer": reproducer}, (baseline_file,))
    baseline = None
    if baseline_file:
        try:
            baseline = baseline_mod.load(baseline_file)
        except (ValueError, OSError) as e:
            raise UsageFailure(f"--baseline {baseline_file}: {e}") from None
    with out_files.stdout_to_stderr(), pool.interruptible() as stop:  # a plugin's print() must not corrupt
        reports = run_all(refs, seed, plugins, options, jobs, debug)  # the report; Ctrl-C/SIGTERM: 130/143
    verdict(stop.exit_code if len(reports) < len(refs) or any(rep.interrupted for rep in reports)
            else max(rep.return_code for rep in reports))
    if len(reports) < len(refs) or any(rep.interrupted for rep in reports):  # Ctrl-C: what finished
        from . import report as render  # rich's renderers: loaded where a table is printed

        out = stdout()
        for rep in reports:
            if rep.error:
                out.print(printable(f"{rep.name}: {rep.error}"), markup=False, highlight=False, soft_wrap=True)
            elif rep.interrupted:
                if rep.rows:
                    out.print(render.table(rep))
                out.print(printable(f"{rep.name}: interrupted after {len(rep.rows)} finished tensors"), markup=False,
                          highlight=False, soft_wrap=True)
            else:
                out.print(render.summary(rep), markup=False, highlight=False, soft_wrap=True)
        done = sum(not rep.interrupted for rep in reports)
        click.echo(f"interrupted: {done} of {len(refs)} configs checked; no report or .npz written", err=True)
        sys.stdout.flush()
        sys.exit(stop.exit_code)
    for rep in reports:
        if rep.error:
            click.echo(error_line(rep, len(refs)), err=True)
        if baseline is not None:
            baseline_mod.compare(rep, baseline, baseline_factor)
        if reproducer and not rep.error and not rep.passed:
            try:
                path = rep.write_reproducer(reproducer)
            except (OSError, out_files.OutputError) as e:
                raise UsageFailure(f"--reproducer {reproducer}: {getattr(e, 'strerror', None) or e}") from None
            click.echo(printable(f"reproducer: {path}"), err=True)
    if fmt == "table":
        from . import report as render

        out = stdout() if output is None else string_console()
        for rep in reports:
            if rep.error:
                continue
            if not quiet:
                out.print(render.table(rep))
                for line in render.adjoint_lines(rep, failed=False):  # failed ones: with the failures
                    out.print(line, markup=False, highlight=False, soft_wrap=True)
            for line in render.failure_lines(rep):  # whole lines, never wrapped: CI logs get grepped
                out.print(line, markup=False, highlight=False, soft_wrap=True)
            if heatmap:
                for row in rep.rows:
                    if row.mismatch and row.mode == "entries":
                        out.print(render.heatmap(rep, (row.ref.key, row)))
            out.print(render.summary(rep), markup=False, highlight=False, soft_wrap=True)
        if len(reports) > 1:
            out.print(render.summary_table(reports))
        text = out.file.getvalue() if output is not None else None  # type: ignore[attr-defined]
    else:
        text = FORMATS[fmt](reports)
        if output is None:
            click.echo(text, nl=False)
    if output is not None:
        try:
            out_files.atomic_write(output, text or "")
        except (OSError, out_files.OutputError) as e:
            raise UsageFailure(f"--output {output}: {getattr(e, 'strerror', None) or e}") from None
    if save and reports and not reports[0].error:
        try:
            save_npz(reports[0], save)
        except (OSError, out_files.OutputError) as e:
            raise UsageFailure(f"--save {save}: {getattr(e, 'strerror', None) or e}") from None
    sys.stdout.flush()  # a closed pipe shows here, inside the caller's BrokenPipeError guard
    sys.exit(max(rep.return_code for rep in reports))


@main.group()
def baseline() -> None:
    """Record the errors of a run, to fail later runs whose errors grow."""


@baseline.command("record")
@click.argument("configs", nargs=-1, required=True, metavar="CONFIG...")
@check_options
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, allow_dash=True), required=True,
              help="The baseline file to write (JSON); - is stdout.")
@config_option
@quiet_on_broken_pipe
def baseline_record(configs: tuple[str, ...], output: str, seed: int | None, plugins: bool, debug: bool,
                    jobs: int, **options: Any) -> None:
    """Check CONFIG... and store each tensor's errors, keyed by the config's digest."""
    refs = expand(configs)
    to_stdout = output == "-"
    preflight(refs, {"--output": None if to_stdout else output}, {})
    try:
        baseline_mod.duplicates(survey(refs).names)
    except baseline_mod.DuplicateName as e:
        raise UsageFailure(str(e)) from None
    with out_files.stdout_to_stderr(), pool.interruptible() as stop:
        reports = run_all(refs, seed, plugins, options, jobs, debug)
    if len(reports) < len(refs) or any(rep.interrupted for rep in reports):  # a part is no baseline
        click.echo(printable(f"interrupted: no baseline written to {'stdout' if to_stdout else output}"), err=True)
        sys.exit(stop.exit_code)
    for rep in reports:
        if rep.error:
            click.echo(error_line(rep, len(refs)), err=True)
    if any(rep.error for rep in reports):  # a baseline without a config is no baseline (a part was written)
        click.echo(printable(f"a config could not be checked: no baseline written to "
                             f"{'stdout' if to_stdout else output}"), err=True)
        sys.exit(2)
    failing = [rep.name for rep in reports if not rep.error and not rep.passed]
    try:
        data = baseline_mod.record(reports)
    except baseline_mod.DuplicateName as e:
        raise UsageFailure(str(e)) from None
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    verdict(max(rep.return_code for rep in reports))
    if to_stdout:
        click.echo(text, nl=False)
        sys.stdout.flush()
    else:
        try:
            out_files.atomic_write(output, text)
        except (OSError, out_files.OutputError) as e:
            raise UsageFailure(f"--output {output}: {getattr(e, 'strerror', None) or e}") from None
    where = "stdout" if to_stdout else output
    counted = f"{len(reports)} config{'s' * (len(reports) != 1)}"
    click.echo(printable(f"recorded {sum(len(r.rows) for r in reports)} tensors of {counted} in "
                         f"{where}" + (f"; these fail their check: {', '.join(failing)}" if failing else "")), err=True)
    sys.exit(max(rep.return_code for rep in reports))


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
@quiet_on_broken_pipe
@guarded
def sweep(config: str, samples: int | None, method: str, start: int, stop: int, plot_file: str | None,
          seed: int | None, plugins: bool, debug: bool) -> None:
    """Run the check over steps h = 1e-FROM … 1e-TO: error against h per tensor, the best h."""
    verdict(0)  # no verdict to keep: a closed pipe is not a failure
    from . import report as render
    from . import sweep as sw

    if stop < start:
        raise click.BadParameter(f"--to {stop} is before --from {start}", param_hint="--to")
    if plot_file and not plot_file.lower().endswith((".png", ".svg")):
        raise click.BadParameter(f"{plot_file}: write a .png or .svg", param_hint="--plot")
    if plot_file:  # before any maths, not after the whole sweep
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageFailure("--plot needs matplotlib: pip install 'cnngrad[plot]'") from None
        preflight([config] if Path(config).exists() else [], {"--plot": plot_file}, {})  # its folder, not an input
    with out_files.stdout_to_stderr():  # a plugin's print() is not the table's
        conf = load_config(config, seed, plugins)
        result = sw.sweep(conf, tuple(10.0 ** -k for k in range(start, stop + 1)), samples=samples, method=method)
    out = stdout()
    out.print(render.sweep_table(result))
    out.print(render.sweep_plot(result))
    for line in result.unresolved() + result.problems():  # a flat error: the gradient is wrong (exit 1)
        out.print(printable(line), markup=False, highlight=False, soft_wrap=True)
    if plot_file:
        try:
            sw.save_plot(result, plot_file)
        except OSError as e:
            raise UsageFailure(f"--plot {plot_file}: {e.strerror or e}") from None
        click.echo(f"wrote the plot to {printable(plot_file)}", err=True)
    if result.problems():
        verdict(1)
        sys.exit(1)


@main.command()
@click.argument("configs", nargs=-1, required=True)
@config_option
@quiet_on_broken_pipe
@guarded
def validate(configs: tuple[str, ...], seed: int | None, plugins: bool, debug: bool) -> None:
    """Validate each CONFIG (a file, a folder of them, or a shipped name) and print the
    inferred shape after every layer; every error of every config, one line each (exit 2)."""
    from . import report as render
    from .config_errors import errors_of

    verdict(0)
    refs, bad = expand(configs), 0
    for ref in refs:
        with out_files.stdout_to_stderr():
            errors = errors_of(ref, plugins=plugins)
            conf = None if errors else load_config(ref, seed, plugins)
        for error in errors:  # several configs: each line names its file (unless the error already does)
            where = f"{ref}: " if len(refs) > 1 and not error.startswith(ref) else ""
            click.echo(f"Error: {printable(where + error)}", err=True)
        bad += bool(errors)
        if conf is not None:
            stdout().print(render.shapes(conf))
    if bad:
        verdict(2)
        sys.exit(2)


@main.command()
@click.argument("config")
@click.option("--layer", "layer_index", type=int, required=True, help="Index of a conv layer in the config.")
@click.option("--size", type=click.IntRange(min=2, max=12), default=5, show_default=True,
              help="Height and width of the tiny input.")
@config_option
@quiet_on_broken_pipe
@guarded
def explain(config: str, layer_index: int, size: int, seed: int | None, plugins: bool, debug: bool) -> None:
    """Show, step by step on a tiny input, how a conv layer's δ comes from ROT180(W)."""
    verdict(0)
    from .explain import explain as explain_layer

    conf = load_config(config, seed, plugins)
    stdout().print(explain_layer(conf, layer_index, size))


@main.command()
@click.option("--of", "what", type=click.Choice(["config", "report", "baseline"]), default="config", show_default=True,
              help="Which file's schema: a config, `check --format json`'s report, or a baseline file.")
def schema(what: str) -> None:
    """Print the JSON Schema of configs (point an editor at it: see docs/contract.md)."""
    from importlib import resources

    click.echo((resources.files("cnngrad") / "schemas" / f"{what}.schema.json").read_text(encoding="utf-8"), nl=False)


@main.command()
def examples() -> None:
    """List the shipped configs (run one with `cnngrad check NAME`)."""
    for name, res in cfg.shipped_configs().items():
        first = next((ln[1:].strip() for ln in res.read_text(encoding="utf-8").splitlines()
                      if ln.startswith("#")), "")
        click.echo(f"{name:<14} {first}")
