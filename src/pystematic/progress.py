"""The run's console: ``context.loop`` progress and log lines sharing one terminal.

On a terminal, every active ``context.loop`` is one row of a single live display (rich)
at the bottom of the screen, innermost last. Log records, ``print``s and the final state
of each finished loop go *above* it, never into it: while the display is live,
``sys.stdout`` and ``sys.stderr`` are stand-ins that queue what Python writes, and one
refresh thread writes the queue and redraws the rows in a single write, ten times a
second, so a print costs a list append. When the outermost loop ends the display is
gone and the terminal holds plain lines only. Anywhere else (a pipe, a file, a notebook)
each step is a plain line on stderr, as before.

The run's logging goes through :func:`configure_logging`, whose handler writes to
whatever ``sys.stderr`` is when a record is emitted, so records take the same route as
prints. rich is imported only when a display starts.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live
    from rich.progress import Progress, ProgressColumn, Task, TaskID
    from rich.segment import Segment

__all__ = ["LOG_FORMAT", "close_display", "configure_logging", "progress"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_REFRESH_S = 0.1
_display: _Display | None = None


def progress(n: int, desc: str, *, start: int, enabled: bool) -> Iterator[int]:
    """Yield ``start..n-1``: a row of the live display on a terminal, a line per step elsewhere."""
    if not enabled:
        yield from range(start, n)
        return
    if _display is not None and _display.pid != os.getpid():
        # A forked child (a DataLoader worker, say): the parent owns the terminal.
        yield from range(start, n)
        return
    if _display is None and not _is_terminal(sys.stderr):
        began, name = time.monotonic(), desc or "loop"
        for i in range(start, n):
            yield i
            print(f"{name} {i + 1}/{n} ({time.monotonic() - began:.1f}s)", file=sys.stderr)
        return
    display = _display or _open_display()
    row = display.add_row(desc or "loop", n, start)
    try:
        for i in range(start, n):
            yield i
            row.completed = i + 1
    finally:
        display.finish_row(row)


def close_display() -> None:
    """Stop the live display, if one is up (the run ends; loops that were not closed)."""
    if _display is not None and _display.pid == os.getpid():
        _display.close()


def configure_logging(debug: bool) -> Callable[[], None]:
    """The run's logging: root at INFO (DEBUG with ``--debug``), records on stderr.

    A handler is added only when the root logger has none (as ``logging.basicConfig``
    does). Returns a function that puts the root logger's level and handlers back as
    they were and stops a live display left over.
    """
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    if not root.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)

    def restore() -> None:
        close_display()
        for handler in root.handlers:
            if handler not in saved_handlers and isinstance(handler, _StderrHandler):
                handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)

    return restore


class _StderrHandler(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment (the display's stand-in while it is up),
    as the standard library's last-resort handler does."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)  # not StreamHandler's: it would assign the stream

    @property
    def stream(self) -> TextIO:
        return sys.stderr


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


@dataclass(eq=False)
class _Row:
    """One active loop: its task in the display and how many iterations have finished."""

    task: TaskID
    completed: int


class _StandIn:
    """``sys.stdout``/``sys.stderr`` while the display is live: writes wait in its queue."""

    def __init__(self, display: _Display, name: str, original: TextIO) -> None:
        self._display = display
        self._name = name
        self.original = original

    def write(self, text: str) -> int:
        if not self._display.enqueue(self._name, text):
            return self.original.write(text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if not self._display.accepts():
            self.original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)  # isatty, fileno, encoding, buffer, ...


class _Display:
    """One rich ``Live`` for the process: a row per active loop, text written above it."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.pid = os.getpid()
        self._console: Console = Console(file=stream)
        final: list[ProgressColumn] = [
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        ]
        self._final_columns = final
        self._progress: Progress = Progress(
            *final,
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self._console,
            auto_refresh=False,
        )
        self._lock = threading.RLock()
        self._queue: list[str | RenderableType] = []
        self._partial: dict[str, str] = {}  # per stream: text after its last newline
        self._rows: list[_Row] = []
        self._open = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stand_ins: dict[str, _StandIn] = {}
        self._retargeted: list[tuple[logging.StreamHandler[Any], Any]] = []
        # Last: rich renders once here already.
        self._live: Live = Live(
            console=self._console,
            auto_refresh=False,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
            get_renderable=self._renderable,
        )

    # -- lifetime --------------------------------------------------------------------------

    def open(self) -> None:
        self._open = True
        self._live.start(refresh=True)
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            # stdout joins the display only when it is the same terminal (not `> file`).
            if name == "stderr" or (stream is not None and _is_terminal(stream)):
                self._stand_ins[name] = _StandIn(self, name, stream)
                setattr(sys, name, self._stand_ins[name])
        self._retarget_log_handlers()
        self._thread = threading.Thread(
            target=self._refresh_loop, name="pystematic-progress", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Final states of the rows left, everything queued, then the display is erased."""
        global _display
        with self._lock:
            if not self._open:
                return
            for row in reversed(list(self._rows)):
                self._finish(row)
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            self._open = False
            self._flush()
            self._live.stop()
            for name, stand_in in self._stand_ins.items():
                if getattr(sys, name) is stand_in:
                    setattr(sys, name, stand_in.original)
            for name, text in self._partial.items():
                if text:  # an unfinished line goes on where it would have been
                    self._stand_ins[name].original.write(text)
            for handler, stream in self._retargeted:
                handler.setStream(stream)
            self._retargeted.clear()
            if _display is self:
                _display = None

    def _retarget_log_handlers(self) -> None:
        """Stream handlers someone else put on the root logger write above the rows too."""
        targets = {id(s.original): s for s in self._stand_ins.values()}
        for handler in logging.getLogger().handlers:
            if isinstance(handler, _StderrHandler) or type(handler) is not logging.StreamHandler:
                continue
            stand_in = targets.get(id(handler.stream))
            if stand_in is not None:
                self._retargeted.append((handler, handler.stream))
                handler.setStream(stand_in)

    # -- rows ------------------------------------------------------------------------------

    def add_row(self, desc: str, total: int, start: int) -> _Row:
        with self._lock:
            row = _Row(self._progress.add_task(desc, total=total, completed=start), start)
            self._rows.append(row)
        return row

    def finish_row(self, row: _Row) -> None:
        with self._lock:
            if row in self._rows:
                self._finish(row)
            last = not self._rows
        if last:
            self.close()

    def _finish(self, row: _Row) -> None:
        """The row's final state becomes a line above the display."""
        self._progress.update(row.task, completed=row.completed)
        self._progress.stop_task(row.task)
        task = next(t for t in self._progress.tasks if t.id == row.task)
        self._queue.append(self._table([task], self._final_columns))
        self._progress.remove_task(row.task)
        self._rows.remove(row)

    # -- text ------------------------------------------------------------------------------

    def accepts(self) -> bool:
        return self._open and os.getpid() == self.pid

    def enqueue(self, name: str, text: str) -> bool:
        """Queue text written to a stand-in; False once the display is closed (or in a
        forked child, whose copy of the lock may be held forever): write it directly."""
        if os.getpid() != self.pid:
            return False
        with self._lock:
            if not self._open:
                return False
            text = self._partial.pop(name, "") + text
            cut = text.rfind("\n")
            if cut >= 0:
                self._queue.append(text[:cut])
            rest = text[cut + 1 :]
            if "\r" in rest:
                rest = rest[rest.rfind("\r") :]  # a line redrawn by \r: only its last state
            if rest:
                self._partial[name] = rest
        return True

    # -- drawing ---------------------------------------------------------------------------

    def _refresh_loop(self) -> None:
        try:
            while not self._stop.wait(_REFRESH_S):
                with self._lock:
                    self._flush()
        except Exception:  # (the terminal went away): what is queued goes out at close()
            return

    def _flush(self) -> None:
        """One write: what was queued goes above, then the rows are redrawn below it."""
        for row in self._rows:
            self._progress.update(row.task, completed=row.completed)
        self._live.refresh()  # (printing below appends the display as last refreshed)
        if not self._queue:
            return
        from rich.console import Group

        items: list[RenderableType] = []
        lines: list[str] = []
        for item in self._queue:
            if isinstance(item, str):
                lines.append(item)
                continue
            if lines:
                items.append(_Verbatim(lines))
                lines = []
            items.append(item)
        if lines:
            items.append(_Verbatim(lines))
        self._queue.clear()
        self._console.print(Group(*items), soft_wrap=True)

    def _renderable(self) -> RenderableType:
        from rich.console import Group
        from rich.text import Text

        table = self._table(self._progress.tasks, self._progress.columns)
        partial = [Text.from_ansi(t) for t in self._partial.values() if t.strip("\r")]
        return Group(*partial, table) if partial else table

    @staticmethod
    def _table(tasks: list[Task], columns: Any) -> RenderableType:
        from rich.table import Table

        grid = Table.grid(*(c.get_table_column().copy() for c in columns), padding=(0, 1))
        for task in tasks:
            grid.add_row(*(column(task) for column in columns))
        return grid


class _Verbatim:
    """Lines written as they came (colours, ``\\r`` and all): rich only places them."""

    def __init__(self, lines: list[str]) -> None:
        self.text = "\n".join(lines) + "\n"

    def __rich_console__(self, console: Console, options: Any) -> Iterator[Segment]:
        from rich.segment import Segment

        yield Segment(self.text)


def _open_display() -> _Display:
    global _display
    display = _Display(sys.stderr)
    _display = display
    display.open()
    return display
