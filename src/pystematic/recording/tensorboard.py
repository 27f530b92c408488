"""TensorBoard event files in ``<run>/tensorboard/``, one event per committed step.

Scalar events are encoded here directly — an ``Event{wall_time, step,
summary{value{tag, simple_value}}}`` is a few fixed bytes per tag — and framed
as TFRecords (length, masked CRC32C, data, masked CRC32C) in large writes. That
is what makes the recorder ~20x faster than ``SummaryWriter.add_scalar``, whose
cost is a protobuf object plus a multiprocessing queue hand-off per value.
The HParams plugin's session start and end are encoded here too (a run's start
must not pay for importing protobuf); text, histograms and images go through
tensorboardX's summary builders, imported only when first needed.

HParams: each run writes a session start (its parameters) when it starts and a
session end (its status) when it ends, and no experiment summary: TensorBoard
then builds the table from every run under the logdir, marks the parameters
that differ and takes each run's last scalars as its metrics. TensorBoard keeps
the first value of each summary tag of a run, so a resumed run first removes
the session start and end of its earlier attempt.

The bytes equal what protobuf serialises (``tests/test_recording.py`` checks),
and TensorBoard's own reader reads every tag, step and value back.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from .base import Backend, Item, RunInfo, StepRecord, write_all

DIR_NAME = "tensorboard"


def _load_crc32c() -> Callable[[bytes], int]:
    """The C CRC32C of the ``crc32c`` package (a dependency: tensorboardX's pure-Python
    fallback is 3x slower end to end), loaded without the package's ``__init__``, which
    imports ``importlib.metadata`` to look up its own version: ~80 ms of every run's start.
    """
    import importlib.machinery
    import importlib.util

    spec = importlib.util.find_spec("crc32c")  # a top-level package: nothing is imported
    folders = list(spec.submodule_search_locations or []) if spec else []
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for folder in folders:
            path = Path(folder) / f"_crc32c{suffix}"
            if not path.is_file():
                continue
            loader = importlib.machinery.ExtensionFileLoader("crc32c._crc32c", str(path))
            found = importlib.util.spec_from_file_location("crc32c._crc32c", path, loader=loader)
            if found is not None:
                module = importlib.util.module_from_spec(found)
                loader.exec_module(module)
                function: Callable[[bytes], int] = module.crc32c
                return function
    from crc32c import crc32c  # a layout this does not know: the package's own way

    return crc32c


_crc32c = _load_crc32c()

_log = logging.getLogger("pystematic.recording")

_pack_f32 = struct.Struct("<f").pack
_pack_f64 = struct.Struct("<d").pack
_pack_u64 = struct.Struct("<Q").pack
_pack_u32 = struct.Struct("<I").pack
_SMALL_VARINTS = [bytes((i,)) for i in range(128)]


def _varint(n: int) -> bytes:
    if 0 <= n < 128:
        return _SMALL_VARINTS[n]
    n &= 0xFFFFFFFFFFFFFFFF  # int64 on the wire: negative numbers take 10 bytes
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _masked_crc(data: bytes) -> int:
    x = _crc32c(data)
    return (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the data, its masked CRC."""
    header = _pack_u64(len(data))
    return header + _pack_u32(_masked_crc(header)) + data + _pack_u32(_masked_crc(data))


def _f32(value: float) -> bytes:
    try:
        return _pack_f32(value)
    except OverflowError:  # beyond float32's range: what a C cast (and protobuf) gives
        return _pack_f32(math.copysign(math.inf, value))


class ScalarEncoder:
    """Serialises scalar events; caches each tag's fixed bytes."""

    def __init__(self) -> None:
        self._prefix: dict[str, bytes] = {}

    def _tag_prefix(self, tag: str) -> bytes:
        raw = tag.encode("utf-8")
        name = b"\x0a" + _varint(len(raw)) + raw  # Summary.Value.tag = 1
        value_len = len(name) + 5  # + simple_value = 2 (fixed32)
        prefix = b"\x0a" + _varint(value_len) + name + b"\x15"  # Summary.value = 1
        self._prefix[tag] = prefix
        return prefix

    def summary(self, scalars: Mapping[str, float]) -> bytes:
        """The serialised ``Summary`` holding one ``simple_value`` per tag."""
        prefix = self._prefix
        try:
            return b"".join(
                [(prefix.get(t) or self._tag_prefix(t)) + _pack_f32(v) for t, v in scalars.items()]
            )
        except OverflowError:
            return b"".join(
                [(prefix.get(t) or self._tag_prefix(t)) + _f32(v) for t, v in scalars.items()]
            )


