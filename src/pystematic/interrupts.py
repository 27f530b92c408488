"""Stop signals that are never lost: SIGINT and SIGTERM become exceptions in the main thread.

Python runs a signal's handler between two bytecodes of the main thread, wherever they
are. During ``os.fork()`` those are the at-fork callbacks (logging's lock release, ...),
and CPython reports an exception raised there as "unraisable" and drops it: the stop
request is lost and training goes on (measured on 0.1.0: 9 of 42 SIGTERMs to a run whose
DataLoader workers fork every epoch). The same happens in a ``__del__``, a weakref
callback or a finalizer (multiprocessing's, run by the garbage collector). So the
handlers here only note a signal that lands during a fork, and one whose exception was
dropped anyway is seen by ``sys.unraisablehook``; either way a helper thread sends the
signal again a moment later, and it is raised at the next safe point. :class:`held`
defers stop signals the same way around writes that must not be cut in half (a batch
of metrics, a run dir and its run.json).
"""

from __future__ import annotations

import contextlib
import logging  # noqa: F401  (its at-fork callbacks must be registered before ours, see cover_forks)
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

__all__ = [
    "EXIT_CODES",
    "Terminated",
    "describe",
    "exit_code",
    "handling",
    "held",
    "install",
    "raise_if_stopped",
    "received",
    "stop_exception",
]


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives, so ``finally`` blocks run."""


#: The exit code of a process stopped by each signal (the shell's 128 + signal number).
EXIT_CODES: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}

Handler = Callable[[int, "FrameType | None"], Any]

_forking = 0  # forks of the main thread in progress (nested registrations count each)
_received: int | None = None  # the stop signal that came since handling() began
_raised: BaseException | None = None  # the exception the handler raised last
_previous_unraisablehook: Any = None  # sys.unraisablehook before ours, while ours is set
_pending: list[int] = []  # signals that landed during a fork, to be sent again
_covered_modules = -1  # len(sys.modules) when the at-fork callbacks were last registered
# After a fork, at-fork callbacks registered after ours still run: send again a moment later.
_REDELIVER_AFTER_S = 0.005


def exit_code(error: BaseException) -> int | None:
    """130 for KeyboardInterrupt, 143 for Terminated, None for anything else."""
    if isinstance(error, KeyboardInterrupt):
        return EXIT_CODES[signal.SIGINT]
    if isinstance(error, Terminated):
        return EXIT_CODES[signal.SIGTERM]
    return None


def describe(error: BaseException) -> str:
    """run.json's ``error`` for a run stopped by a signal."""
    return "KeyboardInterrupt" if isinstance(error, KeyboardInterrupt) else "SIGTERM"


def received() -> int | None:
    """The stop signal that arrived since the run's :func:`handling` began, if one did.

    A stop request can surface as another exception: a job's SIGTERM also kills the
    DataLoader workers, and torch's SIGCHLD handler may raise "worker killed by signal"
    before or after ours. The run was stopped all the same.
    """
    return _received


def raise_if_stopped(error: BaseException) -> None:
    """Raise the stop request if a stop signal came and *error* is what became of it (an
    import that turned our exception into an ImportError, say)."""
    if _received is not None and exit_code(error) is None:
        raise stop_exception(_received) from error


def stop_exception(signum: int) -> BaseException:
    """The exception a stop signal raises: KeyboardInterrupt (SIGINT) or Terminated."""
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def _stop_handler(signum: int, frame: FrameType | None) -> None:
    global _received, _raised
    _received = signum
    if _forking:
        if signum not in _pending:
            _pending.append(signum)
        return
    _raised = stop_exception(signum)
    raise _raised


def _send_again(signums: list[int]) -> None:
    """Send the signals to the main thread again, from a helper thread, a moment later."""
    main = threading.main_thread().ident
    assert main is not None

    def send() -> None:
        time.sleep(_REDELIVER_AFTER_S)
        for signum in signums:
            signal.pthread_kill(main, signum)

    threading.Thread(target=send, name="pystematic-signal", daemon=True).start()


def _unraisable(unraisable: Any) -> None:
    """Our stop exception, dropped where Python cannot raise (a finalizer): send it again."""
    global _raised
    if _raised is not None and unraisable.exc_value is _raised and _received is not None:
        _raised = None
        _send_again([_received])
        return
    (_previous_unraisablehook or sys.__unraisablehook__)(unraisable)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _before_fork() -> None:
    global _forking
    if _in_main_thread():
        _forking += 1


