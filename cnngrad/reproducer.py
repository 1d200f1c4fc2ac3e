"""Reproducers: a failing check written out as a config that fails the same way when rerun.

Everything that decides the verdict travels in the YAML: the seed in force (top level) and,
in its ``check:`` block, the method, step, tolerance, samples, directions, numeric dtype and
whether kinks were avoided.  A config with plugin layers gets a folder of its own holding
the YAML and a copy of each plugin module, and its rerun line says ``--plugins``.
"""
from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .escape import file_name, printable
from .output import OutputError, atomic_write
from .sources import config_folder, plugin_sources

if TYPE_CHECKING:
    from .checker import Report


def reproducible(report: Report) -> dict[str, Any]:
    """The report's config with every verdict-deciding setting of the run written in."""
    raw = dict(report.raw)
    raw["name"] = report.name
    raw["seed"] = report.seed
    check = dict(raw.get("check") or {})
    check.update(method=report.method, eps=report.eps, tol="estimate" if report.tol_rule == "estimate" else report.tol,
                 samples="all" if report.samples is None else report.samples,
                 fd_dtype="native" if report.fd_dtype != "float64" else "float64")
    for key, value in (("directions", report.directions), ("avoid_kinks", report.avoid_kinks)):
        if value:
            check[key] = value
        else:
            check.pop(key, None)
    raw["check"] = check
    return raw


def write(report: Report, directory: str | os.PathLike) -> Path:
    """Write ``report``'s reproducer into ``directory`` (created if need be), named after
    the config (sanitised: it stays inside the folder) and its digest; return its path."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{file_name(report.name)}-{file_name(report.digest)}"
    sources = plugin_sources(report.raw, config_folder(report.source))
    if sources:
        folder = folder / stem
        folder.mkdir(exist_ok=True)
        for src in sources:
            if src.is_dir():
                shutil.copytree(src, folder / src.name, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                atomic_write(folder / src.name, src.read_bytes())
    path = folder / f"{stem}.yaml"
    if path.resolve().parent != folder.resolve():
        raise OutputError(f"{path}: a reproducer must stay inside {directory}")
    why = "; ".join(f"{r.ref.place} {r.tensor}: norm rel {r.metrics.norm_rel:.2e}" for r in report.failures) \
        or "; ".join(report.regressions.values()) or "passed"
    rerun = "cnngrad check " + ("--plugins " if sources else "") + shlex.quote(str(path))
    header = f"# cnngrad reproducer: {printable(why)}\n# rerun: {printable(rerun)}\n"
    atomic_write(path, header + yaml.safe_dump(reproducible(report), sort_keys=False))
    if "hypothesis" in sys.modules:  # in a property test: keep the last (the shrunk) failure only
        from .property import forget_earlier

        forget_earlier(Path(directory), path.parent if sources else path)
    return path