def event(step: int, wall_time: float, summary: bytes) -> bytes:
    """A serialised ``Event`` with a summary (field 5)."""
    return (
        b"\x09"
        + _pack_f64(wall_time)
        + b"\x10"
        + _varint(step)
        + b"\x2a"
        + _varint(len(summary))
        + summary
    )


def file_version_event(wall_time: float) -> bytes:
    version = b"brain.Event:2"
    return b"\x09" + _pack_f64(wall_time) + b"\x1a" + _varint(len(version)) + version


def purge_event(step: int, wall_time: float) -> bytes:
    """``SessionLog{status: START}`` at ``step``: TensorBoard then drops older points at
    ``step`` or later (tensorboardX's ``purge_step``)."""
    return b"\x09" + _pack_f64(wall_time) + b"\x10" + _varint(step) + b"\x3a\x02\x08\x01"


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _pb_value(value: bool | int | float | str) -> bytes:
    """A serialised ``google.protobuf.Value``: bool, number or string."""
    if isinstance(value, bool):
        return b"\x20\x01" if value else b"\x20\x00"  # bool_value = 4
    if isinstance(value, (int, float)):
        try:
            return b"\x11" + _pack_f64(float(value))  # number_value = 2
        except OverflowError:  # an int beyond float range
            value = str(value)
    return _field(3, str(value).encode("utf-8"))  # string_value = 3


#: TensorBoard's ``hparams`` Status for each end status of a run. TensorBoard has no
#: "aborted": an interrupted run did not complete, like a failed one (run.json and
#: ``pystematic runs`` tell them apart); a run with no end yet shows as unknown.
HPARAMS_STATUS = {"completed": 1, "failed": 2, "interrupted": 2}  # SUCCESS, FAILURE
SESSION_START_TAG = "_hparams_/session_start_info"
SESSION_END_TAG = "_hparams_/session_end_info"


def _hparams_summary(tag: str, plugin_data: bytes) -> bytes:
    """A serialised ``Summary`` with one value: ``tag`` and hparams plugin metadata."""
    plugin = _field(1, b"hparams") + _field(2, plugin_data)  # PluginData
    metadata = _field(1, plugin)  # SummaryMetadata.plugin_data
    value = _field(1, tag.encode("utf-8")) + _field(9, metadata)  # Summary.Value
    return _field(1, value)


def session_start_summary(hparams: Mapping[str, bool | int | float | str], start: float) -> bytes:
    """``Summary`` holding ``HParamsPluginData{session_start_info{hparams, start_time}}``."""
    entries = b"".join(
        _field(1, _field(1, name.encode("utf-8")) + _field(2, _pb_value(value)))
        for name, value in hparams.items()
    )
    info = entries + b"\x29" + _pack_f64(start)  # start_time_secs = 5
    return _hparams_summary(SESSION_START_TAG, _field(3, info))


def session_end_summary(status: str, end: float) -> bytes:
    """``Summary`` holding ``HParamsPluginData{session_end_info{status, end_time}}``."""
    info = b"\x08" + _varint(HPARAMS_STATUS[status]) + b"\x11" + _pack_f64(end)
    return _hparams_summary(SESSION_END_TAG, _field(4, info))


def _is_hparams_session(data: bytes) -> bool:
    """Whether a serialised Event carries a session start or end (cheap byte test)."""
    return b"_hparams_/session_" in data


def read_records(path: Path) -> Iterator[bytes]:
    """The data of each complete record; a torn tail (a crash mid-write) ends it."""
    with open(path, "rb") as f:
        while True:
            header = f.read(12)
            if len(header) < 12:
                return
            (length,) = struct.unpack("<Q", header[:8])
            data = f.read(length + 4)
            if len(data) < length + 4:
                return
            yield data[:length]


