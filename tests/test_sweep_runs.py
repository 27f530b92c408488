"""Sweeps that run: real ``pystematic sweep`` processes starting real runs, each in its own
process (DESIGN.md section 9). Each run costs a Python start and ``import torch``, so the
experiments are tiny and each test asserts everything its sweep shows."""

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

from conftest import Project, Result, read_metrics, tomllib
from pystematic.diff import compare_metrics

pytestmark = pytest.mark.slow

EXPERIMENTS = '''
import os
import random
import time

import pystematic as ps


@ps.parameter("a", type=int, default=1)
@ps.parameter("b", type=str, default="x", choices=["x", "y"])
@ps.parameter("lr", type=float, default=0.5)
@ps.parameter("fail_on", type=int, default=-1)
@ps.experiment
def toy(params, context):
    """Three steps of a made-up loss; fails for a == fail_on."""
    (context.output_dir / "gpus.txt").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "-"))
    if params.a == params.fail_on:
        raise ValueError(f"boom at a={params.a}")
    for _ in range(3):
        context.recorder.scalar("loss", params.a * params.lr + random.random())
        context.recorder.step()


@ps.parameter("a", type=int, default=1)
@ps.parameter("steps", type=int, default=8)
@ps.parameter("pause", type=float, default=0.4)
@ps.experiment
def slow(params, context):
    """Checkpoints every step, so a stopped run can continue."""
    import torch

    context.load_checkpoint()
    for _ in context.loop(params.steps):
        context.recorder.scalar("x", float(torch.rand(1)) * params.a)
        context.recorder.step()
        context.save_checkpoint({}, keep_last=1)
        time.sleep(params.pause)
'''


@pytest.fixture
def sweeps(project: Project) -> Project:
    project.write("pystematic.toml", 'recorder = ["jsonl"]\n')
    project.write("sweep_exps.py", EXPERIMENTS)
    return project


def run_dirs(project: Project, experiment: str, output: str = "output") -> list[Path]:
    return [p for p in project.run_dirs(experiment, output) if p.name != "sweeps"]


def sweep_record(project: Project, experiment: str) -> tuple[Path, dict[str, Any]]:
    (folder,) = (project.root / "output" / experiment / "sweeps").iterdir()
    return folder, json.loads((folder / "sweep.json").read_text())


def run_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((path / "run.json").read_text())
    return data


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2] != "Z"


def git(root: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args]
    return subprocess.run(command, cwd=root, check=True, capture_output=True, text=True).stdout


