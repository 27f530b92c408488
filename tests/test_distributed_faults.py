"""Every way a 2-rank group can end names the right rank and status, within seconds.

Real ``pystematic distributed --nproc 2`` launches (gloo) of ``faults``: rank 1 misbehaves
(``sys.exit``, sleeps, blocks in a receive nobody answers) while rank 0 waits in
``context.barrier()``. Each test asserts the exit code, run.json and that no rank process
outlives the launcher. A launch costs a few seconds: one launch per case.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import Project, read_metrics

pytestmark = pytest.mark.slow

EXPERIMENT = '''
import os
import sys
import time

import pystematic as ps


@ps.parameter("mode", type=str, default="")
@ps.experiment
def faults(params, context):
    """Rank 1 misbehaves as ``mode`` says; rank 0 waits in a barrier."""
    context.recorder.scalar("before", 1.0)
    context.recorder.step()
    (context.output_dir / f"pid.{context.rank}").write_text(str(os.getpid()))
    if context.rank == 1:
        if params.mode == "exit":
            sys.exit(3)
        if params.mode == "sleep":
            time.sleep(3600)
        if params.mode == "stuck":  # blocked in C++, as in a collective a peer never joins
            import torch
            import torch.distributed as dist

            dist.recv(torch.zeros(1), src=0, tag=99)
    context.barrier()
'''

# Seconds a command may take at most here (a loaded CI machine); the hang is 30 minutes.
COMMAND_LIMIT_S = 60


@pytest.fixture
def faults_project(project: Project) -> Project:
    project.write("pystematic.toml", 'modules = ["experiments"]\n')
    project.write("experiments/__init__.py", "")
    project.write("experiments/faults.py", EXPERIMENT)
    return project


def _start(project: Project, *args: str) -> subprocess.Popen[str]:
    """The launcher in a session of its own: a signal sent to it reaches no rank directly."""
    return subprocess.Popen(
        [sys.executable, "-m", "pystematic", "distributed", "faults", "--nproc", "2", *args],
        cwd=project.root,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=COMMAND_LIMIT_S)
    finally:
        if proc.poll() is None:  # hung: stop the whole session of the launcher
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, err


def _run_dir(project: Project) -> Path:
    return project.only_run_dir("faults")


def _record(project: Project) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((_run_dir(project) / "run.json").read_text())
    return data


def _rank_pids(project: Project) -> list[int]:
    return [int((_run_dir(project) / f"pid.{rank}").read_text()) for rank in (0, 1)]


def _assert_gone(pids: list[int]) -> None:
    """No rank outlives the launcher (a zombie is reaped by init within moments)."""
    deadline = time.monotonic() + 5
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        time.sleep(0.05)
    assert alive == [], f"rank processes left running: {alive}"


def _wait_for_ranks(project: Project, proc: subprocess.Popen[str]) -> None:
    """Until both ranks wrote their pid (then rank 0 is in the barrier within moments)."""
    deadline = time.monotonic() + COMMAND_LIMIT_S
    while time.monotonic() < deadline and proc.poll() is None:
        dirs = project.run_dirs("faults")
        if dirs and all((dirs[0] / f"pid.{rank}").exists() for rank in (0, 1)):
            time.sleep(1.0)
            return
        time.sleep(0.1)
    raise AssertionError(f"ranks never started (exit {proc.poll()})")


def test_a_rank_that_calls_sys_exit_is_named_not_its_peer(faults_project: Project) -> None:
    """sys.exit(3) on rank 1: rank 0 then dies of the closed connection and writes an
    error file of its own; rank 1 wrote one first, so the launcher names rank 1."""
    code, err = _finish(_start(faults_project, "--mode", "exit"))
    error = "main exited with status 3"

    assert code == 1, err
    assert f"error: rank 1 failed: {error}" in err
    record = _record(faults_project)
    assert (record["status"], record["failed_rank"], record["error"]) == ("failed", 1, error)
    assert record["traceback"] is None
    _assert_gone(_rank_pids(faults_project))


def test_timeout_fails_a_group_waiting_for_a_hung_peer(faults_project: Project) -> None:
    """Rank 1 sleeps, rank 0 waits in the barrier: after --timeout 3 the group fails
    (without it, gloo waits 30 minutes)."""
    code, err = _finish(_start(faults_project, "--mode", "sleep", "--timeout", "3"))

    assert code == 1, err
    record = _record(faults_project)
    assert (record["status"], record["failed_rank"]) == ("failed", 0)
    assert "Timed out" in record["error"], record["error"]
    assert f"error: rank 0 failed: {record['error']}" in err
    _assert_gone(_rank_pids(faults_project))


@pytest.mark.parametrize(
    ("signals", "exit_code", "error"),
    [
        ((signal.SIGINT,), 130, "KeyboardInterrupt"),
        ((signal.SIGTERM,), 143, "SIGTERM"),
        ((signal.SIGINT, signal.SIGINT), 130, "KeyboardInterrupt"),
    ],
    ids=["sigint", "sigterm", "double-sigint"],
)
def test_a_signal_stops_a_group_hung_in_a_collective(
    faults_project: Project, signals: tuple[int, ...], exit_code: int, error: str
) -> None:
    """Both ranks blocked in C++ ignore the signal the agent forwards; each rank's
    watchdog ends it 3 s later, instead of the agent's SIGKILL after 30 s."""
    proc = _start(faults_project, "--mode", "stuck")
    _wait_for_ranks(faults_project, proc)
    for i, signum in enumerate(signals):
        if i:
            time.sleep(1.0)
        proc.send_signal(signum)
    code, err = _finish(proc)

    assert code == exit_code, err
    record = _record(faults_project)
    assert (record["status"], record["error"]) == ("interrupted", error)
    # Each rank says why it ended (not the agent's silent SIGKILL 30 s later).
    name = signal.Signals(signals[0]).name
    for rank in (0, 1):
        log = (_run_dir(faults_project) / f"output.rank{rank}.log").read_text()
        assert f"pystematic: {name} not taken within 3 s" in log
    assert [row["before"] for row in read_metrics(_run_dir(faults_project))] == [1.0]
    _assert_gone(_rank_pids(faults_project))