def event_step(data: bytes) -> tuple[int, bool]:
    """(step, is a file_version event) of a serialised Event, without protobuf."""
    i, n, step, is_version = 0, len(data), 0, False

    def varint_at(i: int) -> tuple[int, int]:
        shift = result = 0
        while True:
            b = data[i]
            i += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result, i
            shift += 7

    while i < n:
        key, i = varint_at(i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint_at(i)
            if field == 2:
                step = value - (1 << 64) if value >= 1 << 63 else value
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, i = varint_at(i)
            is_version = is_version or field == 3
            i += length
        else:
            break  # not an Event we understand: keep it
    return step, is_version


def purge_file(path: Path, step: int | None, *, sessions: bool = False) -> int:
    """Rewrite an event file without the events at ``step`` or later (and, with
    ``sessions``, without HParams session starts and ends); returns how many were
    dropped. Readers other than TensorBoard's own ignore purge events, so the points
    are really removed (atomically: a new file replaces the old)."""
    kept: list[bytes] = []
    dropped = 0
    for data in read_records(path):
        event_at, is_version = event_step(data)
        if sessions and _is_hparams_session(data):
            dropped += 1
        elif is_version or step is None or event_at < step:
            kept.append(data)
        else:
            dropped += 1
    size = sum(len(d) + 16 for d in kept)
    if dropped or size != path.stat().st_size:  # also drops a torn tail
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(b"".join(frame(d) for d in kept))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return dropped


def _item_summary(item: Item) -> bytes:
    """Serialised ``Summary.Value`` entries for a non-scalar item, via tensorboardX."""
    from tensorboardX import summary

    if item.kind == "text":
        proto = summary.text(item.tag, item.value)
    elif item.kind == "histogram":
        proto = summary.histogram(item.tag, item.value, bins=item.options.get("bins", 64))
    elif item.kind == "image":
        from tensorboardX.proto.summary_pb2 import Summary

        proto = Summary(value=[Summary.Value(tag=item.tag, image=summary.make_image(item.value))])
    else:
        raise ValueError(f"unknown item kind {item.kind!r}")
    data: bytes = proto.SerializeToString()
    return data


def _hparam_value(value: Any) -> bool | int | float | str:
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif value is not None:
            flat[f"{prefix}{key}"] = _hparam_value(value)
    return flat


class TensorBoardBackend(Backend):
    """Writes ``<run>/tensorboard/events.out.tfevents.<time>.<host>.<n>``."""

    name = "tensorboard"

    def __init__(self) -> None:
        self._dir: Path | None = None
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self._purge_step: int | None = None
        self._encoder = ScalarEncoder()

    @property
    def path(self) -> Path | None:
        """The event file being written (``None`` before the first write)."""
        return self._path

    def open(self, output_dir: Path) -> None:
        self._dir = Path(output_dir) / DIR_NAME

    def _ensure_file(self) -> IO[bytes]:
        if self._file is not None:
            return self._file
        if self._dir is None:
            raise RuntimeError("TensorBoardBackend.open() was not called")
        self._dir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        # <time>.<host>.<n>: files sort in creation order even within one second (a
        # resume), which TensorBoard's reader relies on; n counts the files before it.
        stem = f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}"
        n = sum(1 for _ in self._dir.glob("*tfevents*"))
        while True:
            path = self._dir / f"{stem}.{n:04d}"
            try:
                # unbuffered: one write() per batch, which an interrupt cannot split
                f = open(path, "xb", buffering=0)  # noqa: SIM115  (never two writers on one name)
                break
            except FileExistsError:
                n += 1
        head = frame(file_version_event(now))
        if self._purge_step is not None:
            head += frame(purge_event(self._purge_step, now))
            self._purge_step = None
        self._file, self._path = f, path
        write_all(f, head)
        return f

    def write_steps(self, records: Sequence[StepRecord]) -> None:
        encode = self._encoder.summary
        chunks = []
        for step, wall, scalars, items in records:
            summary = encode(scalars)
            if items:
                summary += self._items(items)
            chunks.append(frame(event(step, wall, summary)))
        if chunks:
            write_all(self._ensure_file(), b"".join(chunks))

    def _items(self, items: Sequence[Item]) -> bytes:
        out = []
        for item in items:
            try:
                out.append(_item_summary(item))
            except Exception:
                _log.exception("tensorboard: could not write %s %r", item.kind, item.tag)
        return b"".join(out)

    def write_step(self, record: StepRecord) -> None:
        self.write_steps([record])

    def flush(self) -> None:
        if self._file is not None:
            os.fsync(self._file.fileno())

    def _rewrite(self, step: int | None, *, sessions: bool = False) -> None:
        """Purge the event files of earlier attempts; remove our own ``.tmp`` leftovers."""
        self.close()
        if self._dir is None or not self._dir.is_dir():
            return
        for path in sorted(self._dir.glob("*tfevents*")):
            if path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # a rewrite cut short: the original is intact
            elif path.is_file():
                purge_file(path, step, sessions=sessions)

    def truncate(self, step: int) -> None:
        self._rewrite(step)
        self._purge_step = step

    def start_run(self, run: RunInfo) -> None:
        if run.resumed:
            self._rewrite(None, sessions=True)
        summary = session_start_summary(_flatten(run.params), run.start_time)
        write_all(self._ensure_file(), frame(event(0, run.start_time, summary)))

    def end_run(self, status: str) -> None:
        now = time.time()
        write_all(self._ensure_file(), frame(event(0, now, session_end_summary(status, now))))

    def close(self) -> None:
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None
