"""The process-wide state a run changes, put back when the run ends.

``exp.run()`` in a notebook (or a test) runs many experiments in one process, so the
run's logging set-up, torch's determinism switches and the signal handlers that the run
or its main function installed must not outlive it.

While a run goes, the objects that exist when it starts (torch's modules and the user's)
are frozen out of the garbage collector's reach (:func:`frozen_heap`).
"""

from __future__ import annotations

import contextlib
import gc
import signal
import threading
from collections.abc import Callable, Iterator

from . import progress, seeding

__all__ = ["frozen_heap", "run_globals"]

# Handlers a run, torch's launcher or a main function may replace.
_SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
    if hasattr(signal, name)
)


@contextlib.contextmanager
def run_globals(*, debug: bool) -> Iterator[None]:
    """Set up the run's logging; on exit restore logging, torch's flags and signal handlers.

    Enter it before the run installs its own signal handlers, so those are undone too.
    """
    restore_signals = _snapshot_signals()
    restore_torch = seeding.snapshot_determinism()
    restore_logging = progress.configure_logging(debug)
    try:
        yield
    finally:
        try:
            restore_logging()
            restore_torch()
        finally:
            restore_signals()


def _snapshot_signals() -> Callable[[], None]:
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # handlers can only be set from the main thread
    saved = {signum: signal.getsignal(signum) for signum in _SIGNALS}

    def restore() -> None:
        for signum, handler in saved.items():
            # None: installed outside Python, nothing we could put back.
            if handler is not None and signal.getsignal(signum) is not handler:
                signal.signal(signum, handler)

    return restore


@contextlib.contextmanager
def frozen_heap(*, ends_process: bool = False) -> Iterator[None]:
    """``gc.freeze()`` for the run: the collector then skips what existed before it.

    With torch imported, one full collection walks ~165k objects (~0.1 s here), and the
    run's own start-up allocations are enough to set one off; forked DataLoader workers
    would also copy every page the collector touches. At the end the objects go back to
    the collector (``gc.unfreeze()``), unless the process ends with the run
    (``ends_process``): then they stay frozen and the interpreter's exit does not walk
    them once more (a plain Python exit leaves objects alive at exit unfinalized too).
    A heap that someone else froze is left as it is.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        if not ends_process:
            gc.unfreeze()
