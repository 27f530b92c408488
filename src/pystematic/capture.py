"""Tee the run's stdout and stderr, at the file-descriptor level, into ``output.log``.

Python's ``sys.stdout`` is not enough: C extensions, CUDA and child processes write to
file descriptors 1 and 2 directly. So fds 1 and 2 are pointed at a pipe (or at a
pseudo-terminal when the real stdout is a terminal, so rich and tqdm still draw live)
and a reader copies every chunk to the original descriptor and to the log
(``capture_reader.py``). The terminal gets every byte; the log gets clean text: the
final state of each line that a carriage-return progress bar redraws, no colour or
cursor codes, and of a live display (rich's) only what it printed and its last state.
A ``sys.stdout`` or ``sys.stderr`` that does not write to fds 1/2 (a Jupyter kernel's)
is tee'd into the log at the Python level too. POSIX only.

The reader is a helper process, not a thread: when the run dies at once (a
segfault, ``os.abort()``, ``os._exit()``, the OOM killer) the helper still reads what
was written up to that moment -- the interpreter's fatal-error report included -- and
passes it to the terminal and the log; it ends when the last writer is gone.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from . import capture_reader
from .capture_reader import CHUNK, DRAIN_MAX_S, LogFilter, write_all

__all__ = ["OutputCapture", "flush_python_streams", "helper_pids"]

# How long stop() waits for the helper to write out what it read.
_HELPER_WAIT_S = DRAIN_MAX_S + 1.0


_helpers: set[int] = set()  # pids of this process's capture helpers still running


def helper_pids() -> set[int]:
    """The capture helpers this process started and that have not ended yet."""
    return set(_helpers)


@dataclass
class _Channel:
    """One pipe or pty the helper reads: its read end (-1 once handed over) and the dup of
    the original fd 1 or 2 it copies to (-1: none)."""

    read_fd: int
    dest_fd: int
    batch: bool  # a pipe, not a pty (see capture_reader)


class OutputCapture:
    """Tees fds 1 and 2 to their original targets and to ``log_path`` (appended to).

    When fds 1 and 2 are the same file (a terminal, or ``2>&1``) they share one
    channel, so the log keeps their exact order; otherwise each has its own and the
    log interleaves them chunk by chunk.
    """

    def __init__(self, log_path: Path) -> None:
        self.log_path = Path(log_path)
        self._started = False
        self._stopped = False
        self._pid = -1
        self._saved: dict[int, int] = {}  # fd -> dup of what it pointed to before
        self._channels: list[_Channel] = []
        self._log_fd = -1
        self._wake_r = -1
        self._wake_w = -1
        self._helper: Any = None  # the reader process (subprocess.Popen)
        self._line_buffering: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._previous_winch: Any = None  # SIGWINCH handler before ours, when ours is set
        self._tees: dict[str, _LogTee] = {}  # sys.stdout/stderr that bypass fds 1 and 2

    def __enter__(self) -> OutputCapture:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Points fds 1 and 2 at the capture and starts the reader process."""
        if self._started:
            raise RuntimeError("OutputCapture.start() called twice")
        self._started = True
        self._pid = os.getpid()
        flush_python_streams()
        try:
            self._redirect()
        except BaseException:
            self._undo_redirect()
            raise
        self._start_helper()
        self._make_line_buffered()
        self._tee_python_streams()
        if not self._channels[0].batch:
            self._follow_terminal_size()
        atexit.register(self.stop)

    def _start_helper(self) -> None:
        """Start the reader; this process keeps only the write ends (fds 1 and 2).

        A fresh interpreter running ``capture_reader.py``, not a fork: a forked copy of a
        process with torch loaded would make every page the run writes afterwards a
        copy-on-write fault (measured: +0.3 s on a trivial run). It imports only the
        standard library.
        """
        import subprocess

        args = [str(self._log_fd), str(self._wake_r)]
        args += [f"{c.read_fd}:{c.dest_fd}:{int(c.batch)}" for c in self._channels]
        fds = {self._log_fd, self._wake_r, *(c.read_fd for c in self._channels)}
        fds |= {c.dest_fd for c in self._channels if c.dest_fd >= 0}
        # The helper's own stdout/stderr are not the pipes (it would hold them open), and it
        # is in a session of its own: a Ctrl-C to the terminal's process group must not stop
        # it while it passes on what the run says as it stops.
        self._helper = subprocess.Popen(
            [sys.executable, "-S", "-E", capture_reader.__file__, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=sorted(fds),
            start_new_session=True,
        )
        _helpers.add(self._helper.pid)
        for channel in self._channels:
            _close(channel.read_fd)
            channel.read_fd = -1
        _close(self._wake_r)
        self._wake_r = -1

    def _redirect(self) -> None:
        self._log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._wake_r, self._wake_w = os.pipe()
        stats = {fd: _fstat(fd) for fd in (1, 2)}
        shared = (
            stats[1] is not None and stats[2] is not None and os.path.samestat(stats[1], stats[2])
        )
        write_ends: dict[int, int] = {}
        try:
            for fd in (1, 2):
                self._saved[fd] = os.dup(fd) if stats[fd] is not None else -1
                if fd == 2 and shared:
                    write_ends[2] = write_ends[1]
                    continue
                tty = self._saved[fd] >= 0 and os.isatty(self._saved[fd])
                read_end, write_end = _open_pty(self._saved[fd]) if tty else _open_pipe()
                write_ends[fd] = write_end
                self._channels.append(_Channel(read_end, self._saved[fd], batch=not tty))
            for fd in (1, 2):
                os.dup2(write_ends[fd], fd)
        finally:
            for write_end in set(write_ends.values()):
                os.close(write_end)  # fds 1 and 2 are now the only writers we hold

    def _undo_redirect(self) -> None:
        for fd, saved in self._saved.items():
            if saved >= 0:
                os.dup2(saved, fd)
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in [self._wake_r, self._wake_w, self._log_fd, *self._saved.values()]:
            _close(fd)
        for channel in self._channels:
            _close(channel.read_fd)

    def stop(self) -> None:
        """Restores fds 1 and 2, writes out everything captured, closes the log.

        Safe to call more than once, and from a ``finally`` after an interrupt.
        """
        with self._lock:
            if not self._started or self._stopped or os.getpid() != self._pid:
                return  # (a forked child exiting must not stop the parent's capture)
            self._stopped = True
        atexit.unregister(self.stop)
        flush_python_streams()
        self._untee_python_streams()
        _flush_c_streams()
        for fd, saved in self._saved.items():
            if saved >= 0:
                os.dup2(saved, fd)
            else:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._restore_line_buffering()
        self._unfollow_terminal_size()
        # Now only processes that outlive the run still hold a write end: without
        # them the reader sees end of file at once, with them it stops once idle.
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._wait_helper()
        self._close_fds()

    def _wait_helper(self) -> None:
        if self._helper is None:
            return
        import subprocess

        with contextlib.suppress(subprocess.TimeoutExpired):  # it ends on its own soon
            _wait(self._helper, _HELPER_WAIT_S)
        _helpers.discard(self._helper.pid)
        self._helper = None

    # -- terminal size -----------------------------------------------------------------

    def _follow_terminal_size(self) -> None:
        """Resizes the pty with the real terminal, so rich and tqdm redraw to fit."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGWINCH) not in (signal.SIG_DFL, signal.SIG_IGN, None):
            return  # someone else's handler: leave it alone
        self._previous_winch = signal.signal(signal.SIGWINCH, self._on_winch)

    def _on_winch(self, signum: int, frame: FrameType | None) -> None:
        _copy_window_size(self._saved[1], 1)

    def _unfollow_terminal_size(self) -> None:
        if self._previous_winch is None:
            return
        with contextlib.suppress(ValueError):  # not the main thread
            if signal.getsignal(signal.SIGWINCH) == self._on_winch:
                signal.signal(signal.SIGWINCH, self._previous_winch)
        self._previous_winch = None

    # -- Python streams that bypass fds 1 and 2 ---------------------------------------

    def _tee_python_streams(self) -> None:
        """Tee ``sys.stdout``/``sys.stderr`` themselves when they do not write to fd 1/2.

        A Jupyter kernel's streams send text to the notebook, never to fd 1 (and so do
        pytest's and a CliRunner's): without this, a cell's prints would miss the log.
        A stream on fd 1/2 is left alone, so nothing is logged twice.
        """
        for name, fd in (("stdout", 1), ("stderr", 2)):
            stream = getattr(sys, name, None)
            if stream is not None and not _writes_to_fd(stream, fd):
                self._tees[name] = _LogTee(stream, self._log_fd, self._pid)
                setattr(sys, name, self._tees[name])

    def _untee_python_streams(self) -> None:
        for name, tee in self._tees.items():
            if getattr(sys, name, None) is tee:
                setattr(sys, name, tee.stream)
            tee.close()
        self._tees.clear()

    # -- sys.stdout buffering ----------------------------------------------------------

    def _make_line_buffered(self) -> None:
        # A block-buffered sys.stdout (stdout was a pipe or file at start-up) would
        # hold prints back from the terminal and the log.
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name, None)
            if stream is None or not hasattr(stream, "reconfigure"):
                continue
            if not stream.line_buffering:
                with contextlib.suppress(Exception):
                    stream.reconfigure(line_buffering=True)
                    self._line_buffering[name] = False

    def _restore_line_buffering(self) -> None:
        for name, value in self._line_buffering.items():
            stream = getattr(sys, name, None)
            with contextlib.suppress(Exception):
                stream.reconfigure(line_buffering=value)  # type: ignore[union-attr]
        self._line_buffering.clear()


class _LogTee:
    """Stands in for a ``sys.stdout``/``sys.stderr`` that bypasses fds 1 and 2: text goes
    where it went before, and (filtered as the fd channels are) into the log."""

    def __init__(self, stream: Any, log_fd: int, pid: int) -> None:
        self.stream = stream
        self._log_fd = log_fd
        self._pid = pid
        self._filter = LogFilter()
        self._lock = threading.Lock()
        self._open = True

    def write(self, text: str) -> int:
        written = self.stream.write(text)
        if self._open and os.getpid() == self._pid:
            with self._lock:
                # Whole lines on an O_APPEND fd: they never tear with the reader thread's.
                write_all(self._log_fd, self._filter.feed(text.encode("utf-8", "replace")))
        return len(text) if written is None else int(written)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        """No more logging (the capture stops): the unfinished last line goes in first."""
        with self._lock:
            if self._open:
                self._open = False
                write_all(self._log_fd, self._filter.flush())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)  # encoding, isatty, fileno, ...


def _wait(proc: Any, timeout: float) -> None:
    """``proc.wait(timeout)`` without its polling: Popen sleeps up to 50 ms between
    checks, which a short run would wait out at its end. A pidfd wakes us at the exit."""
    import select

    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux >= 5.3, or it is gone already
        proc.wait(timeout)
        return
    try:
        select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    proc.wait(0)


def _writes_to_fd(stream: Any, fd: int) -> bool:
    try:
        return bool(stream.fileno() == fd)
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return False


def _open_pty(like: int) -> tuple[int, int]:
    """A pty pair whose slave has the terminal's size and passes output bytes through."""
    import termios

    master, slave = os.openpty()
    _copy_window_size(like, slave)
    with contextlib.suppress(termios.error):
        # No output processing ('\n' -> '\r\n'): the real terminal does its own.
        attrs = termios.tcgetattr(slave)
        attrs[1] &= ~termios.OPOST
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
    return master, slave


def _copy_window_size(src: int, dest: int) -> None:
    import fcntl
    import termios

    with contextlib.suppress(OSError):
        fcntl.ioctl(dest, termios.TIOCSWINSZ, fcntl.ioctl(src, termios.TIOCGWINSZ, b"\0" * 8))


def _open_pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe()
    if sys.platform.startswith("linux"):
        import fcntl

        # 1 MiB (the default pipe-max-size) instead of 64 KiB: bulk output ~3x faster.
        with contextlib.suppress(OSError):
            fcntl.fcntl(write_end, getattr(fcntl, "F_SETPIPE_SZ", 1031), CHUNK)
    return read_end, write_end


def _fstat(fd: int) -> os.stat_result | None:
    try:
        return os.fstat(fd)
    except OSError:
        return None


def _close(fd: int) -> None:
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)


def flush_python_streams() -> None:
    """Flush ``sys.stdout`` and ``sys.stderr`` into fds 1 and 2, whatever they are now."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _flush_c_streams() -> None:
    # C stdio buffers stdout fully when it is not a terminal; flush it into the log.
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).fflush(None)
