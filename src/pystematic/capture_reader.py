"""The output capture's reader process and the log filter it applies.

``capture.py`` starts this file as a fresh interpreter (``python -S -E``) holding the read
ends of the run's fd 1 and 2: it copies every chunk to the original descriptor and,
reduced by :class:`LogFilter` to clean text, to ``output.log``. It imports only a few
standard modules, so it is ready within milliseconds of the run's start (a short run
waits for it at the end), and it ignores stop signals, so it passes on what the run
says as it stops, or dies.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import sys
import time

__all__ = ["CHUNK", "DRAIN_MAX_S", "LogFilter", "serve", "write_all"]

CHUNK = 1 << 20  # bytes per read; also the size capture gives its pipes
# After a small read from a pipe, let output pile up a little: fewer wake-ups, less GIL
# ping-pong with the training loop (200k short prints: ~3x less overhead), no visible
# delay. Not for a pty: its buffer is small, so waiting would throttle the writer.
_BATCH_S = 0.002
# A line longer than this without '\n' is written out as it stands (bounds memory).
_MAX_PENDING = 1 << 20
# After stop(), how long to wait for more output when something else (a process that
# outlives the run) still holds the write end open and no end of file comes.
_DRAIN_IDLE_S = 0.2
DRAIN_MAX_S = 2.0
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


class LogFilter:
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


class _Channel:
    """One pipe or pty: its read end, where its bytes go, and its log filter."""

    def __init__(self, read_fd: int, dest_fd: int, batch: bool) -> None:
        self.read_fd = read_fd
        self.batch = batch  # a pipe: wait a little after small reads (see _BATCH_S)
        self.dest_fd = dest_fd  # a dup of the original fd 1 or 2; -1 once it fails
        self.filter = LogFilter()


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, CHUNK)
    except OSError:  # EIO: a pty master once every slave fd is closed
        return b""


def write_all(fd: int, data: bytes) -> bool:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except InterruptedError:
            continue
        except OSError:
            return False
    return True


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
                    timeout, deadline = _DRAIN_IDLE_S, time.monotonic() + DRAIN_MAX_S
                    continue
                data = _read(channel.read_fd)
                if data:
                    _emit(channel, data, log_fd)
                    if channel.batch and len(data) < CHUNK // 4 and timeout is None:
                        time.sleep(_BATCH_S)
                else:
                    selector.unregister(channel.read_fd)
                    del open_channels[channel.read_fd]
    finally:
        selector.close()
        for channel in channels:
            write_all(log_fd, channel.filter.flush())


def _emit(channel: _Channel, data: bytes, log_fd: int) -> None:
    if channel.dest_fd >= 0 and not write_all(channel.dest_fd, data):
        channel.dest_fd = -1  # e.g. `| head` went away: keep logging
    write_all(log_fd, channel.filter.feed(data))


def serve(argv: list[str]) -> None:
    """The helper process: ``python -S -E capture_reader.py LOG WAKE READ:DEST:BATCH...``
    (the file descriptors it was passed; DEST -1 when there is no terminal to copy to)."""
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    log_fd, wake_fd = int(argv[0]), int(argv[1])
    channels = []
    for item in argv[2:]:
        read_fd, dest_fd, batch = (int(x) for x in item.split(":"))
        channels.append(_Channel(read_fd, dest_fd, bool(batch)))
    _pump(channels, wake_fd, log_fd)


if __name__ == "__main__":
    serve(sys.argv[1:])
