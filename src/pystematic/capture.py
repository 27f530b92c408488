"""Tee the run's stdout and stderr, at the file-descriptor level, into ``output.log``.

Python's ``sys.stdout`` is not enough: C extensions, CUDA and child processes write to
file descriptors 1 and 2 directly. So fds 1 and 2 are pointed at a pipe (or at a
pseudo-terminal when the real stdout is a terminal, so rich and tqdm still draw live)
and a reader thread copies every chunk to the original descriptor and to the log.
The terminal gets every byte; the log gets clean text: the final state of each line
that a carriage-return progress bar redraws, no colour or cursor codes, and of a live
display (rich's) only what it printed and its last state. A ``sys.stdout`` or
``sys.stderr`` that does not write to fds 1/2 (a Jupyter kernel's) is tee'd into the
log at the Python level too. POSIX only.

The reader is a helper process, not a thread: when the run dies at once (a
segfault, ``os.abort()``, ``os._exit()``, the OOM killer) the helper still reads what
was written up to that moment -- the interpreter's fatal-error report included -- and
passes it to the terminal and the log; it ends when the last writer is gone.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import selectors
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

__all__ = ["OutputCapture", "helper_pids"]

_CHUNK = 1 << 20
# After a small read from a pipe, let output pile up a little: fewer wake-ups, less GIL
# ping-pong with the training loop (200k short prints: ~3x less overhead), no visible
# delay. Not for a pty: its buffer is small, so waiting would throttle the writer.
_BATCH_S = 0.002
# A line longer than this without '\n' is written out as it stands (bounds memory).
_MAX_PENDING = 1 << 20
# After stop(), how long to wait for more output when something else (a process that
# outlives the run) still holds the write end open and no end of file comes.
_DRAIN_IDLE_S = 0.2
_DRAIN_MAX_S = 2.0
# How long stop() waits for the helper to write out what it read.
_HELPER_WAIT_S = _DRAIN_MAX_S + 1.0
# Rows a hidden-cursor display may hold back (rich draws at most a screenful); an escape
# sequence longer than this without its end is taken as text.
_MAX_HELD_ROWS = 1000
_MAX_ESCAPE = 4096
# Colours (SGR) and OSC strings (hyperlinks, titles): dropped without a terminal model.
_STYLE = re.compile(rb"\x1b\[[0-9;:]*m|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")
# What the slow path acts on: CSI sequences (parameters and final byte), OSC strings,
# other escapes (ESC 7, ESC ( B, ...), carriage returns and newlines.
_CONTROL = re.compile(
    rb"\x1b(?:\[(?P<params>[0-?]*)[ -/]*(?P<final>[@-~])"
    rb"|\][^\x07\x1b]*(?:\x07|\x1b\\)|[ -/]*[0-Z\\^-~])|\r|\n"
)


class _CarriageReturnFilter:
    """Reduces a terminal byte stream to the text a terminal finally shows, line by line.

    Text before the last ``\\r`` of a line (the redraws of a progress bar) is dropped,
    ``\\r\\n`` counts as a newline, and chunk boundaries may fall anywhere. Escape sequences
    (colours, hyperlinks, cursor movement) never reach the log. While the cursor is hidden
    (``ESC[?25l``: a live display such as rich's is drawing) the last rows are held back,
    because the display moves the cursor up and erases them to redraw: a row is written
    out once the display has moved above it, or once the cursor is shown again. So the log
    gets the lines printed above a live display and its final state, not every redraw.
    """

    def __init__(self) -> None:
        self._pending = b""  # the cursor's line, not yet ended by '\n'
        self._tail = b""  # an escape sequence cut off by the end of the last chunk
        self._above: list[bytes] = []  # held rows above the cursor (cursor hidden only)
        self._below: list[bytes] = []  # held rows below it, after the cursor moved up
        self._hidden = False  # the cursor is hidden: hold rows back
        self._reveal = False  # the cursor was shown again: stop holding at the next text
        self._moved = False  # an erase or cursor-up came since the last text

    def feed(self, data: bytes) -> bytes:
        """Takes the next chunk; returns the lines it completed, ready for the log."""
        if self._tail:
            data, self._tail = self._tail + data, b""
        if b"\x1b" in data:
            data = _STYLE.sub(b"", data)  # colours and links: the common case, kept fast
            if b"\x1b" in data:
                return self._feed_controls(data)
        if self._hidden:
            return self._feed_controls(data)
        buf = self._pending + data
        end = buf.rfind(b"\n")
        if end < 0:
            self._pending = _collapse(buf)
            out = b""
        else:
            done, self._pending = buf[: end + 1], _collapse(buf[end + 1 :])
            if b"\r" in done:
                out = b"".join(_final_state(line) + b"\n" for line in done[:-1].split(b"\n"))
            else:
                out = done
        if len(self._pending) > _MAX_PENDING:
            out, self._pending = out + self._pending, b""
        return out

    def flush(self) -> bytes:
        """Returns what is still held and the unfinished last line (with a newline added)."""
        line = _final_state(self._pending)
        rows = [*self._above, *([line] if line else []), *(r for r in self._below if r)]
        self._pending, self._tail, self._above, self._below = b"", b"", [], []
        self._hidden = self._reveal = self._moved = False
        return b"".join(row + b"\n" for row in rows)

    def _feed_controls(self, buf: bytes) -> bytes:
        """The slow path: a small model of the terminal's last rows and its cursor."""
        out: list[bytes] = []
        pos = 0
        for match in _CONTROL.finditer(buf):
            if match.start() > pos:
                self._text(buf[pos : match.start()], out)
            pos = match.end()
            token = match.group()
            if token == b"\n":
                self._newline(out)
            elif token == b"\r":
                self._pending += b"\r"
            elif match.group("final") is not None:
                self._csi(match.group("params"), match.group("final"))
        rest = buf[pos:]
        cut = rest.find(b"\x1b")
        if cut >= 0 and len(rest) - cut < _MAX_ESCAPE:
            rest, self._tail = rest[:cut], rest[cut:]  # completed by the next chunk
        if rest:
            self._text(rest, out)
        self._pending = _collapse(self._pending)
        if len(self._pending) > _MAX_PENDING:
            out.extend(row + b"\n" for row in self._above)
            out.append(self._pending)
            self._pending, self._above = b"", []
        if len(self._above) > _MAX_HELD_ROWS:
            keep = len(self._above) - _MAX_HELD_ROWS
            out.extend(row + b"\n" for row in self._above[:keep])
            del self._above[:keep]
        return b"".join(out)

    def _settle(self, out: list[bytes]) -> None:
        """Text is written: rows the cursor moved above, or all once it is shown, are final."""
        if self._moved or self._reveal:
            out.extend(row + b"\n" for row in self._above)
            self._above.clear()
            self._moved = False
        if self._reveal:
            self._below.clear()  # what is left of the display below the cursor: erased
            self._hidden = self._reveal = False

    def _text(self, text: bytes, out: list[bytes]) -> None:
        self._settle(out)
        self._pending += text.replace(b"\x1b", b"")  # a stray ESC alone

    def _newline(self, out: list[bytes]) -> None:
        self._settle(out)
        line = _final_state(self._pending)
        if self._hidden:
            self._above.append(line)
        else:
            out.append(line + b"\n")
        # Moving down onto a row kept below: its text stays until something overwrites it.
        self._pending = self._below.pop(0) + b"\r" if self._below else b""

    def _csi(self, params: bytes, final: bytes) -> None:
        if final in b"AF":  # cursor up (F: to the start of the line, too)
            for _ in range(_count(params)):
                if not self._above:
                    break  # above what is held: those rows are in the log already
                self._below.insert(0, _final_state(self._pending))
                self._pending = self._above.pop() + b"\r"
            self._moved = True
        elif final == b"K":  # erase the line, or from the cursor on (all of it at column 0)
            at_start = not self._pending or self._pending.endswith(b"\r")
            if params == b"2" or (params in (b"", b"0") and at_start):
                self._pending = b"\r"
            self._moved = True
        elif final == b"G" and _count(params) == 1:  # cursor to column 1: a carriage return
            self._pending += b"\r"
        elif final == b"J":  # erase below the cursor (or the screen)
            self._below.clear()
        elif params == b"?25" and final in b"hl":
            if final == b"l":
                self._hidden, self._reveal = True, False
            elif self._hidden:
                self._reveal = True


def _final_state(line: bytes) -> bytes:
    line = line.rstrip(b"\r")
    return line[line.rfind(b"\r") + 1 :]


def _collapse(partial: bytes) -> bytes:
    # Keep a trailing '\r': the '\n' of a '\r\n' may come in the next chunk.
    core = partial.rstrip(b"\r")
    return core[core.rfind(b"\r") + 1 :] + (b"\r" if len(core) < len(partial) else b"")


def _count(params: bytes) -> int:
    try:
        return max(1, int(params or b"1"))
    except ValueError:
        return 1


_helpers: set[int] = set()  # pids of this process's capture helpers still running


def helper_pids() -> set[int]:
    """The capture helpers this process started and that have not ended yet."""
    return set(_helpers)


class _Channel:
    """One pipe or pty: its read end, where its bytes go, and its log filter."""

    def __init__(self, read_fd: int, dest_fd: int, batch: bool) -> None:
        self.read_fd = read_fd
        self.batch = batch  # a pipe: wait a little after small reads (see _BATCH_S)
        self.dest_fd = dest_fd  # a dup of the original fd 1 or 2; -1 once it fails
        self.filter = _CarriageReturnFilter()


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
        _flush_python_streams()
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

        A fresh interpreter running this file, not a fork: a forked copy of a process with
        torch loaded would make every page the run writes afterwards a copy-on-write fault
        (measured: +0.3 s on a trivial run). It imports only the standard library.
        """
        import subprocess

        spec = {
            "channels": [[c.read_fd, c.dest_fd, c.batch] for c in self._channels],
            "log": self._log_fd,
            "wake": self._wake_r,
        }
        fds = {self._log_fd, self._wake_r, *(c.read_fd for c in self._channels)}
        fds |= {c.dest_fd for c in self._channels if c.dest_fd >= 0}
        # The helper's own stdout/stderr are not the pipes (it would hold them open), and it
        # is in a session of its own: a Ctrl-C to the terminal's process group must not stop
        # it while it passes on what the run says as it stops.
        self._helper = subprocess.Popen(
            [sys.executable, "-S", "-E", __file__, json.dumps(spec)],
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
        _flush_python_streams()
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
            self._helper.wait(timeout=_HELPER_WAIT_S)
        _helpers.discard(self._helper.pid)
        self._helper = None

    # -- terminal size -----------------------------------------------------------------

    def _follow_terminal_size(self) -> None:
        """Resizes the pty with the real terminal, so rich and tqdm redraw to fit."""
        import signal

        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGWINCH) not in (signal.SIG_DFL, signal.SIG_IGN, None):
            return  # someone else's handler: leave it alone
        self._previous_winch = signal.signal(signal.SIGWINCH, self._on_winch)

    def _on_winch(self, signum: int, frame: FrameType | None) -> None:
        _copy_window_size(self._saved[1], 1)

    def _unfollow_terminal_size(self) -> None:
        import signal

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
        self._filter = _CarriageReturnFilter()
        self._lock = threading.Lock()
        self._open = True

    def write(self, text: str) -> int:
        written = self.stream.write(text)
        if self._open and os.getpid() == self._pid:
            with self._lock:
                # Whole lines on an O_APPEND fd: they never tear with the reader thread's.
                _write_all(self._log_fd, self._filter.feed(text.encode("utf-8", "replace")))
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
                _write_all(self._log_fd, self._filter.flush())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)  # encoding, isatty, fileno, ...


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
            fcntl.fcntl(write_end, getattr(fcntl, "F_SETPIPE_SZ", 1031), _CHUNK)
    return read_end, write_end


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, _CHUNK)
    except OSError:  # EIO: a pty master once every slave fd is closed
        return b""


def _write_all(fd: int, data: bytes) -> bool:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except InterruptedError:
            continue
        except OSError:
            return False
    return True


def _fstat(fd: int) -> os.stat_result | None:
    try:
        return os.fstat(fd)
    except OSError:
        return None


def _close(fd: int) -> None:
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)


def _flush_python_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _flush_c_streams() -> None:
    # C stdio buffers stdout fully when it is not a terminal; flush it into the log.
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).fflush(None)


# -- the reader (in the helper process) ------------------------------------------------


def _pump(channels: list[_Channel], wake_fd: int, log_fd: int) -> None:
    """Copy each channel to its destination and (filtered) to the log until every writer
    is gone, or until the run stopped (``wake_fd`` readable) and the pipes went idle."""
    selector = selectors.DefaultSelector()
    open_channels = {c.read_fd: c for c in channels}
    for channel in channels:
        selector.register(channel.read_fd, selectors.EVENT_READ, channel)
    selector.register(wake_fd, selectors.EVENT_READ, None)
    timeout: float | None = None  # block until stop() wakes us up
    deadline = 0.0
    try:
        while open_channels:
            events = selector.select(timeout)
            if timeout is not None and (not events or time.monotonic() > deadline):
                break  # stopping, and nothing more came within the idle time
            for key, _ in events:
                channel = key.data
                if channel is None:  # stop() asked, or the run is gone (end of file)
                    selector.unregister(wake_fd)
                    timeout, deadline = _DRAIN_IDLE_S, time.monotonic() + _DRAIN_MAX_S
                    continue
                data = _read(channel.read_fd)
                if data:
                    _emit(channel, data, log_fd)
                    if channel.batch and len(data) < _CHUNK // 4 and timeout is None:
                        time.sleep(_BATCH_S)
                else:
                    selector.unregister(channel.read_fd)
                    del open_channels[channel.read_fd]
    finally:
        selector.close()
        for channel in channels:
            _write_all(log_fd, channel.filter.flush())


def _emit(channel: _Channel, data: bytes, log_fd: int) -> None:
    if channel.dest_fd >= 0 and not _write_all(channel.dest_fd, data):
        channel.dest_fd = -1  # e.g. `| head` went away: keep logging
    _write_all(log_fd, channel.filter.feed(data))


def _serve(spec_json: str) -> None:
    """The helper process: ``python capture.py SPEC`` (the fds it was passed, as JSON)."""
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    spec = json.loads(spec_json)
    channels = [_Channel(read_fd, dest_fd, batch) for read_fd, dest_fd, batch in spec["channels"]]
    _pump(channels, spec["wake"], spec["log"])


if __name__ == "__main__":
    _serve(sys.argv[1])