def test_a_grid_runs_every_point_as_an_ordinary_run(sweeps: Project) -> None:
    git(sweeps.root, "init", "-q")
    git(sweeps.root, "add", "-A")
    git(sweeps.root, "commit", "-q", "-m", "sweep")
    with open(sweeps.root / "sweep_exps.py", "a") as f:
        f.write("# edited\n")  # a dirty checkout: each run keeps the difference
    result = sweeps.run(
        "sweep", "toy", "--grid", "a=1,2", "--grid", "b=x,y", "--jobs", "2", "--lr", "0.25",
        "--random-seed", "7", "--json", "--sort", "-loss",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    folder, record = sweep_record(sweeps, "toy")
    assert (record["status"], record["random_seed"], record["fixed"]) == (
        "completed", 7, {"lr": "0.25"},
    )  # fmt: skip
    assert record["grid"] == {"a": [1, 2], "b": ["x", "y"]}
    runs = record["runs"]
    assert [(r["params"]["a"], r["params"]["b"], r["status"]) for r in runs] == [
        (1, "x", "completed"), (1, "y", "completed"), (2, "x", "completed"), (2, "y", "completed"),
    ]  # fmt: skip
    dirs = run_dirs(sweeps, "toy")
    assert sorted(d.name for d in dirs) == sorted(r["run_id"] for r in runs)
    for run in runs:
        path = Path(run["run_dir"])
        data = run_json(path)
        assert (data["status"], data["sweep"], data["sweep_index"]) == (
            "completed", folder.name, run["index"],
        )  # fmt: skip
        assert data["pid"] != record["pid"] and data["torch_version"]  # the child's own
        assert data["git_commit"] == git(sweeps.root, "rev-parse", "HEAD").strip()
        assert data["git_dirty"] is True and "+# edited" in (path / "git.diff").read_text()
        params = tomllib.loads((path / "parameters.toml").read_text())
        assert params == {
            "a": run["params"]["a"], "b": run["params"]["b"], "lr": 0.25, "fail_on": -1,
            "random_seed": run["params"]["random_seed"], "deterministic": False,
        }  # fmt: skip
        assert data["argv"] == [
            "run", "toy", "--lr", "0.25", "--a", str(params["a"]), "--b", params["b"],
            "--random-seed", str(params["random_seed"]),
        ]  # fmt: skip
        assert len(read_metrics(path)) == 3
    assert len({r["params"]["random_seed"] for r in runs}) == 4
    # --json: the sweep's records, best first; progress lines on stderr (not a terminal)
    records = result.json()
    losses = [r["metrics"]["loss"] for r in records]
    assert losses == sorted(losses, reverse=True) and len(records) == 4
    assert {r["sweep"] for r in records} == {folder.name}
    lines = result.stderr.splitlines()
    assert sum(1 for line in lines if "/4] completed " in line) == 4, result.stderr
    assert lines[-1] == f"sweep {folder.name}: 4 completed, 0 failed ({folder})"
    # `pystematic runs --sweep ID` lists exactly these runs
    listed = sweeps.run("runs", "--sweep", folder.name, "--json")
    assert sorted(r["id"] for r in listed.json()) == sorted(r["run_id"] for r in runs)


def test_a_failing_point_does_not_stop_the_others(sweeps: Project) -> None:
    """Also: each job slot gets its own CUDA_VISIBLE_DEVICES (no GPU needed to see that)."""
    result = sweeps.run(
        "sweep", "toy", "--grid", "a=1,2,3,4", "--fail-on", "3", "--jobs", "2",
        "--gpus-per-job", "1", env={"CUDA_VISIBLE_DEVICES": "5,7"},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    _, record = sweep_record(sweeps, "toy")
    statuses = {r["params"]["a"]: r["status"] for r in record["runs"]}
    assert statuses == {1: "completed", 2: "completed", 3: "failed", 4: "completed"}
    failed = record["runs"][2]
    assert failed["error"] == "ValueError: boom at a=3"
    assert run_json(Path(failed["run_dir"]))["status"] == "failed"
    assert record["status"] == "failed"
    assert result.stderr.splitlines()[-1] == f"error: 1 of 4 runs failed: {failed['run_id']}"
    assert "failed" in result.stdout and "completed" in result.stdout  # the runs table
    gpus = [(Path(r["run_dir"]) / "gpus.txt").read_text() for r in record["runs"]]
    assert gpus[:2] == ["5", "7"] and set(gpus) == {"5", "7"}, gpus  # slot 0, slot 1


def start_sweep(project: Project, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "pystematic", "sweep", *args],
        cwd=project.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_checkpoints(
    proc: subprocess.Popen[str], project: Project, output: str, count: int
) -> list[Path]:
    """The run dirs once *count* of them hold a checkpoint (the runs are well under way)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        dirs = run_dirs(project, "slow", output)
        ready = [d for d in dirs if any((d / "checkpoints").glob("*.pt"))]
        if len(ready) >= count:
            return ready
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"the runs never saved a checkpoint: {proc.communicate()}")


def test_interrupted_sweep_resumes_to_the_same_metrics(sweeps: Project) -> None:
    args = ("slow", "--grid", "a=1,2,3", "--jobs", "2", "--random-seed", "5", "--steps", "6")
    proc = start_sweep(sweeps, *args, "--pause", "0.5", "--output-dir", "stopped")
    wait_for_checkpoints(proc, sweeps, "stopped", 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    (folder,) = (sweeps.root / "stopped" / "slow" / "sweeps").iterdir()
    record = json.loads((folder / "sweep.json").read_text())
    assert record["status"] == "interrupted"
    assert [r["status"] for r in record["runs"]] == ["interrupted", "interrupted", "queued"]
    stopped = [Path(r["run_dir"]) for r in record["runs"][:2]]
    for path in stopped:
        data = run_json(path)
        assert data["status"] == "interrupted" and not alive(data["pid"])
    assert f"resume with: pystematic sweep --resume {folder}" in err

    resumed = sweeps.run("sweep", "--resume", str(folder), "--json")
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads((folder / "sweep.json").read_text())
    assert [r["status"] for r in record["runs"]] == ["completed"] * 3
    assert [Path(r["run_dir"]) for r in record["runs"][:2]] == stopped  # continued in place
    assert all(len(run_json(p)["resumes"]) == 1 for p in stopped)
    assert len(run_dirs(sweeps, "slow", "stopped")) == 3  # every point ran exactly once
    assert sorted(r["id"] for r in resumed.json()) == sorted(r["run_id"] for r in record["runs"])
    again = sweeps.run("sweep", "--resume", str(folder))  # nothing left to run
    assert again.returncode == 0 and "0 of 3 runs" in again.stderr

    whole = sweeps.run("sweep", *args, "--pause", "0", "--output-dir", "whole")  # same values
    assert whole.returncode == 0, whole.stderr
    (other,) = (sweeps.root / "whole" / "slow" / "sweeps").iterdir()
    reference = json.loads((other / "sweep.json").read_text())
    for a, b in zip(record["runs"], reference["runs"], strict=True):
        assert a["params"] == b["params"]
        comparison = compare_metrics(a["run_dir"], b["run_dir"])
        assert comparison.identical and comparison.steps == 6, comparison.verdict()


def test_sigterm_stops_the_runs_and_leaves_no_process(sweeps: Project) -> None:
    proc = start_sweep(sweeps, "slow", "--steps", "50", "--pause", "0.2")
    (path,) = wait_for_checkpoints(proc, sweeps, "output", 1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    data = run_json(path)
    assert (data["status"], data["error"]) == ("interrupted", "SIGTERM")
    assert not alive(data["pid"])
    assert sweep_record(sweeps, "slow")[1]["status"] == "interrupted"


def test_the_same_sweep_seed_gives_the_same_sweep(sweeps: Project) -> None:
    args = ["toy", "--sample", "lr=uniform(0,1)", "--sample", "b=choice(x,y)", "--trials", "1"]
    args += ["--repeat", "2", "--jobs", "2", "--random-seed", "11", "--output-dir"]
    first, second = sweeps.run("sweep", *args, "one"), sweeps.run("sweep", *args, "two")
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    records = []
    for name in ("one", "two"):
        (folder,) = (sweeps.root / name / "toy" / "sweeps").iterdir()
        records.append(json.loads((folder / "sweep.json").read_text()))
    runs_a, runs_b = records[0]["runs"], records[1]["runs"]
    assert [r["params"] for r in runs_a] == [r["params"] for r in runs_b]
    assert runs_a[0]["params"]["lr"] == runs_a[1]["params"]["lr"]  # one trial, repeated
    assert runs_a[0]["params"]["random_seed"] != runs_a[1]["params"]["random_seed"]
    for a, b in zip(runs_a, runs_b, strict=True):
        assert compare_metrics(a["run_dir"], b["run_dir"]).identical
    assert not compare_metrics(runs_a[0]["run_dir"], runs_a[1]["run_dir"]).identical


def test_slurm_executor_submits_through_submitit(sweeps: Project) -> None:
    result = sweeps.run(
        "sweep", "toy", "--grid", "a=1,2", "--executor", "slurm", "--slurm-time", "10",
        "--slurm-cpus-per-task", "1", env={"PYSTEMATIC_SUBMITIT_CLUSTER": "local"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    folder, record = sweep_record(sweeps, "toy")
    assert record["settings"]["slurm"] == {"time": 10, "cpus_per_task": 1}
    assert [r["status"] for r in record["runs"]] == ["completed", "completed"]
    for run in record["runs"]:
        data = run_json(Path(run["run_dir"]))
        assert (data["sweep"], data["sweep_index"]) == (folder.name, run["index"])
    logs = sorted(p.name for p in (folder / "submitit").glob("*_log.out"))
    assert len(logs) == 2, logs  # submitit ran each run as its own job


def test_param_search_example_from_python(project: Project) -> None:
    """The original pystematic's param_search example, ported: an experiment that runs
    another one many times through ps.run_parameter_sweep; plus run_in_new_process."""
    example = Path(__file__).resolve().parents[1] / "examples" / "param_search"
    project.write("param_search.py", (example / "param_search.py").read_text())
    project.write(
        "handle.py",
        """
        import json, sys
        from param_search import main_experiment

        handle = main_experiment.run_in_new_process({"max_sleep": 0.0})
        assert handle.run_dir.is_dir()  # made before the child starts
        handle.join()
        print(json.dumps([handle.exitcode, str(handle.run_dir)]))
        """,
    )
    result: Result = project.python(
        "param_search.py", "--num-runs", "2", "--processes", "2", "--max-sleep", "0.2"
    )
    assert result.returncode == 0, result.stderr
    (parent,) = project.run_dirs("param_search")
    lines = (parent / "output.log").read_text().splitlines()
    printed = [line for line in lines if line.startswith("completed ")]
    runs = [p for p in project.run_dirs("main_experiment") if p.name != "sweeps"]
    assert sorted(printed) == sorted(f"completed {p}" for p in runs) and len(runs) == 2
    seeds = {run_json(p)["params"]["random_seed"] for p in runs}
    assert len(seeds) == 2
    assert len({run_json(p)["sweep"] for p in runs}) == 1

    handle = project.python("handle.py")
    assert handle.returncode == 0, handle.stderr
    code, run_dir = json.loads(handle.stdout.splitlines()[-1])
    assert code == 0 and run_json(Path(run_dir))["status"] == "completed"
    assert "NEW" in handle.stdout  # the child writes where its parent does
