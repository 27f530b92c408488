"""The recorder: scalars, text, histograms and images of a run, step by step.

``context.recorder`` in a run, or standalone::

    with ps.Recorder("out/run1", backends=["tensorboard", "jsonl"]) as rec:
        for batch in data:
            rec.scalar("loss", loss)     # python/numpy number or 1-element tensor (CPU or GPU)
            rec.step()                   # commits the step under global_step, then advances it

How it stays fast: values of a step go into a dict; :meth:`Recorder.step` puts
one record per step on a deque; every ``batch_steps`` steps (or ``flush_secs``
seconds, 0.2 by default, by a small thread) each backend writes the batch with one ``write()``
(tensorboard: one event per step). Memory is bounded by one batch. GPU tensors
are kept (as a clone, so later in-place updates do not change them) and
converted when the batch is written, one transfer per batch: no sync per call.

Tags: every character outside ``A-Z a-z 0-9 _ . / -`` becomes ``_`` and leading
``/`` are removed (``"val acc"`` -> ``"val_acc"``), the same for every backend;
each renamed tag is logged once; two tags that become the same name are an
error. ``step`` and ``time`` are reserved.

Interruptions: a step is committed by one C-level deque append, and batches are
written with stop signals held back (:mod:`pystematic.interrupts`), so a Ctrl-C or SIGTERM
landing anywhere leaves every committed step written exactly once, under its own
index, in every backend. A backend that fails (a full disk) raises in the
training loop instead of being dropped quietly.

A run's lifecycle, for backends that show runs (TensorBoard's HParams, MLflow):
:meth:`Recorder.start_run` with the parameters, steps, :meth:`Recorder.end_run`
with the final status, :meth:`Recorder.close`.

Only rank 0 writes; on other ranks every call is a no-op except that
``reduce=...`` takes part in the all-reduce (all ranks must make that call).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import operator
import re
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from time import time as _now
from typing import Any, cast

from .. import collectives
from ..errors import ConfigError, ParameterError, did_you_mean
from ..interrupts import held
from .base import END_STATUSES, Backend, Item, RunInfo, StepRecord
from .console import ConsoleBackend
from .jsonl import JsonlBackend
from .memory import MemoryBackend
from .tensorboard import TensorBoardBackend

__all__ = [
    "BACKENDS",
    "Backend",
    "ConsoleBackend",
    "Item",
    "JsonlBackend",
    "MemoryBackend",
    "Recorder",
    "RunInfo",
    "StepRecord",
    "TensorBoardBackend",
    "check_backends",
    "sanitize_tag",
]

_log = logging.getLogger("pystematic.recording")

RESERVED_TAGS = frozenset({"step", "time"})
REDUCE_OPS = ("mean", "sum", "min", "max")

_BAD_TAG_CHARS = re.compile(r"[^A-Za-z0-9_./-]")
_INF = math.inf
_new_tuple = tuple.__new__  # StepRecord(...) without NamedTuple's Python-level __new__


def sanitize_tag(tag: str) -> str:
    """The tag as recorded: characters outside ``A-Za-z0-9_./-`` -> ``_``, no leading ``/``."""
    return _BAD_TAG_CHARS.sub("_", tag).lstrip("/") or "_"


def _mlflow_backend(**settings: Any) -> Backend:
    """``[mlflow]`` settings: ``tracking_uri``; the runner adds ``root`` (the project's)."""
    from .mlflow import MlflowBackend  # imports mlflow itself only when a run starts

    unknown = sorted(set(settings) - {"tracking_uri", "root"})
    if unknown:
        raise ConfigError(f"[mlflow]: unknown setting(s) {', '.join(unknown)}; known: tracking_uri")
    return MlflowBackend(**settings)


#: Backend names accepted by ``Recorder(backends=[...])``, ``recorder = [...]`` and
#: ``--recorder``: a callable taking the backend's settings (its config table) as keywords.
BACKENDS: dict[str, Callable[..., Backend]] = {
    "tensorboard": TensorBoardBackend,
    "jsonl": JsonlBackend,
    "console": ConsoleBackend,
    "memory": MemoryBackend,
    "mlflow": _mlflow_backend,
}
#: Backends that need an optional extra: name -> (module to import, the extra).
EXTRAS = {"mlflow": ("mlflow", "mlflow")}


def check_backends(names: Sequence[str]) -> None:
    """Refuse unknown backend names and backends whose extra is not installed (a
    one-line :class:`ParameterError`), without importing anything: called before
    a run folder is made."""
    for entry in [names] if isinstance(names, str) else names:
        name = entry.strip().lower()
        if name not in BACKENDS:
            known = sorted(BACKENDS)
            hint = did_you_mean(name, known)
            raise ParameterError(
                f"unknown recorder backend {entry!r}{hint} (known: {', '.join(known)})"
            )
        if name in EXTRAS:
            module, extra = EXTRAS[name]
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                raise ParameterError(
                    f"the {name!r} recorder backend needs {module}: "
                    f"pip install 'pystematic[{extra}]'"
                )


def _make_backends(
    backends: Sequence[str | Backend], settings: Mapping[str, Mapping[str, Any]]
) -> list[Backend]:
    if isinstance(backends, (str, Backend)):
        backends = [backends]
    made: list[Backend] = []
    seen: set[str] = set()
    for entry in backends:
        if isinstance(entry, Backend):
            made.append(entry)
        elif isinstance(entry, str):
            check_backends([entry])
            name = entry.strip().lower()
            if name not in seen:
                seen.add(name)
                made.append(BACKENDS[name](**dict(settings.get(name) or {})))
        else:
            raise TypeError(
                f"a recorder backend is a name or a Backend, not {type(entry).__name__}"
            )
    return made


def _resolve_tensors(records: Sequence[StepRecord], nonfinite: Callable[[str], None]) -> None:
    """Replace tensor values (GPU values kept by ``scalar``) with floats: one stacked
    transfer per device for the whole batch, instead of one sync per value."""
    found: list[tuple[dict[str, Any], str, Any]] = []
    for record in records:
        for tag, value in record.scalars.items():
            if type(value) is not float:
                found.append((record.scalars, tag, value))
    if not found:
        return
    import torch

    by_device: dict[Any, list[tuple[dict[str, Any], str, Any]]] = {}
    for entry in found:
        by_device.setdefault(entry[2].device, []).append(entry)
    for entries in by_device.values():
        stacked = torch.stack([t.reshape(()).to(torch.float64) for _, _, t in entries])
        values = stacked.cpu().tolist()
        for i, (scalars, tag, _) in enumerate(entries):
            value = scalars[tag] = values[i]
            if not -_INF < value < _INF:
                nonfinite(tag)


class _Writer:
    """Owns the backends on rank 0: the queue of steps, written in batches.

    The queue holds the committed steps (:class:`StepRecord`), then the *open*
    one (a list ``[step, 0.0, scalars, items]`` the values are being added to) at
    its right end: :meth:`Recorder.step` stamps the open record and commits it by
    appending the next open one, one C call, so a signal lands either before the
    commit or after it, never in between; ``global_step`` is the open record's
    step, so it cannot drift from what was committed.

    The training loop writes a batch itself each ``batch_steps`` steps (measured:
    ~30% faster than handing batches to a thread, which competes for the GIL and
    for the 2 cores of a CI machine); a daemon thread writes what is committed
    every ``flush_secs``, so a stalled loop (a long evaluation) or a hard crash
    loses at most that much. Backend calls happen under ``io_lock``, in commit
    order, with stop signals held back in the main thread (:mod:`pystematic.interrupts`): a
    record leaves the queue only after every backend wrote it, and ``done``
    remembers how far each backend got, so an interrupt neither loses nor
    duplicates steps. A backend that raises is called no more and its exception
    is raised in the training loop (at once, or at its next call when the thread
    met it). The thread holds only a weak reference to its :class:`Recorder`: a
    recorder dropped without ``close()`` is still written out.
    """

    def __init__(
        self,
        owner: Recorder,
        backends: list[Backend],
        queue: deque[Any],
        *,
        batch_steps: int,
        flush_secs: float,
    ) -> None:
        self.owner = weakref.ref(owner)
        self.backends = backends
        self.queue = queue
        self.batch_steps = batch_steps
        self.flush_secs = flush_secs
        self.io_lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = False
        self.closed = False
        self.thread: threading.Thread | None = None
        self.has_tensors = False  # set once a deferred tensor value was recorded
        self.failed: set[int] = set()
        self.error: BaseException | None = None  # a backend's failure not yet raised
        self.popped = 0  # records taken off the queue so far
        self.done = {id(b): 0 for b in backends}  # records each backend has written
        self.last: dict[str, Any] = {}  # the last written value of each tag

    def start(self) -> None:
        self.thread = threading.Thread(
            target=self._run, name="pystematic-recorder-flush", daemon=True
        )
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping:
            self.wake.wait(self.flush_secs)
            orphaned = self.owner() is None
            try:
                with self.io_lock:
                    if orphaned:
                        _seal(self.queue)
                    self._drain_locked()
            except Exception as e:  # never let the thread die silently
                self._failure(e, "the recorder's writer thread")
            if orphaned:
                self.close()
                return

    def drain(self) -> None:
        """Hand every committed step to the backends, a batch at a time."""
        with held(), self.io_lock:
            self._drain_locked()
        if self.error is not None:
            self.raise_error()

    def _drain_locked(self) -> None:
        queue = self.queue
        while True:
            # the last record is the open step; indexing, not iterating: the loop may
            # append (or stamp the open record) while the thread drains
            n = min(len(queue) - 1, self.batch_steps)
            if n <= 0:
                return
            batch = [queue[i] for i in range(n)]
            if self.has_tensors:
                _resolve_tensors(batch, self._nonfinite)
            start, end = self.popped, self.popped + n
            for backend in self.backends:
                skip = self.done[id(backend)] - start
                if skip < n:
                    self._call_one(backend, "write_steps", batch[skip:] if skip else batch)
                    self.done[id(backend)] = end
            last = self.last
            for record in batch:
                last.update(record[2])
            for _ in range(n):
                queue.popleft()
            self.popped = end

    def _nonfinite(self, tag: str) -> None:
        owner = self.owner()
        if owner is not None:
            owner._warn_nonfinite(tag)

    def _call_one(self, backend: Backend, method: str, *args: Any) -> None:
        if id(backend) in self.failed:
            return
        try:
            getattr(backend, method)(*args)
        except Exception as e:
            self.failed.add(id(backend))
            self._failure(e, f"recorder backend {backend.name!r} in {method}()")

    def _failure(self, error: Exception, where: str) -> None:
        # The first failure is raised in the training loop, where it says where it came
        # from; later ones (the same full disk, seen by the other backends) only go to
        # the debug log.
        _log.debug("%s failed: %s; it records nothing more in this run", where, error)
        if self.error is None:
            if hasattr(error, "add_note"):  # Python 3.11+
                error.add_note(f"({where}; it records nothing more in this run)")
            self.error = error

    def raise_error(self) -> None:
        """Raise a backend's failure in the caller (the training loop), once."""
        error, self.error = self.error, None
        if error is not None:
            raise error

    def call(self, method: str, *args: Any) -> None:
        """Write every committed step, then call ``method`` on every backend."""
        with held(), self.io_lock:
            self._drain_locked()
            for backend in self.backends:
                self._call_one(backend, method, *args)
        if self.error is not None:
            self.raise_error()

    def close(self) -> None:
        if self.closed:
            return
        with held():
            self.stopping = True
            self.wake.set()
            thread = self.thread
            if thread is not None and thread is not threading.current_thread():
                thread.join()
            with self.io_lock:
                if not self.closed:
                    self.closed = True
                    self._drain_locked()
                    for backend in self.backends:
                        self._call_one(backend, "close")
        if self.error is not None and threading.current_thread() is not self.thread:
            self.raise_error()


def _seal(queue: deque[Any]) -> None:
    """Commit the open record if it holds values (close, or a dropped recorder)."""
    step, _, scalars, items = queue[-1]
    if scalars or items:
        queue[-1] = StepRecord(step, _now(), scalars, items)
        queue.append([step + 1, 0.0, {}, []])


class Recorder:
    """Records scalars (and text, histograms, images, figures) of a run, step by step.

    :param output_dir: the run dir; tensorboard writes ``<dir>/tensorboard/``, jsonl
        ``<dir>/metrics.jsonl``.
    :param backends: names from :data:`BACKENDS` or :class:`Backend` instances.
    :param rank: this process's global rank; only rank 0 writes.
    :param world_size: number of ranks (``reduce=`` all-reduces when > 1).
    :param global_step: the first step's number (resume).
    :param flush_secs: committed steps reach the backends at least this often
        (seconds): what a hard crash (segfault, ``os._exit``) can lose at most.
    :param batch_steps: steps per batch handed to the backends (bounds memory).
    :param settings: per-backend settings (``{"mlflow": {"tracking_uri": ...}}``,
        the config's tables), handed to the backends that take them.
    """

    def __init__(
        self,
        output_dir: str | Path,
        backends: Sequence[str | Backend] = ("tensorboard", "jsonl"),
        *,
        rank: int = 0,
        world_size: int = 1,
        global_step: int = 0,
        flush_secs: float = 0.2,
        batch_steps: int = 1024,
        settings: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self._output_dir = Path(output_dir)
        self._backends = _make_backends(backends, settings or {})
        self._rank = rank
        self._world_size = world_size
        # rank 0: committed steps, then the open one (see _Writer); other ranks count
        # committed StepRecords, then the open step as a list [step, 0.0, scalars, items]
        self._queue: deque[Any] = deque()
        self._step = 0
        self._pending: dict[str, Any] = {}
        self._items: list[Item] = []
        self._keys: dict[str, str] = {}  # tag as given -> tag as recorded
        self._origins: dict[str, str] = {}  # tag as recorded -> the tag given first
        self._warned: set[tuple[str, str]] = set()
        self._closed = False
        self._started = False
        self._ended = False
        self._writer: _Writer | None = None
        if rank == 0:
            self._queue.append([0, 0.0, self._pending, self._items])
            for backend in self._backends:
                backend.open(self._output_dir)
            self._writer = _Writer(
                self,
                self._backends,
                self._queue,
                batch_steps=max(1, batch_steps),
                flush_secs=flush_secs,
            )
        self.global_step = global_step
        # Only rank 0 of an open recorder records; everything else short-circuits on this.
        self._writes = rank == 0

    # -- properties -------------------------------------------------------------------

    @property
    def output_dir(self) -> Path:
        return self._output_dir

    @property
    def backends(self) -> tuple[Backend, ...]:
        return tuple(self._backends)

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def global_step(self) -> int:
        """The step the next :meth:`step` commits (starts at 0; settable for resume)."""
        queue = self._queue
        return queue[-1][0] if queue else self._step

    @global_step.setter
    def global_step(self, value: int) -> None:
        step = operator.index(value)
        if step < 0:
            raise ValueError(f"global_step must be >= 0, got {step}")
        queue = self._queue
        if queue:
            _, _, pending, items = queue[-1]
            queue[-1] = [step, 0.0, pending, items]
        else:
            self._step = step

    @property
    def last_scalars(self) -> dict[str, float]:
        """The last committed value of each scalar tag (empty on ranks other than 0)."""
        writer = self._writer
        if writer is None:
            return {}
        with writer.io_lock:  # the written values, then the committed ones not yet written
            last = dict(writer.last)
            committed = list(self._queue)[:-1]
        for record in committed:
            last.update(record[2])
        return {k: v if type(v) is float else float(v) for k, v in last.items()}

    # -- recording --------------------------------------------------------------------

    def scalar(self, tag: str, value: Any, *, reduce: str | None = None) -> None:
        """Add a scalar to the current step (the last value wins if added twice).

        ``value``: a Python or numpy number, or a one-element torch tensor. With
        ``reduce="mean"`` (or ``"sum"``, ``"min"``, ``"max"``) the value is first
        all-reduced across ranks; every rank must then make the same call.
        """
        if reduce is not None:
            value = self._reduce([value], reduce)[0]
        if not self._writes:
            if self._closed:
                self._warn_closed()
            return
        key = self._keys.get(tag)
        if key is None:
            key = self._new_key(tag)
        if type(value) is not float:
            value = self._convert(key, value)
        elif not -_INF < value < _INF:
            self._warn_nonfinite(key)
        pending = self._pending
        if key in pending:
            self._warn_once(
                "duplicate", key, "tag %r was added twice in one step; the last value is kept", key
            )
        pending[key] = value

    def scalars(self, mapping: Mapping[str, Any], *, reduce: str | None = None) -> None:
        """:meth:`scalar` for each item; with ``reduce``, one all-reduce for all of them
        (ranks must pass the same keys)."""
        if reduce is not None:
            keys = sorted(mapping)
            reduced = self._reduce([mapping[k] for k in keys], reduce)
            mapping = {k: reduced[i] for i, k in enumerate(keys)}
        if not self._writes:
            if self._closed:
                self._warn_closed()
            return
        scalar = self.scalar
        for tag, value in mapping.items():
            scalar(tag, value)

    def text(self, tag: str, s: str) -> None:
        """Add a text (Markdown in TensorBoard) to the current step; tensorboard only."""
        if self._writes:
            self._add_item(Item("text", self._key(tag), str(s)))
        elif self._closed:
            self._warn_closed()

    def histogram(self, tag: str, values: Any, *, bins: int = 64) -> None:
        """Add a histogram of ``values`` (any shape; non-finite values are left out)."""
        if not self._writes:
            if self._closed:
                self._warn_closed()
            return
        import numpy as np

        key = self._key(tag)
        arr = _to_numpy(values).astype(np.float64).reshape(-1)
        finite = np.isfinite(arr)
        if not finite.all():
            self._warn_once("histogram", key, "histogram %r: non-finite values left out", key)
            arr = arr[finite]
        if arr.size == 0:
            self._warn_once("empty", key, "histogram %r: no finite values, not recorded", key)
            return
        self._add_item(Item("histogram", key, arr, {"bins": int(bins)}))

    def image(self, tag: str, tensor: Any, dataformats: str = "CHW") -> None:
        """Add an image: ``uint8`` in [0, 255] or float in [0, 1]; ``dataformats`` is
        ``"CHW"``, ``"HWC"`` or ``"HW"`` with 1, 3 or 4 channels."""
        if self._writes:
            self._add_item(Item("image", self._key(tag), _to_hwc_uint8(tensor, dataformats)))
        elif self._closed:
            self._warn_closed()

    def figure(self, tag: str, fig: Any, *, close: bool = True) -> None:
        """Add a matplotlib figure as an image (rendered with Agg); closes it by default."""
        if self._writes:
            from matplotlib.backends.backend_agg import FigureCanvasAgg

            canvas = FigureCanvasAgg(fig)
            canvas.draw()
            import numpy as np

            rgb = np.asarray(canvas.buffer_rgba())[..., :3].copy()
            self._add_item(Item("image", self._key(tag), rgb))
        elif self._closed:
            self._warn_closed()
        if close and "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close(fig)

    def step(self) -> None:
        """Commit what was added since the last step under ``global_step``; advance it."""
        if not self._writes:
            if self._closed:
                self._warn_closed()
            else:
                self._step += 1
            return
        writer = self._writer
        assert writer is not None
        if writer.error is not None:
            writer.raise_error()
        queue = self._queue
        tail = queue[-1]
        step, _, pending, items = tail
        if pending is not self._pending:  # a step() interrupted right after its commit
            self._reopen()
        if pending or items:
            queue[-1] = _new_tuple(StepRecord, (step, _now(), pending, items))  # still open
            new_pending: dict[str, Any] = {}
            new_items: list[Item] = []
            # the commit: one C call, so a signal lands before or after it
            queue.append([step + 1, 0.0, new_pending, new_items])
            self._pending = new_pending
            self._items = new_items
            if len(queue) > writer.batch_steps:
                writer.drain()
            elif writer.thread is None:
                writer.start()
        elif type(tail) is list:
            tail[0] = step + 1
        else:
            queue[-1] = [step + 1, 0.0, pending, items]

    # -- lifecycle ---------------------------------------------------------------------

    def start_run(
        self,
        params: Mapping[str, Any],
        *,
        run_id: str | None = None,
        experiment: str | None = None,
        tags: Sequence[str] = (),
        git_commit: str | None = None,
        resumed: bool = False,
    ) -> None:
        """Tell the backends a run starts: its parameters (TensorBoard's HParams session
        start, MLflow's params) and what identifies it. Once, before the first step;
        rank 0 writes. ``run_id`` defaults to the output folder's name."""
        if self._writer is None or self._closed or self._started:
            return
        self._started = True
        info = RunInfo(
            params=dict(params),
            run_id=run_id or self._output_dir.name,
            experiment=experiment or "",
            run_dir=self._output_dir,
            start_time=_now(),
            tags=tuple(tags),
            git_commit=git_commit,
            resumed=resumed,
        )
        self._writer.call("start_run", info)

    def end_run(self, status: str) -> None:
        """Write every step, then tell the backends the run ended with ``status``
        (``"completed"``, ``"failed"`` or ``"interrupted"``). Call before :meth:`close`.

        Raises what a backend raised while writing (a full disk): the caller then ends
        the run as failed, calling ``end_run("failed")`` again (once a backend failed,
        it is skipped)."""
        if status not in END_STATUSES:
            raise ValueError(f"status must be one of {', '.join(END_STATUSES)}, got {status!r}")
        writer = self._writer
        if writer is None or self._closed or self._ended:
            return
        with held():
            _seal(self._queue)
            self._reopen()
            writer.call("flush")
            writer.call("end_run", status)
            self._ended = True

    def flush(self) -> None:
        """Write every committed step and make it durable (fsync)."""
        if self._writer is not None and not self._closed:
            self._writer.call("flush")

    def truncate(self, step: int) -> None:
        """Resume at ``step``: backends forget steps ``>= step`` (metrics.jsonl lines are
        dropped, tensorboard points removed and purged, a torn last line and leftover
        temporary files removed); ``global_step`` becomes ``step``."""
        self.global_step = step
        if self._writer is not None and not self._closed:
            self._writer.call("truncate", self.global_step)

    def close(self) -> None:
        """Commit values added since the last step, write everything, close the backends.

        Idempotent. Calls after it are ignored with one warning. Raises what a backend
        raised while writing, if that was not raised yet.
        """
        if self._closed:
            return
        with held():
            writes = self._writes
            self._writes = False
            self._closed = True
            if writes and self._writer is not None:
                _seal(self._queue)
                self._writer.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        """Ends a started run (completed, failed, or interrupted on Ctrl-C/SystemExit),
        then closes."""
        try:
            if self._started and not self._ended:
                if exc_type is None:
                    self.end_run("completed")
                elif issubclass(exc_type, Exception):
                    self.end_run("failed")
                else:
                    self.end_run("interrupted")
        finally:
            self.close()

    # -- helpers ----------------------------------------------------------------------

    def _reopen(self) -> None:
        """Point ``scalar()`` and friends at the open record's containers again."""
        _, _, pending, items = self._queue[-1]
        self._pending, self._items = pending, cast("list[Item]", items)

    def _key(self, tag: str) -> str:
        key = self._keys.get(tag)
        return key if key is not None else self._new_key(tag)

    def _new_key(self, tag: str) -> str:
        if not isinstance(tag, str):
            raise TypeError(f"a tag is a str, not {type(tag).__name__}")
        key = sanitize_tag(tag)
        if tag in RESERVED_TAGS or key in RESERVED_TAGS:
            raise ValueError(f"{tag!r} is reserved: metrics.jsonl uses 'step' and 'time' itself")
        origin = self._origins.setdefault(key, tag)
        if origin != tag:
            raise ValueError(
                f"tags {origin!r} and {tag!r} are both recorded as {key!r}"
                " (TensorBoard's tag characters): rename one"
            )
        if key != tag:
            self._warn_once(
                "tag", tag, "tag %r is recorded as %r (TensorBoard's tag characters)", tag, key
            )
        self._keys[tag] = key
        return key

    def _convert(self, key: str, value: Any) -> Any:
        """A float, or a clone of a non-CPU tensor (converted later, in a batch)."""
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise TypeError(f"scalar {key!r}: a tensor with {value.numel()} elements")
            if value.device.type != "cpu":
                assert self._writer is not None
                self._writer.has_tensors = True
                return value.detach().clone()  # async: no sync, and safe from in-place updates
            value = value.item()
        elif isinstance(value, (str, bytes)):
            raise TypeError(f"scalar {key!r}: expected a number, got {type(value).__name__}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"scalar {key!r}: expected a number or a one-element tensor,"
                f" got {type(value).__name__}"
            ) from None
        if not -_INF < number < _INF:
            self._warn_nonfinite(key)
        return number

    def _add_item(self, item: Item) -> None:
        items = self._items
        for i, old in enumerate(items):
            if old.kind == item.kind and old.tag == item.tag:
                self._warn_once(
                    "duplicate",
                    item.tag,
                    "tag %r was added twice in one step; the last value is kept",
                    item.tag,
                )
                items[i] = item
                return
        items.append(item)

    def _reduce(self, values: list[Any], op: str) -> list[Any]:
        if op not in REDUCE_OPS:
            raise ValueError(f"reduce must be one of {', '.join(REDUCE_OPS)}, got {op!r}")
        if self._world_size <= 1 or self._closed:
            return values
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
            self._warn_once(
                "reduce", "", "reduce=%r without a process group: values are not reduced", op
            )
            return values
        device = next(
            (v.device for v in values if isinstance(v, torch.Tensor) and v.device.type != "cpu"),
            None,
        )
        if device is None:
            device = (
                torch.device("cuda", torch.cuda.current_device())
                if dist.get_backend() == "nccl"
                else torch.device("cpu")
            )
        tensor = torch.stack(
            [torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in values]
        )
        ops = {"mean": dist.ReduceOp.SUM, "sum": dist.ReduceOp.SUM}
        ops.update(min=dist.ReduceOp.MIN, max=dist.ReduceOp.MAX)
        collectives.all_reduce(tensor, ops[op])
        if op == "mean":
            tensor /= dist.get_world_size()
        if device.type == "cpu":
            return list(tensor.tolist())
        return list(tensor.unbind())

    def _warn_once(self, kind: str, tag: str, msg: str, *args: Any) -> None:
        if (kind, tag) not in self._warned:
            self._warned.add((kind, tag))
            _log.warning(msg, *args)

    def _warn_nonfinite(self, tag: str) -> None:
        self._warn_once("nonfinite", tag, "scalar %r is not finite (recorded as such)", tag)

    def _warn_closed(self) -> None:
        self._warn_once(
            "closed", "", "the recorder is closed: values recorded after close() are dropped"
        )


def _to_numpy(values: Any) -> Any:
    import numpy as np

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(values, torch.Tensor):
        values = values.detach()
        if values.dtype in (torch.bfloat16, torch.float16):
            values = values.float()
        return values.cpu().numpy().copy()
    return np.array(values, copy=True)


def _to_hwc_uint8(tensor: Any, dataformats: str) -> Any:
    import numpy as np

    arr = _to_numpy(tensor)
    fmt = dataformats.upper()
    if fmt == "HW" and arr.ndim == 2:
        arr = arr[:, :, None]
    elif fmt == "CHW" and arr.ndim == 3:
        arr = arr.transpose(1, 2, 0)
    elif not (fmt == "HWC" and arr.ndim == 3):
        raise ValueError(f"image: shape {arr.shape} does not match dataformats {dataformats!r}")
    if arr.shape[2] == 1:
        arr = np.concatenate([arr, arr, arr], axis=2)
    if arr.shape[2] not in (3, 4):
        raise ValueError(f"image: {arr.shape[2]} channels (1, 3 or 4 expected)")
    if arr.dtype != np.uint8:
        arr = np.clip(np.nan_to_num(arr.astype(np.float64)) * 255.0, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)
