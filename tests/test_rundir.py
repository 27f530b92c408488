"""Run folders: sortable unique ids, atomic creation, run.json merged under a lock."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import Project, tomllib
from pystematic import rundir
from pystematic.errors import RunDirError

RUN_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{4}$")


def test_run_id_is_a_utc_timestamp_plus_a_suffix() -> None:
    run_id = rundir.new_run_id()
    assert RUN_ID.match(run_id), run_id
    stamp = datetime.strptime(run_id[:15], "%Y%m%d-%H%M%S").replace(tzinfo=timezone.utc)
    # UTC, not local time: within a few minutes of now (generous against a slow machine).
    assert abs(datetime.now(timezone.utc) - stamp) < timedelta(minutes=10)


def test_run_ids_sort_in_creation_order_across_seconds() -> None:
    first = rundir.new_run_id()
    time.sleep(1.01 - time.time() % 1)  # into the next second
    second = rundir.new_run_id()
    assert first[:15] < second[:15]
    assert sorted([second, first]) == [first, second]


def test_many_run_dirs_in_one_second_are_all_distinct(tmp_path: Path) -> None:
    made = [rundir.create_run_dir(tmp_path, "exp") for _ in range(300)]
    assert len(set(made)) == 300
    assert all(p.parent == tmp_path / "exp" and RUN_ID.match(p.name) for p in made)
    assert all(p.is_dir() and not any(p.iterdir()) for p in made)
    # Most were made within the same second as another one: the suffix kept them apart.
    per_second = Counter(p.name[:15] for p in made)
    assert max(per_second.values()) > 1


def test_existing_run_dirs_are_never_reused(tmp_path: Path) -> None:
    first = rundir.create_run_dir(tmp_path, "exp")
    (first / "mine.txt").write_text("keep")
    for _ in range(50):
        assert rundir.create_run_dir(tmp_path, "exp") != first
    assert (first / "mine.txt").read_text() == "keep"


CREATE_MANY = """
import sys, time
from pathlib import Path
from pystematic import rundir
out, start = Path(sys.argv[1]), float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
for _ in range(100):
    print(rundir.create_run_dir(out, "exp").name)