def _after_fork_in_parent() -> None:
    global _forking
    if not _in_main_thread():
        return
    _forking = max(0, _forking - 1)
    if _forking == 0 and _pending:
        signums = list(_pending)
        _pending.clear()
        _send_again(signums)


def _after_fork_in_child() -> None:
    global _forking
    _forking = 0
    _pending.clear()
    # A forked child (a DataLoader worker) gets Python's own behaviour back.
    with contextlib.suppress(ValueError):
        if signal.getsignal(signal.SIGTERM) is _stop_handler:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if signal.getsignal(signal.SIGINT) is _stop_handler:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def cover_forks() -> None:
    """Register the at-fork callbacks around those of every module imported so far.

    ``before`` callbacks run in reverse order of registration and ``after`` ones in order,
    so registering again after new imports (user code, torch) puts ours outside theirs.
    """
    global _covered_modules
    if len(sys.modules) == _covered_modules:
        return
    _covered_modules = len(sys.modules)
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


def _install() -> dict[int, Any]:
    """Our handlers for SIGINT and SIGTERM (not for one ignored, as by ``nohup``); the old ones."""
    global _previous_unraisablehook
    cover_forks()
    if sys.unraisablehook is not _unraisable:
        _previous_unraisablehook, sys.unraisablehook = sys.unraisablehook, _unraisable
    previous: dict[int, Any] = {}
    for signum in EXIT_CODES:
        handler = signal.getsignal(signum)
        if handler is not signal.SIG_IGN and handler is not _stop_handler:
            previous[signum] = signal.signal(signum, _stop_handler)
    return previous


def install() -> None:
    """At the start of a command: SIGINT raises KeyboardInterrupt, SIGTERM Terminated."""
    if _in_main_thread():
        _install()


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """The same for the length of a run, with the previous handlers put back after (a
    notebook). Outside the main thread nothing changes: handlers run only there."""
    global _received
    if not _in_main_thread():
        yield
        return
    _received = None
    hook = sys.unraisablehook
    previous = _install()
    try:
        yield
    finally:
        _received = None
        for signum, handler in previous.items():
            if handler is not None and signal.getsignal(signum) is _stop_handler:
                signal.signal(signum, handler)
        if hook is not _unraisable and sys.unraisablehook is _unraisable:
            sys.unraisablehook = hook


class held:  # a lower-case name: it reads as ``with held():``
    """Stop signals arriving inside the block are raised when it ends.

    While held, the Python handlers of the stop signals only remember what arrived; leaving
    calls them, so the exception is raised at the first safe point after the block. A
    second signal while held is handled at once (a second Ctrl-C stops a hung write). Only
    Python handlers are wrapped (``SIG_DFL``/``SIG_IGN`` are left alone), only in the main
    thread, and they are put back as they were.
    """

    __slots__ = ("active", "caught", "saved")

    _SIGNALS = tuple(
        getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
    )

    def __init__(self) -> None:
        self.active = False
        self.caught: list[tuple[Handler, int, FrameType | None]] = []
        self.saved: list[tuple[int, Handler, Handler]] = []

    def __enter__(self) -> held:
        if not _in_main_thread():
            return self
        self.active = True
        for signum in self._SIGNALS:
            handler = signal.getsignal(signum)
            if callable(handler):
                wrapper = self._wrap(handler)
                signal.signal(signum, wrapper)
                self.saved.append((signum, handler, wrapper))
        return self

    def _wrap(self, handler: Handler) -> Handler:
        def wrapper(signum: int, frame: FrameType | None) -> Any:
            if self.active and not self.caught:
                self.caught.append((handler, signum, frame))
                return None
            return handler(signum, frame)  # released, or a second signal: at once

        return wrapper

    def __exit__(self, *exc: object) -> None:
        # From here on the wrappers forward at once, so a signal landing while the
        # handlers are being put back is not lost either.
        self.active = False
        for signum, handler, wrapper in self.saved:
            if signal.getsignal(signum) is wrapper:
                signal.signal(signum, handler)
        self.saved.clear()
        caught, self.caught = self.caught, []
        for handler, signum, frame in caught:
            handler(signum, frame)  # typically raises: the stop request, delivered now
