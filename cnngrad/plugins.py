"""A user's layer code: found by file path beside its config, run behind a guard.

Loading.  ``custom: {class: "mylayers:Cls"}`` in a config in folder F names the file
``F/mylayers.py`` (or the package ``F/mylayers/__init__.py``); ``pkg.mod`` names
``F/pkg/mod.py`` (or ``F/pkg/mod/__init__.py``).  The file is executed once per process,
with ``importlib.util.spec_from_file_location``, as a module whose name is made from its
resolved path (``cnngrad_plugin_<hash>_<stem>``): two configs in two folders, each with its
own ``mylayers.py``, get two modules, and neither shadows the other nor anything installed
(``pkg.mod`` in a package is imported as a submodule of ``pkg``, itself loaded that way).
``sys.path`` is never changed.  The module is entered in ``sys.modules`` under that unique
name (dataclasses, pickling and a package's relative imports need it).  What the code may
import: installed packages (numpy, …) and, inside a package (a folder with
``__init__.py``: ``pkg:Cls`` or ``pkg.mod:Cls``), the package's own modules by relative
import (``from . import helpers``); not a sibling file by a plain ``import helpers`` — the
config's folder is not on ``sys.path``.

Guarding.  Every call into plugin code (import, build, forward, backward, kink_state) runs
inside :func:`no_exit`: ``sys.exit()`` / ``exit()`` raise SystemExit, which the caller turns
into a PluginError naming the layer (exit 2 for that config; later configs go on), and
``os._exit`` is replaced, while any such call is under way, by a function that raises
:class:`ExitCalled` (a SystemExit) instead of ending the process.  A module that does
``from os import _exit`` at import time binds the stand-in, since its import is guarded too.

Limit: only these two ways out are caught.  Code that ends the process otherwise — a C
library's ``exit`` through ctypes, ``os.exec*``, a signal it sends itself, ``os.abort`` —
or that calls ``os._exit`` from a thread of its own while no call is under way, is not
stopped; cnngrad would run plugins in a separate process to survive those.
"""
from __future__ import annotations

import importlib.util
import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

_OS_IMPL: Any = sys.modules[os.name]  # posix (or nt): os._exit is its _exit, reachable from there too
_REAL_EXIT = os._exit
_MODULES: dict[Path, ModuleType] = {}  # resolved file -> its one module object


class ExitCalled(SystemExit):
    """Raised in place of ending the process when plugin code calls ``os._exit(code)``."""

    how = "os._exit"


def _refuse_exit(status: int) -> NoReturn:
    raise ExitCalled(status)


_GUARD = threading.Lock()
_guarded = 0  # plugin calls under way (any thread): the stand-in is in place while > 0


@contextmanager
def no_exit() -> Iterator[None]:
    """Run plugin code with ``os._exit`` (and ``posix._exit``) raising :class:`ExitCalled`;
    the real function is back once the last call under way (in any thread) is over."""
    global _guarded
    with _GUARD:
        _guarded += 1
        if _guarded == 1:
            os._exit = _OS_IMPL._exit = _refuse_exit
    try:
        yield
    finally:
        with _GUARD:
            _guarded -= 1
            if _guarded == 0:
                os._exit = _OS_IMPL._exit = _REAL_EXIT


def describe_exit(e: SystemExit) -> str:
    """"called sys.exit(0)" / "called os._exit(3)": what plugin code did to leave."""
    how = getattr(e, "how", "sys.exit")
    code = e.code if e.code is None or isinstance(e.code, int) else repr(e.code)
    return f"called {how}({'' if code is None else code})"


class PluginImportError(Exception):
    """The module named by ``class:`` cannot be found, run, or has no such class."""


def locate(module: str, folder: Path) -> Path:
    """The file that module name ``module`` ("mylayers", "pkg.mod") names in ``folder``."""
    parts = module.split(".")
    if not all(p.isidentifier() for p in parts):
        raise PluginImportError(f"{module!r} is not a module name (words joined by dots)")
    base = folder.joinpath(*parts)
    for path in (base.with_name(parts[-1] + ".py"), base / "__init__.py"):
        if path.is_file():
            return path.resolve()
    raise PluginImportError(f"no file {'/'.join(parts)}.py (nor {'/'.join(parts)}/__init__.py) in {folder}")


def _unique_name(path: Path) -> str:
    import hashlib  # here, not at start-up: only plugins hash

    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    stem = path.parent.name if path.name == "__init__.py" else path.stem
    return f"cnngrad_plugin_{digest}_{re.sub(r'[^0-9A-Za-z_]', '_', stem)}"


def load_file(path: Path) -> ModuleType:
    """The module of file ``path`` (resolved), executed the first time only."""
    if path in _MODULES:
        return _MODULES[path]
    name = _unique_name(path)
    package = [str(path.parent)] if path.name == "__init__.py" else None
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=package)
    if spec is None or spec.loader is None:
        raise PluginImportError(f"{path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with no_exit():
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    _MODULES[path] = module
    return module


def load_module(module_name: str, folder: Path) -> tuple[ModuleType, Path]:
    """The module that ``module_name`` names in ``folder``, and its file.  ``pkg.mod`` inside
    a package (``pkg/__init__.py`` exists) is imported as a submodule of that package, so
    that its relative imports work; otherwise the file is loaded on its own."""
    path = locate(module_name, folder)
    parts = module_name.split(".")
    top = folder / parts[0] / "__init__.py"
    if len(parts) == 1 or not top.is_file():
        return load_file(path), path
    package = load_file(top.resolve())
    with no_exit():
        return importlib.import_module(".".join([package.__name__, *parts[1:]])), path


def load_class(spec: str, folder: Path | None) -> Any:
    """``"module:Class"`` -> the class: from the file beside the config when ``folder`` is
    given; else (a config given as a mapping, with no folder) by an ordinary import."""
    module_name, _, attr = spec.partition(":")
    try:
        if folder is not None:
            module, path = load_module(module_name, folder)
            where = f" ({path})"
        else:
            with no_exit():
                module, where = importlib.import_module(module_name), ""
    except KeyboardInterrupt:
        raise
    except SystemExit as e:
        raise PluginImportError(f"the module {describe_exit(e)} while being imported") from None
    except PluginImportError:
        raise
    except BaseException as e:  # user code: say what, never a traceback
        raise PluginImportError(f"{type(e).__name__}: {e}") from e
    if not attr.isidentifier() or not hasattr(module, attr):
        raise PluginImportError(f"module {module_name}{where} has no class {attr!r}")
    return getattr(module, attr)
