"""``--resume``: stop a run, continue it in its own folder, get the same metrics bit for bit."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from conftest import Project, read_metrics, tomllib

EXPERIMENT = """
import torch
import pystematic as ps

@ps.parameter("epochs", type=int, default=4)
@ps.parameter("crash_at", type=int, default=-1, help="Raise after this epoch's checkpoint.")
@ps.experiment
def res(params, context):
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model, opt = context.track(model=model, optimizer=opt)
    context.load_checkpoint()
    steps = context.counter("steps")
    for epoch in context.loop(params.epochs, desc="epoch"):
        for _ in range(3):
            loss = model(torch.randn(16, 4)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps.increment()
            context.recorder.scalar("loss", loss.item())
            context.recorder.scalar("draw", float(context.rng.random()))
            context.recorder.scalar("steps", steps.value)
            context.recorder.step()
        context.save_checkpoint()
        if epoch == params.crash_at:
            raise RuntimeError("stopped on purpose")
"""


def _values(run_dir: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "time"} for row in read_metrics(run_dir)]


def test_stop_and_resume_gives_the_uninterrupted_metrics(project: Project) -> None:
    project.write("res.py", EXPERIMENT)
    straight = project.run("run", "res", "--random-seed", "5", "--output-dir", "a")
    assert straight.returncode == 0, straight.stderr
    crashed = project.run(
        "run", "res", "--random-seed", "5", "--crash-at", "1", "--output-dir", "b"
    )
    assert crashed.returncode == 1
    run_dir = project.only_run_dir("res", "b")
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    assert len(read_metrics(run_dir)) == 6  # two epochs of three steps

    resumed = project.run("run", "res", "--resume", str(run_dir), "--crash-at", "-1")
    assert resumed.returncode == 0, resumed.stderr
    assert project.run_dirs("res", "b") == [run_dir]  # continued in place, no new folder
    assert _values(run_dir) == _values(project.only_run_dir("res", "a"))
    assert [row["step"] for row in read_metrics(run_dir)] == list(range(12))

    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed"
    assert len(record["resumes"]) == 1
    assert record["params"]["crash_at"] == -1
    # The first parameters are kept; the new file holds the override.
    old = tomllib.loads((run_dir / "parameters.1.toml").read_text())
    new = tomllib.loads((run_dir / "parameters.toml").read_text())
    assert (old["crash_at"], new["crash_at"]) == (1, -1)
    assert old["random_seed"] == new["random_seed"] == 5


def test_resume_refuses_a_run_that_is_still_running(project: Project) -> None:
    project.write("res.py", EXPERIMENT)
    assert project.run("run", "res", "--random-seed", "1", "--epochs", "1").returncode == 0
    run_dir = project.only_run_dir("res")
    record = json.loads((run_dir / "run.json").read_text())
    before = dict(record)
    # A live process on this host with a fresh heartbeat: this test's own.
    record.update(
        status="running", heartbeat=datetime.now(timezone.utc).isoformat(), pid=os.getpid()
    )
    (run_dir / "run.json").write_text(json.dumps(record))
    result = project.run("run", "res", "--resume", str(run_dir))
    assert result.returncode == 2
    assert "still running" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert json.loads((run_dir / "run.json").read_text())["resumes"] == before["resumes"]


def test_resume_of_something_that_is_not_a_run(project: Project) -> None:
    project.write("res.py", EXPERIMENT)
    (project.root / "empty").mkdir()
    result = project.run("run", "res", "--resume", "empty")
    assert result.returncode == 2
    assert "not a run folder" in result.stderr
