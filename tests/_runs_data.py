"""Run dirs written by hand, shaped like the ones pystematic writes, for the runs tests."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

NOW = datetime.now(timezone.utc)


def iso(moment: datetime) -> str:
    return moment.isoformat()


def write_run(root: Path, experiment: str, run_id: str, **fields: Any) -> Path:
    """A run dir with a full run.json like rundir.py writes; *fields* override the defaults."""
    start = fields.pop("start_at", NOW - timedelta(hours=1))
    record: dict[str, Any] = {
        "id": run_id,
        "experiment": experiment,
        "module": "experiments.train",
        "file": "/project/experiments/train.py",
        "argv": ["pystematic", "run", experiment],
        "status": "completed",
        "start": iso(start),
        "end": iso(start + timedelta(seconds=90)),
        "duration": 90.0,
        "error": None,
        "traceback": None,
        "failed_rank": None,
        "pid": 999999,
        "host": "elsewhere",
        "user": "me",
        "heartbeat": iso(start + timedelta(seconds=90)),
        "python_version": "3.11.7",
        "torch_version": "2.13.0",
        "cuda_version": None,
        "gpu": None,
        "pystematic_version": "0.1.0",
        "world_size": 1,
        "backend": None,
        "git_commit": None,
        "git_branch": None,
        "git_dirty": None,
        "resumes": [],
        "tags": [],
        "params": {},
        "metrics": {},
    }
    record.update(fields)
    run_dir = root / experiment / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps(record))
    return run_dir


@pytest.fixture
def output(tmp_path: Path) -> Path:
    """Five runs of three experiments (two in the `vision` group), ten minutes apart."""
    root = tmp_path / "output"
    t0 = NOW - timedelta(days=1)
    specs = [
        ("train", {"lr": 0.01, "epochs": 10, "augment": True}, {"loss": 0.5, "acc": 0.8}, []),
        ("train", {"lr": 0.001, "epochs": 10, "augment": False}, {"loss": 0.3}, ["best"]),
        ("train", {"lr": 0.1, "epochs": 10, "augment": True}, {"loss": 0.9, "acc": 0.6}, []),
        ("vision.fit", {"lr": 0.01, "batch_size": 32}, {"loss": 0.4}, ["best", "x"]),
        ("vision.eval", {"checkpoint": "a.pt"}, {"acc": 0.7}, []),
    ]
    for i, (experiment, params, metrics, tags) in enumerate(specs):
        start = t0 + timedelta(minutes=10 * i)
        run_id = start.strftime("%Y%m%d-%H%M%S") + f"-{i:04x}"
        write_run(
            root, experiment, run_id, start_at=start, params=params, metrics=metrics, tags=tags
        )
    return root


def ids(records: list[dict[str, Any]]) -> list[str]:
    return [r["id"][-1] for r in records]  # the index i, as written by the fixture


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def running(
    root: Path,
    run_id: str,
    heartbeat_age: float,
    host: str,
    pid: int,
    start_age: float = 600,
    experiment: str = "train",
    **fields: Any,
) -> Path:
    """A run.json that says ``running``, with a heartbeat *heartbeat_age* seconds old."""
    now = datetime.now(timezone.utc)
    return write_run(
        root,
        experiment,
        run_id,
        start_at=now - timedelta(seconds=start_age),
        status="running",
        end=None,
        duration=None,
        host=host,
        pid=pid,
        heartbeat=iso(now - timedelta(seconds=heartbeat_age)),
        **fields,
    )
