"""``metrics.jsonl``: one JSON object per committed step that has scalars.

``{"step": 12, "time": 1732540000.12, "loss": 0.31}`` — each value is the exact
Python float recorded (``repr``, as ``json.dumps`` writes it; non-finite values
as ``NaN``, ``Infinity``, ``-Infinity``, which Python's ``json`` reads back).
Lines are written whole, a batch per unbuffered ``write()``, so the file stays
valid line by line after a crash, except for a last line torn by a kill in the
middle of a write: the next recorder on the file cuts it off before appending.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from .base import Backend, StepRecord, write_all

FILE_NAME = "metrics.jsonl"

_log = logging.getLogger("pystematic.recording")
_INF = float("inf")
_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


class JsonlBackend(Backend):
    """Appends committed steps to ``<run>/metrics.jsonl``."""

    name = "jsonl"

    def __init__(self) -> None:
        self._path: Path | None = None
        self._file: BinaryIO | None = None
        self._keys: dict[str, str] = {}  # tag -> its JSON string, with ": "

    @property
    def path(self) -> Path | None:
        return self._path

    def open(self, output_dir: Path) -> None:
        self._path = Path(output_dir) / FILE_NAME

    def _ensure_file(self) -> BinaryIO:
        if self._file is None:
            if self._path is None:
                raise RuntimeError("JsonlBackend.open() was not called")
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._cut_torn_line(self._path)
            # unbuffered: a batch is one write() call, so an interrupt never splits it
            self._file = open(self._path, "ab", buffering=0)  # noqa: SIM115
        return self._file

    @staticmethod
    def _cut_torn_line(path: Path) -> None:
        """Drop a last line without its newline (a kill mid-write): it is not valid JSON,
        and our first line must not be glued onto it."""
        try:
            with open(path, "rb+") as f:
                end = f.seek(0, os.SEEK_END)
                if end == 0:
                    return
                f.seek(end - 1)
                if f.read(1) == b"\n":
                    return
                pos = end
                while pos > 0:  # back to the last newline, a block at a time
                    start = max(0, pos - 65536)
                    f.seek(start)
                    found = f.read(pos - start).rfind(b"\n")
                    if found >= 0:
                        pos = start + found + 1
                        break
                    pos = start
                _log.warning("%s: cut a torn last line (%d bytes)", path, end - pos)
                f.truncate(pos)
        except FileNotFoundError:
            pass

    def write_steps(self, records: Sequence[StepRecord]) -> None:
        keys = self._keys
        fmt = float.__repr__
        lines = []
        for step, wall, scalars, _ in records:
            if not scalars:
                continue
            parts = [f'{{"step": {step}, "time": {fmt(wall)}']
            for tag, value in scalars.items():
                key = keys.get(tag)
                if key is None:
                    key = keys[tag] = f", {json.dumps(tag)}: "
                text = fmt(value)
                parts.append(key + (text if -_INF < value < _INF else _NON_FINITE[text]))
            parts.append("}\n")
            lines.append("".join(parts))
        if lines:
            write_all(self._ensure_file(), "".join(lines).encode("utf-8"))

    def write_step(self, record: StepRecord) -> None:
        self.write_steps([record])

    def flush(self) -> None:
        if self._file is not None:
            os.fsync(self._file.fileno())

    def truncate(self, step: int) -> None:
        """Drop lines with ``step >= step`` (and unreadable ones, e.g. a torn last line);
        remove a ``.tmp`` left by a rewrite cut short (the original is intact)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._path is None:
            return
        self._path.with_name(self._path.name + ".tmp").unlink(missing_ok=True)
        if not self._path.exists():
            return
        kept, dropped, broken = [], 0, 0
        with open(self._path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    obj = json.loads(line)
                    line_step = obj["step"]
                except (ValueError, KeyError, TypeError):
                    broken += line.strip() != ""
                    continue
                if isinstance(line_step, int) and line_step < step:
                    kept.append(line if line.endswith("\n") else line + "\n")
                else:
                    dropped += 1
        if broken:
            _log.warning("%s: dropped %d unreadable line(s)", self._path, broken)
        if dropped or broken:
            tmp = self._path.with_name(self._path.name + ".tmp")
            with open(tmp, "w", encoding="utf-8", newline="\n") as f:
                f.writelines(kept)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path)

    def close(self) -> None:
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None
