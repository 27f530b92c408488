"""``memory``: keeps every committed step in a list — for tests and notebooks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .base import Backend, StepRecord


class MemoryBackend(Backend):
    """Stores what it is given; ``records``, ``hparams_calls``, ``closed`` are public."""

    name = "memory"

    def __init__(self) -> None:
        self.output_dir: Path | None = None
        self.records: list[StepRecord] = []
        self.hparams_calls: list[tuple[dict[str, Any], dict[str, float]]] = []
        self.truncated_at: list[int] = []
        self.flushes = 0
        self.closed = False

    def open(self, output_dir: Path) -> None:
        self.output_dir = Path(output_dir)

    def write_steps(self, records: Sequence[StepRecord]) -> None:
        self.records.extend(records)

    def write_step(self, record: StepRecord) -> None:
        self.records.append(record)

    def flush(self) -> None:
        self.flushes += 1

    def truncate(self, step: int) -> None:
        self.truncated_at.append(step)
        self.records = [r for r in self.records if r.step < step]

    def hparams(self, params: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        self.hparams_calls.append((dict(params), dict(metrics)))

    def close(self) -> None:
        self.closed = True

    def scalars(self, tag: str) -> list[tuple[int, float]]:
        """``(step, value)`` of every committed value of ``tag``."""
        return [(r.step, r.scalars[tag]) for r in self.records if tag in r.scalars]
