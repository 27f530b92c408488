"""``console``: a line of the latest scalars every N steps, on stderr (rich)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import Backend, StepRecord


def _format(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


class ConsoleBackend(Backend):
    """Prints ``step 1200  loss 0.3100  val/acc 0.9`` for every ``every``-th committed
    step that has scalars, and the last one at close (so the final values show)."""

    name = "console"

    def __init__(self, every: int = 100) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self._console: Any = None
        self._unprinted: StepRecord | None = None

    def open(self, output_dir: Path) -> None:
        pass

    def _print(self, record: StepRecord) -> None:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)
        fields = "  ".join(f"[bold]{tag}[/bold] {_format(v)}" for tag, v in record.scalars.items())
        self._console.print(f"step {record.step}  {fields}", markup=True, soft_wrap=True)

    def write_steps(self, records: Sequence[StepRecord]) -> None:
        for record in records:
            if not record.scalars:
                continue
            if record.step % self.every == 0:
                self._print(record)
                self._unprinted = None
            else:
                self._unprinted = record

    def write_step(self, record: StepRecord) -> None:
        self.write_steps([record])

    def close(self) -> None:
        if self._unprinted is not None:
            self._print(self._unprinted)
            self._unprinted = None
