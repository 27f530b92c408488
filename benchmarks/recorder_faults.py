"""Signals at random moments in a tight ``scalar(); step()`` loop: is every step kept?

    python benchmarks/recorder_faults.py [--trials 20] [--batch-steps 64]

Each trial starts a fresh process that records as fast as it can (the value of
each step is its own index), sends it SIGINT or SIGTERM (raising
``KeyboardInterrupt`` or an exception from the handler, as ``pystematic run``
does) after a random delay, and then checks ``metrics.jsonl`` and the
TensorBoard event file: steps ``0..N-1`` each exactly once, under their own
index, the same in both. A small ``--batch-steps`` makes the signal land inside
a batch write more often. Then ``--crash-trials`` processes that record ~1,000
steps/s die by ``os._exit`` after a random time: the steps committed more than
``--loss-bound`` seconds before the crash must be on disk (the writer thread
writes every 0.2 s). Prints a table: trials, held, lost.
``tests/test_recording_faults.py`` runs a few trials of the same attacks.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")

LOOP = """
import signal, sys
from pystematic.recording import Recorder

class Terminated(BaseException):
    pass

def on_term(signum, frame):
    raise Terminated()

signal.signal(signal.SIGTERM, on_term)
rec = Recorder(sys.argv[1], batch_steps=int(sys.argv[2]))
print("ready", flush=True)
try:
    while True:
        rec.scalar("i", rec.global_step)
        rec.step()
finally:
    rec.close()
"""


@dataclass
class Trial:
    """The outcome of one trial: what was recorded, and what is wrong with it."""

    signal: str
    steps: int
    problem: str | None

    @property
    def held(self) -> bool:
        return self.problem is None


def read_back(run: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, value) of tag ``i`` from metrics.jsonl and from the TensorBoard events."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    jsonl = []
    path = run / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        record = json.loads(line)
        jsonl.append((record["step"], record["i"]))
    events = []
    for path in sorted((run / "tensorboard").iterdir()):
        for event in LegacyEventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == "i":
                    events.append((event.step, value.simple_value))
    return jsonl, events


def run_trial(workdir: Path, signum: int, delay: float, batch_steps: int = 64) -> Trial:
    """One process, one signal after ``delay`` seconds of recording; the verdict."""
    run = workdir / "run"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-c", LOOP, str(run), str(batch_steps)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    name = signal.Signals(signum).name
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            return Trial(name, 0, f"did not start: {proc.communicate()[1][-500:]!r}")
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signum)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    steps, problem = verdict(run)
    return Trial(name, steps, problem)


def verdict(run: Path) -> tuple[int, str | None]:
    """Steps in ``run``'s metrics.jsonl, and what is wrong: tag ``i`` must be recorded at
    steps ``0..N-1``, each once, with its own index as value, the same in TensorBoard.
    ``benchmarks/faults.py`` checks the runs it attacks with this too."""
    jsonl, events = read_back(run)
    steps = len(jsonl)
    if [s for s, _ in jsonl] != list(range(steps)):
        return steps, "metrics.jsonl: steps missing, repeated or out of order"
    if any(value != step for step, value in jsonl):
        return steps, "metrics.jsonl: a value under another step's index"
    if events != [(s, float(v)) for s, v in jsonl]:
        return steps, "TensorBoard and metrics.jsonl disagree"
    return steps, None


CRASH = """
import os, sys, time
from pystematic.recording import Recorder

rec = Recorder(sys.argv[1], batch_steps=10**6)  # only the writer thread writes
end = time.time() + float(sys.argv[2])
while time.time() < end:
    rec.scalar("t", time.time())
    rec.step()
    time.sleep(0.001)
print(time.time(), flush=True)
os._exit(3)
"""


def crash_trial(workdir: Path, after: float) -> float:
    """Seconds of committed steps lost by an ``os._exit`` after ``after`` seconds."""
    run = workdir / "run"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-c", CRASH, str(run), str(after)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    crashed_at = float(proc.stdout)
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    last = json.loads(lines[-1])["t"] if lines else crashed_at - after
    return crashed_at - last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per signal")
    parser.add_argument("--batch-steps", type=int, default=64)
    parser.add_argument("--max-delay", type=float, default=0.6, help="seconds")
    parser.add_argument("--crash-trials", type=int, default=20)
    parser.add_argument("--loss-bound", type=float, default=0.5, help="seconds")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    rows = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        trials = []
        for _ in range(args.trials):
            with tempfile.TemporaryDirectory(prefix="pystematic-faults-") as tmp:
                trial = run_trial(
                    Path(tmp), signum, rng.uniform(0.0, args.max_delay), args.batch_steps
                )
            trials.append(trial)
            if not trial.held:
                print(f"  lost: {trial.signal} after {trial.steps} steps: {trial.problem}")
        held = sum(t.held for t in trials)
        steps = sorted(t.steps for t in trials)
        rows.append((signal.Signals(signum).name, len(trials), held, len(trials) - held, steps))
    losses = []
    for _ in range(args.crash_trials):
        with tempfile.TemporaryDirectory(prefix="pystematic-faults-") as tmp:
            losses.append(crash_trial(Path(tmp), rng.uniform(0.3, 1.5)))
    print("| attack | trials | held | lost | notes |")
    print("| --- | --- | --- | --- | --- |")
    for name, n, held, lost, steps in rows:
        notes = f"{steps[0]}-{steps[-1]} steps recorded"
        print(f"| {name} in a tight step loop | {n} | {held} | {lost} | {notes} |")
    if losses:
        n, held = len(losses), sum(loss <= args.loss_bound for loss in losses)
        median = statistics.median(losses)
        notes = f"seconds of steps lost: median {median:.2f}, max {max(losses):.2f}"
        print(f"| os._exit while recording | {n} | {held} | {n - held} | {notes} |")
        rows.append(("crash", n, held, n - held, []))
    sys.exit(1 if any(row[3] for row in rows) else 0)


if __name__ == "__main__":
    main()
