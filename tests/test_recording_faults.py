"""The recorder under faults, with real processes: signals at any instant, hard crashes,
a write that fails mid-run."""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Project

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import recorder_faults  # benchmarks/recorder_faults.py: the same attack, N trials

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_signal_at_any_instant_keeps_every_step_once_under_its_index(
    tmp_path: Path, signum: int
) -> None:
    """A few trials here; ``benchmarks/recorder_faults.py`` runs many (the README's table)."""
    rng = random.Random(signum)
    for n in range(3):
        trial = recorder_faults.run_trial(tmp_path / str(n), signum, rng.uniform(0.0, 0.5))
        assert trial.held, trial.problem
        assert trial.steps > 0


CRASH = """
import os, sys, time
from pystematic.recording import Recorder

rec = Recorder(sys.argv[1], batch_steps=10**6)  # only the writer thread writes
start = time.time()
while time.time() < start + 1.5:
    rec.scalar("t", time.time())
    rec.step()
    time.sleep(0.001)
print(rec.global_step, time.time(), flush=True)
os._exit(3)
"""


def test_a_hard_crash_loses_at_most_a_fraction_of_a_second(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", CRASH, str(run)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr
    committed, crashed_at = proc.stdout.split()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(len(lines)))
    assert 0 < len(lines) <= int(committed)
    # flush_secs is 0.2 s: a busy 2-core machine gets a generous margin here
    assert lines[-1]["t"] > float(crashed_at) - 1.0


FILLER = """
import pystematic as ps

@ps.experiment
def fill(params, context):
    for s in range(10**7):
        context.recorder.scalars({f"tag{i}": s + i / 10 for i in range(20)})
        context.recorder.step()
"""


@pytest.mark.slow
def test_a_failing_write_fails_the_run_with_the_os_error(project: Project) -> None:
    """RLIMIT_FSIZE makes a write past 1 MiB fail (EFBIG) as a full disk would (ENOSPC)."""
    project.write("pystematic.toml", "")
    project.write("fill.py", FILLER)
    limit = 1 << 20

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-m", "pystematic", "run", "fill"],
        cwd=project.root,
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    run_dir = project.only_run_dir("fill")
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "failed"
    assert run["error"] == "OSError: [Errno 27] File too large"
    assert "File too large" in proc.stderr
    # What reached the disk is whole steps, each once, under its own index.
    text = (run_dir / "metrics.jsonl").read_bytes()
    whole = text[: text.rfind(b"\n") + 1].decode().splitlines()
    steps = [json.loads(line)["step"] for line in whole]
    assert len(steps) > 100 and steps == list(range(len(steps)))
    assert os.path.getsize(run_dir / "metrics.jsonl") <= limit
