"""The progress bar on stderr: shown only on a terminal, only once a run has lasted a while.

It counts work, not entries: ``done``/``total`` are bytes of perturbed activations pushed
through the network (``FiniteDifferences.progress``), which is what a chunk's time follows —
an entry of the input δ runs the whole network, an entry of the last bias one layer — so the
ETA is the work left over the rate of work so far.  With ``--jobs`` each config in flight
has its own row, under a row counting the configs done.
"""
from __future__ import annotations

import time
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # rich is imported when a bar may be shown (a run that lasted a while), not at start-up
    from rich.console import Console
    from rich.progress import Progress, TaskID


class LazyProgress:
    """``bar(done, total)`` for one config; ``bar.update(key, label, done, total)``,
    ``bar.finish(key)`` and ``bar.configs(done, total)`` for several at once."""

    def __init__(self, after: float = 1.0, console: Console | None = None) -> None:
        self.after, self.t0 = after, time.monotonic()
        self.console = console  # stderr's, made when a bar may be shown
        self.bar: Progress | None = None
        self.rows: dict[Hashable, TaskID] = {}
        self.count: TaskID | None = None
        self._configs: tuple[int, int] | None = None

    def __call__(self, done: int, total: int) -> None:
        self.update(None, "checking", done, total)

    def _ready(self) -> bool:
        if self.bar is None:
            if time.monotonic() - self.t0 < self.after:
                return False
            if self.console is None:
                from rich.console import Console

                self.console = Console(stderr=True)
            if not self.console.is_terminal:
                return False
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                TimeRemainingColumn(), console=self.console, transient=True)
            self.bar.start()
            if self._configs is not None:
                self.configs(*self._configs)
        return True

    def update(self, key: Hashable, label: str, done: int, total: int) -> None:
        """Row ``key`` (a config) has ``done`` of ``total`` work finished."""
        if not self._ready():
            return
        assert self.bar is not None
        if key not in self.rows:
            from rich.markup import escape

            self.rows[key] = self.bar.add_task(escape(label), total=max(total, 1))
        self.bar.update(self.rows[key], completed=done, total=max(total, 1))

    def finish(self, key: Hashable) -> None:
        """Row ``key`` is done: it leaves the bar."""
        if self.bar is not None and key in self.rows:
            self.bar.remove_task(self.rows.pop(key))

    def configs(self, done: int, total: int) -> None:
        """``done`` of ``total`` configs checked (a row of its own, with ``--jobs``)."""
        self._configs = (done, total)
        if not self._ready():
            return
        assert self.bar is not None
        if self.count is None:
            self.count = self.bar.add_task(f"configs {done}/{total}", total=total)
        self.bar.update(self.count, completed=done, total=total,
                        description=f"configs {done}/{total}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def tick(send: Any, every: float = 0.1) -> Any:
    """A ``progress(done, total)`` that passes at most one update per ``every`` seconds (and
    the last) on to ``send((done, total))``: for a worker reporting over a pipe."""
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= every or done >= total:
            last[0] = now
            send((done, total))

    return progress
