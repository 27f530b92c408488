"""Benchmark: a run that prints 200k lines, through the output capture (output.log).

Commands, interleaved, stdout and stderr to /dev/null:

- ``baseline``: a plain script that imports torch and prints the lines;
- ``pystematic run``: an experiment printing the same lines inside ``context.loop(2)``,
  so every line goes through the fd-level tee and the log filter into output.log;
- with ``--compare-src DIR``, also ``pystematic run (DIR)``: the same run with another
  source tree of pystematic first on ``PYTHONPATH`` (an older checkout: before/after).

With ``--tty`` the runs write to a pseudo-terminal (drained by this script) instead, as
on a user's terminal, and the lines are printed inside a live ``context.loop`` display
(``pystematic run``) or with no loop around them (``pystematic run, no loop``; the
baseline): what queueing prints above the progress rows costs.

Also times the log filter alone (``LogFilter.feed`` over the same 200k lines
in 1 MiB chunks, as the reader thread sees them), interleaved with DIR's filter when
given. There is no target for it: the numbers say whether the capture got slower.

    python benchmarks/capture.py [--rounds 9] [--lines 200000] [--tty] [--compare-src DIR]
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import _timing

EXPERIMENT = '''\
import pystematic as ps
import torch


@ps.parameter("lines", type=int, default=1)
@ps.parameter("loop", type=bool, default=True)
@ps.experiment
def printer(params, context):
    """Prints a lot."""
    for epoch in context.loop(2, desc="epoch") if params.loop else range(2):
        for i in range(params.lines // 2):
            print(f"epoch {epoch} line {i} loss 0.123456")
'''

BASELINE = """\
import sys

import torch

lines = int(sys.argv[1])
for epoch in range(2):
    for i in range(lines // 2):
        print(f"epoch {epoch} line {i} loss 0.123456")
"""


def _timed_in_pty(argv: list[str], cwd: Path) -> float:
    """Wall time of one process whose stdin, stdout and stderr are a 40x120 terminal."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    begin = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    tail = b""
    while True:
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # EIO: every writer is gone
            break
        if not data:
            break
        tail = (tail + data)[-2000:]
    os.close(master)
    if proc.wait() != 0:
        raise _timing.CommandFailed(
            f"exit {proc.returncode}: {argv}\n{tail.decode(errors='replace')}"
        )
    return time.perf_counter() - begin


def _interleave_in_pty(
    commands: dict[str, list[str]], rounds: int, cwd: Path, args: Any
) -> dict[str, _timing.Stats]:
    stats = {name: _timing.Stats(name, argv) for name, argv in commands.items()}
    names = list(commands)
    for i in range(rounds + 1):  # the first round warms up
        for name in names if i % 2 == 0 else names[::-1]:
            elapsed = _timed_in_pty(commands[name], cwd)
            if i:
                stats[name].times.append(elapsed)
        if i:
            medians = ", ".join(f"{n} {statistics.median(stats[n].times):.3f}s" for n in names)
            _timing.log(args, f"  round {i}/{rounds}: medians so far {medians}")
    return stats


def _load_capture(src: Path) -> ModuleType:
    """The log filter's module of a source tree, loaded on its own (it imports stdlib only):
    ``capture_reader.py``, or ``capture.py`` in trees from before the reader had its own."""
    path = src / "pystematic" / "capture_reader.py"
    if not path.exists():
        path = src / "pystematic" / "capture.py"
    spec = importlib.util.spec_from_file_location(f"capture_{abs(hash(src))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _filter_seconds(module: ModuleType, chunks: list[bytes]) -> float:
    crf: Any = (getattr(module, "LogFilter", None) or module._CarriageReturnFilter)()
    begin = time.perf_counter()
    for chunk in chunks:
        crf.feed(chunk)
    crf.flush()
    return time.perf_counter() - begin


def _time_filters(sources: dict[str, Path], lines: int, rounds: int) -> dict[str, _timing.Stats]:
    data = "".join(f"epoch 0 line {i} loss 0.123456\n" for i in range(lines)).encode()
    chunks = [data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)]
    modules = {name: _load_capture(src) for name, src in sources.items()}
    stats = {name: _timing.Stats(name, [str(src)]) for name, src in sources.items()}
    names = list(modules)
    for i in range(rounds + 1):
        for name in names if i % 2 == 0 else names[::-1]:
            elapsed = _filter_seconds(modules[name], chunks)
            if i:
                stats[name].times.append(elapsed)
    return stats


def main() -> None:
    p = _timing.parser(__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=200_000, help="lines printed (default 200k)")
    p.add_argument("--compare-src", type=Path, help="another pystematic source tree (its src/)")
    p.add_argument("--tty", action="store_true", help="write to a pseudo-terminal, as a user sees")
    args = _timing.parse(p)
    compare = args.compare_src.resolve() if args.compare_src else None
    tmp = Path(tempfile.mkdtemp(prefix="pystematic-capture-bench-"))
    root = tmp / "project"
    notes: list[str] = []
    try:
        _timing.write_project(root, EXPERIMENT, git=False)
        (tmp / "baseline.py").write_text(BASELINE)
        lines = str(args.lines)
        run = ["run", "printer", "--lines", lines]
        commands = {
            "baseline": [sys.executable, str(tmp / "baseline.py"), lines],
            "pystematic run": [*_timing.pystematic_exe(), *run],
        }
        if args.tty:
            commands["baseline"] = [*_timing.pystematic_exe(), *run, "--no-loop"]
        if compare is not None:
            commands[f"pystematic run ({compare.name})"] = [
                "env",
                f"PYTHONPATH={compare}",
                sys.executable,
                "-m",
                "pystematic",
                *run,
            ]
        if args.tty:
            stats = _interleave_in_pty(commands, args.rounds, root, args)
            notes.append("on a pty; baseline: the same run without a loop around the prints")
        else:
            stats = _timing.interleave(commands, args.rounds, cwd=root, args=args, timeout=600)
        base = stats["baseline"].median
        for name in stats:
            if name != "baseline":
                extra, ratio = stats[name].median - base, stats[name].median / base
                notes.append(f"{name}: {ratio:.3f} x the baseline, {extra * 1000:+.0f} ms")
        logs = (root / "output" / "printer").glob("*/output.log")
        counts = sorted({len(log.read_text().splitlines()) for log in logs})
        notes.append(f"lines in the runs' output.log files: {counts}")

        src = Path(__file__).resolve().parent.parent / "src"
        sources = {"filter": src, **({f"filter ({compare.name})": compare} if compare else {})}
        for name, s in _time_filters(sources, args.lines, args.rounds).items():
            stats[name] = s
            rate = args.lines / statistics.median(s.times) / 1e6
            notes.append(f"{name}: {rate:.1f} M lines/s (median of {args.rounds})")
        _timing.report(args, "capture", stats, [], notes=notes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
