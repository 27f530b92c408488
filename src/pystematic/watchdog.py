"""A rank blocked outside Python still stops within seconds of a stop signal.

Python runs a signal's handler in the main thread, between two bytecodes. A rank whose
main thread waits inside a C++ collective for a peer that never comes (gloo's default
timeout is 30 minutes) never gets there: torch's agent forwards Ctrl-C, waits 30 s and
then SIGKILLs the rank, which flushes nothing. :class:`StopWatchdog` sees each SIGINT and
SIGTERM arrive (``signal.set_wakeup_fd``: the interpreter's C-level handler writes the
signal number to a pipe a daemon thread reads) and, when the main thread has not moved on
within :data:`GRACE_S` -- its innermost Python frame stands still, so the handler could
not run -- flushes what it can and ends the process with ``os._exit(128 + signal)``.

A main thread that moves on (running Python, a ``finally`` saving a checkpoint) was
reached by the handler: the watchdog stays out of its way until the next signal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import FrameType

from .capture import flush_python_streams

__all__ = ["GRACE_S", "StopWatchdog", "guard"]

#: How long the main thread has to react to a stop signal before the rank is ended.
GRACE_S = 3.0
#: At most this long is spent flushing before the rank ends.
FLUSH_S = 2.0
_POLL_S = 0.05
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_QUIT = 0  # the byte stop() writes: no signal has number 0

_active: StopWatchdog | None = None  # the watchdog of this process, if one is running
_fork_hook_registered = False


class StopWatchdog:
    """Ends this process when the main thread cannot take a stop signal within ``grace``.

    Before the process ends, within :data:`FLUSH_S` and each failure ignored: the running
    context's recorder is flushed, rank 0 records the run ``interrupted`` in run.json,
    ``sys.stdout`` / ``sys.stderr`` are flushed, and then each of ``flush`` is called (the
    output capture's stop: what the rank printed reaches output.log and the terminal).
    """

    def __init__(self, grace: float = GRACE_S, flush: Sequence[Callable[[], object]] = ()) -> None:
        self.grace = grace
        self.flush = list(flush)
        self._read_fd = -1
        self._write_fd = -1
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Watch from now on; False (nothing done) off the main thread or when another
        wakeup fd is set already (asyncio's, say: it is left alone)."""
        global _active
        if threading.current_thread() is not threading.main_thread() or _active is not None:
            return False
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)  # the C-level handler must never block
        try:
            previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        except (ValueError, OSError):
            previous = -2
        if previous != -1:
            if previous != -2:
                signal.set_wakeup_fd(previous)
            os.close(read_fd)
            os.close(write_fd)
            return False
        self._read_fd, self._write_fd = read_fd, write_fd
        _active = self
        _forget_in_forked_children()
        self._thread = threading.Thread(
            target=self._watch, name="pystematic-stop-watchdog", daemon=True
        )
        self._thread.start()
        return True

    def stop(self) -> None:
        """Stop watching; the wakeup fd goes back to unset."""
        global _active
        if _active is not self:
            return
        _active = None
        with contextlib.suppress(ValueError, OSError):
            current = signal.set_wakeup_fd(-1)
            if current not in (-1, self._write_fd):  # someone else's since: put it back
                signal.set_wakeup_fd(current)
        with contextlib.suppress(OSError):
            os.write(self._write_fd, bytes([_QUIT]))
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        # Forked children (DataLoader workers) may still hold the pipe: close our ends.
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._read_fd = self._write_fd = -1

    # ------------------------------------------------------------ the thread

    def _watch(self) -> None:
        while True:
            try:
                data = os.read(self._read_fd, 64)
            except OSError:
                return
            if not data or _QUIT in data:
                return
            stops = [b for b in data if b in _STOP_SIGNALS]
            if stops and self._main_stands_still():
                self._expire(stops[-1])

    def _main_stands_still(self) -> bool:
        """True when the main thread's innermost frame does not move for ``grace`` seconds."""
        main = threading.main_thread().ident
        first = _position(main)
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline:
            time.sleep(_POLL_S)
            if _active is not self:
                return False  # stopped: the run is over
            now = _position(main)
            if now[0] is not first[0] or now[1] != first[1]:
                return False
        return True

    def _expire(self, signum: int) -> None:
        name = signal.Signals(signum).name
        message = (
            f"pystematic: {name} not taken within {self.grace:g} s (the main thread is "
            f"blocked outside Python, e.g. in a collective); ending this rank\n"
        )
        with contextlib.suppress(OSError):
            os.write(2, message.encode())
        done = threading.Event()

        def flush_all() -> None:
            steps = [_flush_recorder, lambda: _record_stop(signum), flush_python_streams]
            for step in [*steps, *self.flush]:
                with contextlib.suppress(Exception):
                    step()
            done.set()

        threading.Thread(target=flush_all, name="pystematic-final-flush", daemon=True).start()
        done.wait(FLUSH_S)
        os._exit(128 + signum)


def _position(thread_id: int | None) -> tuple[FrameType | None, int]:
    """The thread's innermost Python frame and its instruction offset."""
    frame = sys._current_frames().get(thread_id) if thread_id is not None else None
    return frame, frame.f_lasti if frame is not None else -1


def _flush_recorder() -> None:
    from .context import current

    ctx = current()
    if ctx is not None:
        ctx.recorder.flush()


def _record_stop(signum: int) -> None:
    """Rank 0 records the run as interrupted (under torchrun no launcher does it)."""
    from . import interrupts, rundir
    from .context import current

    ctx = current()
    if ctx is not None and ctx.rank == 0:
        error = interrupts.describe(interrupts.stop_exception(signum))
        fields = {"status": "interrupted", "error": error, "metrics": ctx.recorder.last_scalars}
        rundir.finish_record(ctx.output_dir, fields)


def _forget_in_forked_children() -> None:
    """A forked child (a DataLoader worker) does not write its signals into our pipe."""
    global _fork_hook_registered
    if not _fork_hook_registered:
        _fork_hook_registered = True
        os.register_at_fork(after_in_child=_after_fork_in_child)


def _after_fork_in_child() -> None:
    global _active
    watchdog, _active = _active, None
    if watchdog is None:
        return
    try:
        current = signal.set_wakeup_fd(-1)
    except ValueError:  # forked from another thread: the fd stays set, so keep the pipe
        return
    if current != watchdog._write_fd:
        signal.set_wakeup_fd(current)  # not ours (cannot happen while ours is active)
        return
    for fd in (watchdog._read_fd, watchdog._write_fd):
        with contextlib.suppress(OSError):
            os.close(fd)


@contextlib.contextmanager
def guard(world_size: int, flush: Sequence[Callable[[], object]] = ()) -> Iterator[None]:
    """A :class:`StopWatchdog` for the length of a run of a group (``world_size > 1``)."""
    watchdog = StopWatchdog(flush=flush) if world_size > 1 else None
    if watchdog is not None:
        watchdog.start()
    try:
        yield
    finally:
        if watchdog is not None:
            watchdog.stop()
