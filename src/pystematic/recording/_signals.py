"""Holding back signal handlers while the recorder writes a batch.

Python runs signal handlers in the main thread between two bytecodes, so a
``KeyboardInterrupt`` (or the runner's ``Terminated``) can land after a backend
wrote a batch but before the recorder noted it: the batch would then be written
twice, or half of it lost. While :class:`SignalsHeld` is active the Python
handlers of the stop signals only remember what arrived; leaving it calls them,
so the exception is raised at the first safe point after the write. A second
signal while held is handled at once (a second Ctrl-C stops a hung write).

Only handlers that are Python callables are touched (``SIG_DFL``/``SIG_IGN`` are
left alone), only in the main thread (other threads never run them), and they
are put back as they were.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)

Handler = Callable[[int, "FrameType | None"], Any]


class SignalsHeld:
    """``with SignalsHeld(): ...``: stop signals arriving inside are raised on exit."""

    __slots__ = ("active", "caught", "saved")

    def __init__(self) -> None:
        self.active = False
        self.caught: list[tuple[Handler, int, FrameType | None]] = []
        self.saved: list[tuple[int, Handler, Handler]] = []

    def __enter__(self) -> SignalsHeld:
        if threading.current_thread() is not threading.main_thread():
            return self
        self.active = True
        for signum in _SIGNALS:
            handler = signal.getsignal(signum)
            if callable(handler):
                wrapper = self._wrap(handler)
                signal.signal(signum, wrapper)
                self.saved.append((signum, handler, wrapper))
        return self

    def _wrap(self, handler: Handler) -> Handler:
        def held(signum: int, frame: FrameType | None) -> Any:
            if self.active and not self.caught:
                self.caught.append((handler, signum, frame))
                return None
            return handler(signum, frame)  # released, or a second signal: at once

        return held

    def __exit__(self, *exc: object) -> None:
        # From here on the wrappers forward at once, so a signal landing while the
        # handlers are being put back is not lost either.
        self.active = False
        for signum, handler, wrapper in self.saved:
            if signal.getsignal(signum) is wrapper:
                signal.signal(signum, handler)
        caught, self.caught = self.caught, []
        for handler, signum, frame in caught:
            handler(signum, frame)  # typically raises: the stop request, delivered now
