"""``memory``: keeps every committed step in a list — for tests and notebooks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .base import Backend, RunInfo, StepRecord


class MemoryBackend(Backend):
    """Stores what it is given; ``records``, ``runs``, ``ended``, ``closed`` are public."""

    name = "memory"

    def __init__(self) -> None:
        self.output_dir: Path | None = None
        self.records: list[StepRecord] = []
        self.runs: list[RunInfo] = []
        self.ended: list[str] = []
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

    def start_run(self, run: RunInfo) -> None:
        self.runs.append(run)

    def end_run(self, status: str) -> None:
        self.ended.append(status)

    def close(self) -> None:
        self.closed = True

    def scalars(self, tag: str) -> list[tuple[int, float]]:
        """``(step, value)`` of every committed value of ``tag``."""
        return [(r.step, r.scalars[tag]) for r in self.records if tag in r.scalars]
