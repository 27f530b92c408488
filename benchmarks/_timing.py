"""Shared helper of the benchmark scripts: interleaved wall-clock timing of fresh processes.

Every benchmark compares against a baseline measured in the same
run, the commands interleaved (alternating which goes first), at least 9 rounds, and
reports the ratio of the medians. These machines are noisy; a single timing means nothing.

Used by ``startup.py``, ``run_overhead.py``, ``launch.py`` and ``capture.py`` (run them as scripts:
``python benchmarks/startup.py``; this module is imported from the same folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MIN_ROUNDS = 9

# Benchmarks time what users see: Python writes bytecode caches and reuses them. Some
# sandboxes turn that off for every process (PYTHONDONTWRITEBYTECODE=1), which makes every
# command compile pystematic's sources (and the project's) from scratch each time.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


class CommandFailed(RuntimeError):
    """A timed command exited non-zero; the message carries its output's tail."""


@dataclass
class Stats:
    """Wall times of one command over the rounds, in seconds."""

    name: str
    argv: list[str]
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def max(self) -> float:
        return max(self.times)

    def summary(self) -> dict[str, Any]:
        return {
            "argv": self.argv,
            "median_s": round(self.median, 4),
            "min_s": round(self.min, 4),
            "max_s": round(self.max, 4),
            "times_s": [round(t, 4) for t in self.times],
        }


@dataclass
class Verdict:
    """One target: a ratio of medians (``baseline`` set) or an absolute median time."""

    what: str
    command: str
    target: float
    value: float | None = None  # ratio or seconds; None when a command failed
    baseline: str | None = None
    error: str | None = None

    @property
    def passed(self) -> bool | None:
        return None if self.value is None else self.value <= self.target

    def line(self) -> str:
        unit = " x" if self.baseline else " s"
        target = f"target <= {self.target:g}{unit.strip()}"
        if self.value is None:
            return f"{self.what}: ERROR ({self.error}); {target}"
        shown = f"{self.value:.3f}{unit}"
        if self.baseline:
            shown = f"ratio {shown} ({self.command} / {self.baseline}, medians)"
        else:
            shown = f"median {shown} ({self.command})"
        return f"{self.what}: {shown}; {target}: {'PASS' if self.passed else 'FAIL'}"


def parser(description: str, default_rounds: int = MIN_ROUNDS) -> argparse.ArgumentParser:
    """An argparse parser with the common ``--rounds`` and ``--json`` options."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=default_rounds,
        help=f"interleaved rounds (default {default_rounds}; "
        f"fewer than {MIN_ROUNDS} is only a smoke test)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout only")
    return p


def parse(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse sys.argv; warn when there are too few rounds to mean anything."""
    args = p.parse_args()
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.rounds < MIN_ROUNDS:
        log(args, f"note: {args.rounds} rounds < {MIN_ROUNDS}: a smoke test, not a measurement")
    return args


def log(args: argparse.Namespace, *parts: object) -> None:
    """Human output: stdout normally, stderr under ``--json`` (stdout holds the JSON)."""
    print(*parts, file=sys.stderr if args.json else sys.stdout, flush=True)


def timed(
    argv: Sequence[str],
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> float:
    """Wall time of one fresh process, start to exit.

    Raises CommandFailed on a non-zero exit or when it runs past *timeout* seconds.
    """
    begin = time.perf_counter()
    try:
        proc = subprocess.run(
            list(argv),
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandFailed(f"timed out after {timeout} s: {' '.join(argv)}") from exc
    elapsed = time.perf_counter() - begin
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-8:]
        raise CommandFailed(f"exit {proc.returncode}: {' '.join(argv)}\n  " + "\n  ".join(tail))
    return elapsed


def probe(
    argv: Sequence[str], cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run once with output captured (a check before timing, or to show what a command says)."""
    return subprocess.run(
        list(argv),
        cwd=cwd,
        env=None if env is None else dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )


def interleave(
    commands: Mapping[str, Sequence[str]],
    rounds: int,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    warmup: int = 1,
    args: argparse.Namespace | None = None,
    timeout: float | None = None,
) -> dict[str, Stats]:
    """Time every command once per round, reversing the order every other round.

    The *warmup* rounds (page cache, ``.pyc`` files, caches) are not counted. A failing
    command raises CommandFailed at once: a benchmark of a broken command means nothing.
    """
    names = list(commands)
    stats = {name: Stats(name, list(commands[name])) for name in names}
    for i in range(warmup + rounds):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            elapsed = timed(commands[name], cwd=cwd, env=env, timeout=timeout)
            if i >= warmup:
                stats[name].times.append(elapsed)
        if args is not None and i >= warmup:
            done = i - warmup + 1
            medians = ", ".join(f"{n} {statistics.median(stats[n].times):.3f}s" for n in names)
            log(args, f"  round {done}/{rounds}: medians so far {medians}")
    return stats


def ratio_verdict(
    what: str, stats: Mapping[str, Stats], command: str, baseline: str, target: float
) -> Verdict:
    value = stats[command].median / stats[baseline].median
    return Verdict(what, command, target, value, baseline)


def machine() -> dict[str, Any]:
    """Where the numbers came from."""
    return {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "host": socket.gethostname(),
        "loadavg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def report(
    args: argparse.Namespace,
    benchmark: str,
    stats: Mapping[str, Stats],
    verdicts: Sequence[Verdict],
    extra: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
) -> None:
    """Print the per-command table and the verdicts (or, with ``--json``, a JSON summary)."""
    if args.json:
        summary = {
            "benchmark": benchmark,
            "rounds": args.rounds,
            "machine": machine(),
            "commands": {name: s.summary() for name, s in stats.items()},
            "verdicts": [{**asdict(v), "passed": v.passed} for v in verdicts],
            "notes": list(notes),
            **(extra or {}),
        }
        print(json.dumps(summary, indent=2))
        return
    info = machine()
    print(
        f"\n{benchmark}: {args.rounds} interleaved rounds, wall time of a fresh process "
        f"(python {info['python']}, {info['cpus']} cpus, load {info['loadavg']})"
    )
    if stats:
        width = max(len(name) for name in stats)
        print(f"  {'command':<{width}}  median     min     max")
        for name, s in stats.items():
            print(f"  {name:<{width}}  {s.median:6.3f}  {s.min:6.3f}  {s.max:6.3f}  s")
    for note in notes:
        print(f"  {note}")
    for verdict in verdicts:
        print(verdict.line())


def pystematic_exe() -> list[str]:
    """The ``pystematic`` console script beside this interpreter (``-m pystematic`` without)."""
    exe = Path(sys.executable).parent / "pystematic"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "pystematic"]


def git_init(root: Path) -> bool:
    """Make *root* a git repository with one commit; False when git is missing or fails."""
    git = shutil.which("git")
    if git is None:
        return False
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@example.invalid",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    }
    for argv in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "bench"]):
        if subprocess.run([git, *argv], cwd=root, env=env, capture_output=True).returncode:
            return False
    return True


def write_project(root: Path, experiment: str, git: bool) -> bool:
    """A project with one module, ``experiments/trivial.py``; True when it is in git."""
    package = root / "experiments"
    package.mkdir(parents=True)
    (root / "pystematic.toml").write_text('modules = ["experiments"]\n')
    (root / ".gitignore").write_text("output/\n.pystematic_cache/\n")
    (package / "__init__.py").write_text("")
    (package / "trivial.py").write_text(experiment)
    return git and git_init(root)
