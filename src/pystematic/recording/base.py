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
fraction of a second), only on rank 0, and only after :meth:`Backend.open`.
An exception a backend raises reaches the training loop (from the next
``step()``, ``flush()`` or ``close()``), so a full disk fails the run instead
of going unnoticed; that backend is then called no more.

A run's lifecycle: :meth:`Backend.start_run` once when it starts (with its
parameters), steps, :meth:`Backend.end_run` with the final status, then
:meth:`Backend.close`. A standalone :class:`~pystematic.recording.Recorder`
without ``start_run()`` only sees steps.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, NamedTuple

#: The final statuses a run can end with (``Recorder.end_run``).
END_STATUSES = ("completed", "failed", "interrupted")


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


@dataclass(frozen=True)
class RunInfo:
    """What a backend learns when a run starts (:meth:`Backend.start_run`)."""

    #: every parameter of the run (the snapshot in parameters.toml); values may be nested
    params: Mapping[str, Any]
    #: the run's id (its folder's name)
    run_id: str
    #: the experiment's id (``train``, ``vision.fit``)
    experiment: str
    #: the run's folder
    run_dir: Path
    #: wall time (``time.time()``) of the start
    start_time: float
    #: the ``--tag`` values
    tags: tuple[str, ...] = ()
    #: the git commit of the code, when known
    git_commit: str | None = None
    #: True when the run continues an earlier one (``--resume``)
    resumed: bool = False


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

    def start_run(self, run: RunInfo) -> None:
        """A run starts (or resumes): record its parameters and what identifies it."""

    def end_run(self, status: str) -> None:
        """The run ended with ``status``: ``"completed"``, ``"failed"`` or
        ``"interrupted"``. Every step was handed to :meth:`write_steps` before."""

    def close(self) -> None:
        """Flush and release files. Called once."""


def write_all(f: IO[bytes], data: bytes) -> None:
    """Write every byte to an unbuffered file, or none: a short write (a file size limit, a
    disk filling up) is followed by another, which raises the OS error, and the file is cut
    back to where it was, so it never ends in half a record."""
    start = f.tell()
    view = memoryview(data)
    try:
        while view:
            n = f.write(view)
            if not n:
                raise OSError(f"{getattr(f, 'name', 'file')}: nothing written")
            view = view[n:]
    except OSError:
        if len(view) < len(data):
            with contextlib.suppress(OSError):
                os.ftruncate(f.fileno(), start)
        raise
