"""The backend seam of the recorder: what a backend receives and must do.

A backend turns committed steps into something durable (a file, a service).
The :class:`~pystematic.recording.Recorder` does everything else: tag checks,
value conversion, buffering, the writer thread, distributed no-ops. To add one,
subclass :class:`Backend` and implement :meth:`Backend.write_step`::

    class PrintBackend(ps.recorder.Backend):
        name = "print"

        def write_step(self, record):
            print(record.step, record.scalars)

    recorder = ps.Recorder(run_dir, backends=["jsonl", PrintBackend()])

Backends are called from one thread at a time (the training loop's when a
batch of steps is full, the recorder's flush thread for what is left every
few seconds), only on rank 0, and only after :meth:`Backend.open`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple


@dataclass(frozen=True)
class Item:
    """A non-scalar value of one step.

    ``kind`` is ``"text"`` (``value`` a ``str``), ``"histogram"`` (a flat, finite
    ``float64`` numpy array; ``options["bins"]`` the bin count) or ``"image"`` (a
    ``uint8`` numpy array in HWC layout with 1, 3 or 4 channels).
    """

    kind: str
    tag: str
    value: Any
    options: Mapping[str, Any] = field(default_factory=dict)


class StepRecord(NamedTuple):
    """One committed step. A NamedTuple, not a dataclass: one is built per step in the
    training loop, and tuple construction is the cheapest record Python has."""

    step: int
    #: wall time (``time.time()``) when :meth:`Recorder.step` committed it
    time: float
    #: tag -> value; values are Python floats (NaN and infinities included)
    scalars: dict[str, float]
    items: Sequence[Item]


class Backend:
    """Base class of recorder backends (``ps.recorder.Backend``).

    Override :meth:`write_step` (or :meth:`write_steps` to take a whole batch at
    once); the other methods have do-nothing defaults. ``name`` is how the
    backend is listed in messages.
    """

    name: ClassVar[str] = "backend"

    def open(self, output_dir: Path) -> None:
        """Called once, on rank 0, when the recorder is created, with the run dir.

        Keep it cheap (remember the path); open files on the first write, so a
        run that records nothing pays nothing.
        """

    def write_step(self, record: StepRecord) -> None:
        """Write one committed step. Steps arrive in commit order."""
        raise NotImplementedError(f"{type(self).__name__} must implement write_step()")

    def write_steps(self, records: Sequence[StepRecord]) -> None:
        """Write a batch of committed steps; by default :meth:`write_step` for each.

        When it returns, the data should have reached the operating system (so a
        crash of the process loses nothing already written).
        """
        for record in records:
            self.write_step(record)

    def flush(self) -> None:
        """Make everything written so far durable (e.g. ``fsync``)."""

    def truncate(self, step: int) -> None:
        """Resume support: forget what was recorded at ``step`` or later."""

    def hparams(self, params: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """Record the run's parameters with its final scalars (end of a run)."""

    def close(self) -> None:
        """Flush and release files. Called once."""
