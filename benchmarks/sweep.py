"""Benchmark: ``pystematic sweep`` (DESIGN.md section 11).

Targets:

1. ``pystematic sweep trivial --grid n=1,...,8 --jobs 2`` -- 8 runs of a trivial experiment
   that imports torch, 2 at a time, each in its own process with its own run folder --
   takes <= 1.10 x the wall time of the same 8 plain scripts (argparse + ``import torch``)
   run 2 at a time by ``xargs -P 2``.
2. A 1,000-point grid (``--grid a=0..9 --grid b=0..99``) starts its first run in < 1 s:
   the time from starting ``pystematic sweep`` to the ``start`` time its first run records
   in run.json (written just before that run's process is started); the sweep is then
   stopped with SIGINT. An absolute target: measured alone, round after round.

The first is timed in interleaved rounds (alternating which goes first); both after one
uncounted warm-up round, in a throw-away project (``modules = ["experiments"]``) that is a git
repository with one commit unless ``--no-git``. A round of the first costs about 2 x 8 s
here.

    python benchmarks/sweep.py [--rounds 9] [--json] [--no-git] [--skip-ratio]
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import _timing

TARGET_RATIO = 1.10
TARGET_START_S = 1.0

EXPERIMENT = '''\
import pystematic as ps
import torch


@ps.parameter("n", type=int, default=1)
@ps.parameter("a", type=int, default=0)
@ps.parameter("b", type=int, default=0)
@ps.experiment
def trivial(params, context):
    """Does nothing much."""
    return params.n
'''

BASELINE = """\
import argparse

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--n", type=int, default=1)
args = parser.parse_args()
print(args.n)
"""


def time_to_first_run(argv: list[str], root: Path, output: Path) -> float:
    """Seconds from starting *argv* to the start its first run records; then SIGINT it."""
    shutil.rmtree(output, ignore_errors=True)
    began = time.time()
    proc = subprocess.Popen(
        argv, cwd=root, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = [p for p in output.glob("trivial/*/run.json") if p.parent.name != "sweeps"]
            if found:
                try:
                    start = json.loads(found[0].read_text())["start"]
                except (ValueError, KeyError):
                    time.sleep(0.005)
                    continue
                return datetime.fromisoformat(start).timestamp() - began
            if proc.poll() is not None:
                raise _timing.CommandFailed(f"exit {proc.returncode}: {proc.stderr.read()!r}")
            time.sleep(0.005)
        raise _timing.CommandFailed("no run started within 60 s")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def main() -> None:
    p = _timing.parser(__doc__.split("\n\n")[0])
    p.add_argument("--no-git", action="store_true", help="no git repository around the project")
    p.add_argument("--skip-ratio", action="store_true", help="time only the 1,000-point start")
    args = _timing.parse(p)
    tmp = Path(tempfile.mkdtemp(prefix="pystematic-sweep-bench-"))
    root = tmp / "project"
    stats: dict[str, _timing.Stats] = {}
    verdicts: list[_timing.Verdict] = []
    notes: list[str] = []
    try:
        in_git = _timing.write_project(root, EXPERIMENT, git=not args.no_git)
        (tmp / "baseline.py").write_text(BASELINE)
        notes.append(f"project in a git repository: {'yes' if in_git else 'no'}")
        exe = _timing.pystematic_exe()
        eight = ",".join(str(i) for i in range(1, 9))
        if not args.skip_ratio:
            script = f"{sys.executable} {tmp / 'baseline.py'} --n"
            pipeline = f"printf '%s\\n' {eight.replace(',', ' ')} | xargs -P 2 -I N {script} N"
            commands = {
                "xargs -P 2": ["sh", "-c", pipeline],
                "pystematic sweep": [
                    *exe,
                    "sweep",
                    "trivial",
                    "--grid",
                    f"n={eight}",
                    "--jobs",
                    "2",
                ],
            }
            what = "pystematic sweep of 8 trivial torch runs, --jobs 2, vs xargs -P 2"
            try:
                stats = _timing.interleave(commands, args.rounds, cwd=root, args=args)
            except _timing.CommandFailed as exc:
                verdicts.append(
                    _timing.Verdict(what, "pystematic sweep", TARGET_RATIO, error=str(exc))
                )
            else:
                verdicts.append(
                    _timing.ratio_verdict(
                        what, stats, "pystematic sweep", "xargs -P 2", TARGET_RATIO
                    )
                )
                overhead = stats["pystematic sweep"].median - stats["xargs -P 2"].median
                notes.append(f"sweep overhead (difference of medians): {overhead * 1000:+.0f} ms")
        # 2. time to the first run of a 1,000-point grid
        output = tmp / "first-run"
        grid_a = ",".join(str(i) for i in range(10))
        grid_b = ",".join(str(i) for i in range(100))
        sweep_1000 = [
            *exe, "sweep", "trivial", "--grid", f"a={grid_a}", "--grid", f"b={grid_b}",
            "--output-dir", str(output),
        ]  # fmt: skip
        what = "pystematic sweep of a 1,000-point grid: start to its first run"
        try:
            times = [time_to_first_run(sweep_1000, root, output) for _ in range(1 + args.rounds)]
            stats["1,000 points: to the first run"] = _timing.Stats(
                "first run", sweep_1000, times[1:]
            )
            median = statistics.median(times[1:])
            verdicts.append(_timing.Verdict(what, "sweep, 1,000 points", TARGET_START_S, median))
        except _timing.CommandFailed as exc:
            verdicts.append(
                _timing.Verdict(what, "sweep, 1,000 points", TARGET_START_S, error=str(exc))
            )
        _timing.report(args, "sweep", stats, verdicts, notes=notes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if any(v.passed is None for v in verdicts):
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
