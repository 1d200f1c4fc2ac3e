"""The files a run writes (``--output``, ``--save``, reproducers, baselines) and its stdout.

Rules (README "Output files and safety"):

- a regular file is replaced whole or not at all: a temp file beside the *target* (symlinks
  resolved, so a link stays a link and its target gets the new content), then a rename;
- what is not a regular file (a character device such as /dev/null, a FIFO, /dev/stdout,
  /dev/fd/N) is written through, never renamed over or truncated into a file;
- a replaced file keeps its mode (and, for root, its owner); a new one gets the umask's;
- a path that is one of the run's inputs (a config, a plugin module) is refused, and a
  folder that does not exist or cannot be written is found *before* the check runs.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

MAX_LINKS = 40  # as the kernel's own limit on symlinks in a path


class OutputError(ValueError):
    """A file that cannot or must not be written; ``str()`` is one line, the path first."""


# /dev/stdout, /dev/stderr, /dev/fd/N, /proc/self/fd/N: another name for a descriptor this
# process already has open — write to that descriptor (a shell's `>>` stays an append)
_FD_ALIAS = re.compile(r"^/(?:dev/fd|proc/self/fd|proc/(\d+)/fd)/(\d+)$")
_STD_NAMES = {"/dev/stdout": 1, "/dev/stderr": 2}


def _fd_alias(path: str) -> int | None:
    if path in _STD_NAMES:
        return _STD_NAMES[path]
    m = _FD_ALIAS.match(path)
    if m is None or (m.group(1) is not None and int(m.group(1)) != os.getpid()):
        return None
    return int(m.group(2))


def _descriptor(path: str) -> int | None:
    """The descriptor ``path`` names, following symlinks to /dev/stdout & co; None if none."""
    p = os.path.abspath(path)
    for _ in range(MAX_LINKS):
        fd = _fd_alias(p)
        if fd is not None:
            return fd
        try:
            if not stat.S_ISLNK(os.lstat(p).st_mode):
                return None
            p = os.path.normpath(os.path.join(os.path.dirname(p), os.readlink(p)))
        except OSError:
            return None
    return None


def resolve(path: str | os.PathLike) -> tuple[Path, os.stat_result | None]:
    """The file ``path`` really names (every symlink followed) and its stat, None if it does
    not exist yet.  A symlink loop, or a folder, is an OutputError."""
    name = os.fspath(path)
    try:
        st = os.stat(name)
    except FileNotFoundError:
        st = None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OutputError(f"{name}: is a symlink loop (too many levels of symbolic links)") from None
        raise OutputError(f"{name}: {e.strerror or e}") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{name}: is a directory")
    return Path(os.path.realpath(name)), st


def _probe_folder(folder: Path, shown: str) -> None:
    """Create and remove a file in ``folder``: the only honest test that a rename into it
    will work (a read-only mount, a full quota, ACLs; root passes every os.access)."""
    if not folder.is_dir():
        raise OutputError(f"{shown}: folder {folder} does not exist")
    import secrets  # here: 4 ms a process that writes no file never needs

    probe = folder / f".cnngrad-probe-{secrets.token_hex(6)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as e:
        raise OutputError(f"{shown}: cannot write in folder {folder}: {e.strerror or e}") from None
    probe.unlink(missing_ok=True)


def _same(st: os.stat_result, inputs: Iterable[str | os.PathLike]) -> str | None:
    for p in inputs:
        with contextlib.suppress(OSError):
            other = os.stat(p)
            if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                return os.fspath(p)
    return None


def preflight(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse now what ``atomic_write(path, ...)`` would fail at, or must not do, later."""
    name = os.fspath(path)
    if not name:
        raise OutputError("'': an empty path; name a file")
    fd = _descriptor(name)
    if fd is not None:
        try:
            os.fstat(fd)
        except OSError:
            raise OutputError(f"{name}: descriptor {fd} is not open") from None
        return
    real, st = resolve(name)
    if st is not None:
        clash = _same(st, inputs)
        if clash is not None:
            raise OutputError(f"{name}: is an input of this run ({clash}); write the output elsewhere")
        if not stat.S_ISREG(st.st_mode):
            if not os.access(real, os.W_OK):
                raise OutputError(f"{name}: not writable")
            return
    _probe_folder(real.parent, name)


def preflight_folder(path: str | os.PathLike) -> None:
    """A folder files will be written into: it, or the nearest folder that exists above it
    (it will be created), must be writable."""
    name = os.fspath(path)
    if not name:
        raise OutputError("'': an empty path; name a folder")
    folder = Path(os.path.abspath(name))
    try:
        os.stat(folder)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OutputError(f"{name}: is a symlink loop (too many levels of symbolic links)") from None
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{name}: is not a folder")
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{name}: {folder} is not a folder")
    _probe_folder(folder.resolve(), name)


def _write_fd(fd: int, payload: bytes) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (see the module's rules): a regular
    file (through any symlinks) by a temp file and a rename, keeping its mode; a device,
    FIFO or descriptor by writing through."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd = _descriptor(os.fspath(path))
    if fd is not None:
        _write_fd(fd, payload)
        return
    real, st = resolve(path)
    if st is not None and not stat.S_ISREG(st.st_mode):
        out = os.open(real, os.O_WRONLY | getattr(os, "O_NOCTTY", 0))
        try:
            _write_fd(out, payload)
        finally:
            os.close(out)
        return
    import secrets

    tmp = real.parent / f".{real.name[:80]}.{secrets.token_hex(6)}.tmp"
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask decides a new file's mode
    try:
        try:
            if st is not None:
                os.fchmod(out, stat.S_IMODE(st.st_mode))
                if os.geteuid() == 0:
                    with contextlib.suppress(OSError):
                        os.fchown(out, st.st_uid, st.st_gid)
            _write_fd(out, payload)
            os.fsync(out)
        finally:
            os.close(out)
        os.replace(tmp, real)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """While the check runs, whatever a plugin prints (``print()``, or C code on fd 1) goes
    to stderr, so stdout carries the report alone."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved_fd = None
    with contextlib.suppress(OSError):
        saved_fd = os.dup(1)
        os.dup2(2, 1)
    saved = sys.stdout
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout = saved
        if saved_fd is not None:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved_fd, 1)
            os.close(saved_fd)


def quiet_broken_pipe(code: int) -> None:
    """The reader of stdout went away (``| head -1``): stop quietly with ``code``, the
    verdict's, instead of a traceback (and no second error when Python flushes at exit)."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    sys.exit(code)