"""


@pytest.mark.slow
def test_parallel_processes_never_share_a_run_dir(tmp_path: Path) -> None:
    """8 processes x 100 folders at once: 800 ids, so suffixes collide and mkdir must retry."""
    out = tmp_path / "out"
    start = str(time.time() + 1.5)  # all start together, after their imports
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CREATE_MANY, str(out), start],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    names: list[str] = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        names += stdout.split()
    assert len(names) == 800
    assert len(set(names)) == 800
    assert sorted(p.name for p in (out / "exp").iterdir()) == sorted(names)


def test_unwritable_output_dir_is_a_run_dir_error(tmp_path: Path) -> None:
    blocker = tmp_path / "somefile"
    blocker.write_text("not a folder")
    with pytest.raises(RunDirError, match="cannot create output folder"):
        rundir.create_run_dir(blocker / "sub", "exp")


def test_parameters_toml_round_trips(tmp_path: Path) -> None:
    snapshot = {"lr": 0.1, "epochs": 3, "name": "a b", "tags": ["x", "y"], "deterministic": False}
    rundir.write_parameters(tmp_path, snapshot)
    assert tomllib.loads((tmp_path / rundir.PARAMETERS_TOML).read_text()) == snapshot


def test_run_json_merges_fields(tmp_path: Path) -> None:
    rundir.update_run_json(tmp_path, {"id": "x", "status": "running", "metrics": {}})
    rundir.update_run_json(tmp_path, {"metrics": {"loss": 0.5}})
    data = json.loads((tmp_path / rundir.RUN_JSON).read_text())
    assert data == {"id": "x", "status": "running", "metrics": {"loss": 0.5}}
    assert rundir.read_run_json(tmp_path) == data
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_final_status_never_gets_weaker(tmp_path: Path) -> None:
    rundir.update_run_json(tmp_path, {"status": "running"})
    rundir.update_run_json(tmp_path, {"status": "failed", "error": "boom", "failed_rank": 1})
    # The SIGTERM the other ranks got arrives later: it must not hide the failure.
    rundir.update_run_json(
        tmp_path, {"status": "interrupted", "error": "SIGTERM", "metrics": {"a": 1.0}}
    )
    data = rundir.read_run_json(tmp_path)
    assert data["status"] == "failed"
    assert data["error"] == "boom"
    assert data["failed_rank"] == 1
    assert data["metrics"] == {"a": 1.0}  # other fields still merge


def test_the_first_rank_to_fail_keeps_the_record_unless_the_launcher_overrules(
    tmp_path: Path,
) -> None:
    rundir.update_run_json(tmp_path, {"status": "running"})
    rundir.finish_record(tmp_path, {"status": "failed", "error": "status 3", "failed_rank": 1})
    # Its peer dies of the closed connection afterwards (under torchrun nobody else writes).
    rundir.finish_record(tmp_path, {"status": "failed", "error": "closed", "failed_rank": 0})
    data = rundir.read_run_json(tmp_path)
    assert (data["error"], data["failed_rank"]) == ("status 3", 1)
    # `pystematic distributed` knows better from the ranks' error files.
    rundir.finish_record(
        tmp_path, {"status": "failed", "error": "ValueError", "failed_rank": 0}, overrule=True
    )
    data = rundir.read_run_json(tmp_path)
    assert (data["error"], data["failed_rank"]) == ("ValueError", 0)


def test_a_restart_reopens_a_failed_run_and_says_why(tmp_path: Path) -> None:
    rundir.start_record(tmp_path, {"argv": ["distributed", "x"], "params": {"a": 1}})
    rundir.update_run_json(tmp_path, {"pid": 1, "host": "launcher-host"})
    rundir.finish_record(
        tmp_path, {"status": "failed", "error": "boom", "failed_rank": 1, "metrics": {"l": 2.0}}
    )
    argv = ["distributed", "x"]
    n = rundir.note_restart(
        tmp_path, argv, cause="torchelastic", count=1, checkpoint="checkpoint-4.pt", take_over=False
    )
    data = rundir.read_run_json(tmp_path)
    assert n == 1
    assert (data["status"], data["error"], data["failed_rank"], data["end"]) == (
        "running",
        None,
        None,
        None,
    )
    assert (data["pid"], data["host"]) == (1, "launcher-host")  # the launcher still owns it
    assert data["metrics"] == {"l": 2.0}
    [entry] = data["resumes"]
    assert entry["argv"] == argv and entry["restart"] == "torchelastic"
    assert (entry["count"], entry["checkpoint"]) == (1, "checkpoint-4.pt")
    assert entry["after"] == {"status": "failed", "error": "boom", "failed_rank": 1}
    assert not list(tmp_path.glob("parameters.*.toml"))  # a restart keeps its parameters

    # A requeued job with no checkpoint yet: this process takes over, nothing is kept.
    rundir.note_restart(tmp_path, argv, cause="slurm", count=1, checkpoint=None, take_over=True)
    data = rundir.read_run_json(tmp_path)
    assert (data["pid"], data["host"], data["metrics"]) == (os.getpid(), rundir.hostname(), {})
    assert [e["restart"] for e in data["resumes"]] == ["torchelastic", "slurm"]
    assert data["resumes"][1]["after"]["status"] == "running"


def test_status_goes_from_running_to_any_final_state(tmp_path: Path) -> None:
    for final in ("completed", "interrupted", "failed"):
        folder = tmp_path / final
        folder.mkdir()
        rundir.update_run_json(folder, {"status": "running"})
        rundir.update_run_json(folder, {"status": final})
        assert rundir.read_run_json(folder)["status"] == final


def test_read_run_json_missing_and_corrupt(tmp_path: Path) -> None:
    assert rundir.read_run_json(tmp_path) == {}
    (tmp_path / rundir.RUN_JSON).write_text('{"id": "half')
    with pytest.raises(RunDirError, match="unreadable"):
        rundir.read_run_json(tmp_path)


UPDATE_MANY = """
import sys
from pathlib import Path
from pystematic import rundir
folder, key = Path(sys.argv[1]), sys.argv[2]
for i in range(40):
    rundir.update_run_json(folder, {key: i, "last": key})
"""


@pytest.mark.slow
def test_concurrent_updates_lose_nothing(tmp_path: Path) -> None:
    """The launcher and ranks all update run.json: the lock keeps every field."""
    rundir.update_run_json(tmp_path, {"status": "running"})
    keys = [f"rank{i}" for i in range(4)]
    procs = [
        subprocess.Popen([sys.executable, "-c", UPDATE_MANY, str(tmp_path), key], text=True)
        for key in keys
    ]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    data = rundir.read_run_json(tmp_path)
    assert {key: data[key] for key in keys} == dict.fromkeys(keys, 39)
    assert data["status"] == "running"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


PARALLEL_EXPERIMENT = """
import pystematic as ps

@ps.parameter("k", type=int, default=0)
@ps.experiment
def tiny(params, context):
    (context.output_dir / "k.txt").write_text(str(params.k))
    print("k =", params.k)
"""


@pytest.mark.slow
def test_parallel_cli_runs_get_their_own_run_dirs(project: Project) -> None:
    """8 `pystematic run` processes at once into one output dir."""
    project.write("pystematic.toml", 'modules = ["exps"]\n')
    project.write("exps/tiny.py", PARALLEL_EXPERIMENT)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pystematic", "run", "tiny", "--k", str(k)],
            cwd=project.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(8)
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, stderr
    dirs = project.run_dirs("tiny")
    assert len(dirs) == 8
    seen = set()
    for run_dir in dirs:
        info = json.loads((run_dir / "run.json").read_text())
        assert info["id"] == run_dir.name
        assert info["status"] == "completed"
        k = int((run_dir / "k.txt").read_text())
        assert tomllib.loads((run_dir / "parameters.toml").read_text())["k"] == k
        assert info["params"]["k"] == k
        assert (run_dir / "output.log").read_text() == f"k = {k}\n"
        seen.add(k)
    assert seen == set(range(8))
    assert len({json.loads((d / "run.json").read_text())["pid"] for d in dirs}) == 8
