"""What the run shows while it goes: the loop's progress and the run's logging set-up."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator


def progress(n: int, desc: str, *, start: int, enabled: bool) -> Iterator[int]:
    """Yield ``start..n-1`` with a rich bar on a terminal and a plain line per step elsewhere."""
    if not enabled:
        yield from range(start, n)
        return
    if sys.stderr.isatty():
        from rich.progress import Progress

        with Progress(transient=False) as bar:
            task = bar.add_task(desc or "loop", total=n, completed=start)
            for i in range(start, n):
                yield i
                bar.advance(task)
        return
    began = time.monotonic()
    for i in range(start, n):
        yield i
        print(f"{desc or 'loop'} {i + 1}/{n} ({time.monotonic() - began:.1f}s)", file=sys.stderr)


def configure_logging(debug: bool) -> Callable[[], None]:
    """Log the run's records at INFO (DEBUG with ``--debug``); returns what undoes it."""
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    level = logging.DEBUG if debug else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root.setLevel(level)

    def restore() -> None:
        for handler in root.handlers[:]:
            if handler not in saved_handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(saved_level)

    return restore
