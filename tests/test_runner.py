"""Runs through the real CLI: run.json and its statuses, signals, output.log, git, seeds, runs."""

from __future__ import annotations

import getpass
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import pystematic
from conftest import Project, Result, read_metrics, tomllib
from pystematic import seeding

# Every field section 4 of the design lists for run.json.
RUN_JSON_KEYS = [
    "id",
    "experiment",
    "module",
    "file",
    "argv",
    "status",
    "start",
    "end",
    "duration",
    "error",
    "traceback",
    "failed_rank",
    "pid",
    "host",
    "user",
    "heartbeat",
    "python_version",
    "torch_version",
    "cuda_version",
    "gpu",
    "pystematic_version",
    "world_size",
    "backend",
    "git_commit",
    "git_branch",
    "git_dirty",
    "resumes",
    "tags",
    "params",
    "metrics",
]

CONFIG = 'modules = ["exps"]\n'

HELLO = """
    import os
    import subprocess
    import sys

    import pystematic as ps

    @ps.parameter("n", type=int, default=3)
    @ps.experiment
    def hello(params, context):
        \"\"\"Write to every channel and record a few steps.\"\"\"
        print("py-stdout", flush=True)
        print("py-stderr", file=sys.stderr, flush=True)
        os.write(1, b"raw-fd1\\n")
        subprocess.run(["echo", "from-child"], check=True)
        for i in range(params.n):
            context.recorder.scalar("x", i * 0.5)
            context.recorder.step()
"""

CRASH = """
    import pystematic as ps

    @ps.experiment
    def crash(params, context):
        context.recorder.scalar("before", 1.5)
        context.recorder.step()
        print("about to fail", flush=True)
        raise ValueError("boom 42")
"""

LOOPER = """
    import time

    import pystematic as ps

    @ps.parameter("steps", type=int, default=3000)
    @ps.experiment
    def looper(params, context):
        for i in range(params.steps):
            print(f"line {i}", flush=True)
            context.recorder.scalar("i", float(i))
            context.recorder.step()
            if i == 3:
                (context.output_dir / "looping").touch()
            time.sleep(0.02)
"""

SEEDS = """
    import json
    import random

    import numpy as np
    import torch

    import pystematic as ps


    def through_proxy():
        return {"seed": ps.context.seed, "output_dir": str(ps.context.output_dir)}


    @ps.experiment
    def seeds(params, context):
        seen = {
            "random": random.random(),
            "numpy": float(np.random.random()),
            "rng": float(context.rng.random()),
            "torch": torch.rand(3).tolist(),
            "data": context.new_seed("data"),
            "plain": context.new_seed(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "seed": context.seed,
            "output_dir": str(context.output_dir),
            "proxy": through_proxy(),
        }
        (context.output_dir / "seen.json").write_text(json.dumps(seen))
"""

FIT = """
    import pystematic as ps

    @ps.parameter("lr", type=float, default=0.1)
    @ps.parameter("width", type=int, default=8)
    @ps.experiment
    def fit(params, context):
        context.recorder.scalar("loss", params.lr * 100)
        context.recorder.step()
        context.recorder.scalar("loss", params.lr * 10)
        context.recorder.step()

    @ps.parameter("depth", type=int, default=2)
    @ps.experiment
    def other(params, context):
        context.recorder.scalar("score", 1.0)
        context.recorder.step()
"""


def run_json(run_dir: Path) -> dict[str, Any]:
    data = json.loads((run_dir / "run.json").read_text())
    assert isinstance(data, dict)
    return data


def parameters(run_dir: Path) -> dict[str, Any]:
    return tomllib.loads((run_dir / "parameters.toml").read_text())


def utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    offset = moment.utcoffset()
    assert offset is not None and offset.total_seconds() == 0, text
    return moment


def error_line(result: Result) -> str:
    """The one line a user mistake prints: no traceback, nothing else on stderr."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def no_git(tmp_path: Path) -> dict[str, str]:
    """Keep git from finding a repository above tmp_path."""
    return {"GIT_CEILING_DIRECTORIES": str(tmp_path)}


# ---------------------------------------------------------------- completed, failed


def test_completed_run_records_everything_and_tees_output(project: Project, tmp_path: Path) -> None:
    import torch

    project.write("pystematic.toml", CONFIG)
    project.write("exps/hello.py", HELLO)
    result = project.run(
        "run", "hello", "--n", "4", "--tag", "smoke", "--tag", "x", env=no_git(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    run_dir = project.only_run_dir("hello")
    assert f"run dir: {run_dir}" in result.stderr

    run = run_json(run_dir)
    assert set(RUN_JSON_KEYS) <= set(run)
    assert run["id"] == run_dir.name
    assert run["experiment"] == "hello"
    assert run["module"] == "exps.hello"
    assert Path(run["file"]).resolve() == (project.root / "exps/hello.py").resolve()
    assert run["argv"][-7:] == ["hello", "--n", "4", "--tag", "smoke", "--tag", "x"]
    assert run["status"] == "completed"
    assert run["error"] is None and run["traceback"] is None and run["failed_rank"] is None
    start, end = utc(run["start"]), utc(run["end"])
    assert start <= end
    assert start <= utc(run["heartbeat"])
    assert isinstance(run["duration"], float) and run["duration"] >= 0
    assert isinstance(run["pid"], int) and run["pid"] != os.getpid()
    assert run["host"] == socket.gethostname()
    assert run["user"] == getpass.getuser()
    assert run["python_version"] == platform.python_version()
    assert run["torch_version"] == torch.__version__
    assert run["cuda_version"] == torch.version.cuda
    if not torch.cuda.is_available():
        assert run["gpu"] is None
    assert run["pystematic_version"] == pystematic.__version__
    assert run["world_size"] == 1
    assert run["git_commit"] is None and run["git_branch"] is None and run["git_dirty"] is None
    assert run["resumes"] == []
    assert run["tags"] == ["smoke", "x"]
    assert run["params"] == parameters(run_dir)
    assert run["params"]["n"] == 4
    assert run["metrics"] == {"x": 1.5}

    assert [(m["step"], m["x"]) for m in read_metrics(run_dir)] == [
        (0, 0.0),
        (1, 0.5),
        (2, 1.0),
        (3, 1.5),
    ]
    assert not (run_dir / "git.diff").exists()
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    packages = (run_dir / "packages.txt").read_text().splitlines()
    assert f"torch=={torch.__version__}" in packages
    assert "git" not in result.stderr.replace(str(project.root), "")

    # Output is tee'd: output.log gets Python's prints, raw fd writes and a child process's
    # output; the terminal (this test's pipes) gets each line once, on its own stream.
    log = (run_dir / "output.log").read_text().splitlines()
    for line in ("py-stdout", "raw-fd1", "from-child", "py-stderr"):
        assert log.count(line) == 1, log
    out, err = result.stdout.splitlines(), result.stderr.splitlines()
    for line in ("py-stdout", "raw-fd1", "from-child"):
        assert out.count(line) == 1 and line not in err
    assert err.count("py-stderr") == 1 and "py-stderr" not in out


def test_failing_experiment_records_the_traceback(project: Project, tmp_path: Path) -> None:
    project.write("pystematic.toml", CONFIG)
    project.write("exps/crash.py", CRASH)
    result = project.run("run", "crash", env=no_git(tmp_path))
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "ValueError: boom 42" in result.stderr
    run_dir = project.only_run_dir("crash")
    run = run_json(run_dir)
    assert run["status"] == "failed"
    assert run["error"] == "ValueError: boom 42"
    assert 'raise ValueError("boom 42")' in run["traceback"]
    assert run["traceback"].rstrip().endswith("ValueError: boom 42")
    assert run["failed_rank"] is None
    assert utc(run["start"]) <= utc(run["end"])
    assert run["metrics"] == {"before": 1.5}
    assert [m["before"] for m in read_metrics(run_dir)] == [1.5]
    log = (run_dir / "output.log").read_text()
    assert "about to fail" in log and "ValueError: boom 42" in log


# ---------------------------------------------------------------- signals


@pytest.fixture
def looping_run(project: Project, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A `pystematic run looper` process that has started recording steps."""
    project.write("pystematic.toml", CONFIG)
    project.write("exps/looper.py", LOOPER)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **no_git(tmp_path)}
    with open(tmp_path / "stdout.txt", "wb") as out, open(tmp_path / "stderr.txt", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pystematic", "run", "looper"],
            cwd=project.root,
            env=env,
            stdout=out,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 120  # a safety net, not a timing assertion
        while True:
            dirs = project.run_dirs("looper")
            if dirs and (dirs[0] / "looping").exists():
                break
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.05)
        # run.json was written at the start, before main ran.
        assert run_json(dirs[0])["status"] == "running"
        yield proc, dirs[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("signum", "exit_code", "error"),
    [(signal.SIGINT, 130, "KeyboardInterrupt"), (signal.SIGTERM, 143, "SIGTERM")],
    ids=["sigint", "sigterm"],
)
def test_signal_leaves_an_interrupted_run(
    looping_run: tuple[subprocess.Popen[bytes], Path],
    tmp_path: Path,
    signum: int,
    exit_code: int,
    error: str,
) -> None:
    proc, run_dir = looping_run
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == exit_code
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in stderr

    run = run_json(run_dir)
    assert run["status"] == "interrupted"
    assert run["error"] == error
    assert utc(run["start"]) <= utc(run["end"])
    assert isinstance(run["duration"], float)

    # Every step recorded before the signal is on disk, and run.json has the last one.
    metrics = read_metrics(run_dir)
    steps = [m["step"] for m in metrics]
    assert len(steps) >= 4
    assert steps == list(range(len(steps)))
    assert all(m["i"] == float(m["step"]) for m in metrics)
    assert run["metrics"] == {"i": metrics[-1]["i"]}

    # output.log holds what was printed so far, the same lines the terminal got.
    def printed(text: str) -> list[int]:
        return [int(m) for m in re.findall(r"^line (\d+)$", text, flags=re.M)]

    logged = printed((run_dir / "output.log").read_text())
    assert logged == list(range(len(logged)))
    assert logged[-1] >= steps[-1]
    assert printed((tmp_path / "stdout.txt").read_text()) == logged


# ---------------------------------------------------------------- git


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.mark.slow
def test_git_state_is_recorded(project: Project, tmp_path: Path) -> None:
    project.write("pystematic.toml", CONFIG)
    project.write("exps/hello.py", HELLO)
    git(project.root, "init", "-q", "-b", "trunk")
    git(project.root, "add", ".")
    git(project.root, "commit", "-q", "-m", "first")
    commit = git(project.root, "rev-parse", "HEAD")

    # A clean checkout: commit and branch, not dirty, no git.diff. The run's own output,
    # the discovery cache and __pycache__ are untracked but are not source changes.
    assert project.run("run", "hello", "--n", "1").returncode == 0
    clean = project.only_run_dir("hello")
    run = run_json(clean)
    assert (run["git_commit"], run["git_branch"], run["git_dirty"]) == (commit, "trunk", False)
    assert not (clean / "git.diff").exists()

    # A tracked file modified and an untracked source file: dirty, both in git.diff.
    hello = project.root / "exps/hello.py"
    hello.write_text(hello.read_text() + "# changed here\n")
    project.write("exps/helper.py", "HELPER = 42\n")
    result = project.run("run", "hello", "--n", "1")
    assert result.returncode == 0, result.stderr
    dirty = next(d for d in project.run_dirs("hello") if d != clean)
    run = run_json(dirty)
    assert (run["git_commit"], run["git_branch"], run["git_dirty"]) == (commit, "trunk", True)
    diff = (dirty / "git.diff").read_text()
    assert "+# changed here" in diff
    assert "b/exps/helper.py" in diff and "+HELPER = 42" in diff
    assert "output/" not in diff and ".pyc" not in diff

    # git.diff turns a checkout of the commit into the tree that ran.
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(project.root), str(clone))
    git(clone, "apply", str(dirty / "git.diff"))
    assert (clone / "exps/hello.py").read_text() == hello.read_text()
    assert (clone / "exps/helper.py").read_text() == "HELPER = 42\n"


# ---------------------------------------------------------------- seeds


def expected_draws(seed: int) -> dict[str, Any]:
    """What the seeded generators give first, computed here with the same seed."""
    import numpy as np
    import torch

    chain = seeding.SeedChain(seed)
    return {
        "random": random.Random(seed).random(),
        "numpy": float(np.random.RandomState(seed).random_sample()),
        "rng": float(seeding.rank_rng(seed, 0).random()),
        "torch": torch.rand(3, generator=torch.Generator().manual_seed(seed)).tolist(),
        "data": chain.new_seed("data"),
        "plain": chain.new_seed(),
    }


@pytest.mark.slow
def test_seed_given_or_drawn_seeds_everything(project: Project, tmp_path: Path) -> None:
    project.write("pystematic.toml", CONFIG)
    project.write("exps/seeds.py", SEEDS)
    given = project.run(
        "run", "seeds", "--random-seed", "123", "--deterministic", env=no_git(tmp_path)
    )
    assert given.returncode == 0, given.stderr
    drawn = project.run("run", "seeds", env=no_git(tmp_path))
    assert drawn.returncode == 0, drawn.stderr
    dirs = project.run_dirs("seeds")
    assert len(dirs) == 2
    by_seed = {json.loads((d / "seen.json").read_text())["seed"]: d for d in dirs}
    assert 123 in by_seed
    given_dir = by_seed.pop(123)
    (drawn_seed, drawn_dir) = by_seed.popitem()

    for run_dir, seed, deterministic in ((given_dir, 123, True), (drawn_dir, drawn_seed, False)):
        seen = json.loads((run_dir / "seen.json").read_text())
        assert parameters(run_dir)["random_seed"] == seed
        assert parameters(run_dir)["deterministic"] is deterministic
        assert run_json(run_dir)["params"]["random_seed"] == seed
        assert 0 <= seed < 2**32
        assert seen["deterministic"] is deterministic
        # random, numpy (global and context.rng), torch and new_seed all follow the seed.
        assert {k: seen[k] for k in expected_draws(seed)} == expected_draws(seed)
        assert seen["proxy"] == {"seed": seed, "output_dir": str(run_dir)}
        assert seen["output_dir"] == str(run_dir)
        log = [json.loads(line) for line in (run_dir / "seeds.log").read_text().splitlines()]
        assert log == [
            {"rank": 0, "purpose": "master", "value": seed, "call": 0},
            {"rank": 0, "purpose": "data", "value": seen["data"], "call": 1},
            {"rank": 0, "purpose": "", "value": seen["plain"], "call": 2},
        ]


# ---------------------------------------------------------------- bad input


@pytest.fixture
def tiny(project: Project, tmp_path: Path) -> Project:
    project.write("pystematic.toml", CONFIG)
    project.write("exps/fit.py", FIT)
    return project


def test_output_dir_under_a_file_is_one_line_exit_2(tiny: Project, tmp_path: Path) -> None:
    (tiny.root / "somefile").write_text("a file, not a folder")
    result = tiny.run("run", "fit", "--output-dir", "somefile/sub")
    assert result.returncode == 2
    assert "somefile" in error_line(result)
    assert not (tiny.root / "output").exists()


# ---------------------------------------------------------------- pystematic runs


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """Three runs of `fit` with different --lr and one of `other`, made in parallel."""
    tmp = tmp_path_factory.mktemp("tracked")
    project = Project(tmp / "proj")
    project.write("pystematic.toml", CONFIG)
    project.write("exps/fit.py", FIT)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GIT_CEILING_DIRECTORIES": str(tmp)}
    commands = [["fit", "--lr", lr] for lr in ("0.1", "0.01", "0.5")] + [["other"]]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pystematic", "run", *command],
            cwd=project.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for command in commands
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    return project


def runs_json(project: Project, *args: str) -> list[dict[str, Any]]:
    result = project.run("runs", "--json", *args)
    assert result.returncode == 0, result.stderr
    records = result.json()
    assert isinstance(records, list)
    return records


@pytest.mark.slow
def test_runs_json_lists_every_run(tracked: Project) -> None:
    records = runs_json(tracked)
    assert sorted(r["experiment"] for r in records) == ["fit", "fit", "fit", "other"]
    for record in records:
        assert {"id", "experiment", "status", "start", "duration", "path"} <= set(record)
        run_dir = Path(record["path"])
        assert run_dir.parent == tracked.root / "output" / record["experiment"]
        assert record["id"] == run_dir.name
        run = run_json(run_dir)
        assert record["status"] == "completed"
        assert record["start"] == run["start"]
        assert record["duration"] == run["duration"]
        assert record["params"] == parameters(run_dir)
        assert record["metrics"] == run["metrics"]
        if record["experiment"] == "fit":
            assert record["metrics"] == {"loss": record["params"]["lr"] * 10}
    assert [r["experiment"] for r in runs_json(tracked, "fit")] == ["fit"] * 3


@pytest.mark.slow
def test_runs_filter_sort_last(tracked: Project) -> None:
    [only] = runs_json(tracked, "fit", "--filter", "lr=0.1")
    assert only["params"]["lr"] == 0.1
    by_loss = runs_json(tracked, "fit", "--sort", "loss")
    assert [r["params"]["lr"] for r in by_loss] == [0.01, 0.1, 0.5]
    by_lr_down = runs_json(tracked, "fit", "--sort", "-lr")
    assert [r["params"]["lr"] for r in by_lr_down] == [0.5, 0.1, 0.01]
    latest = max(runs_json(tracked, "fit"), key=lambda r: (r["start"], r["id"]))
    assert [r["id"] for r in runs_json(tracked, "fit", "--last", "1")] == [latest["id"]]


@pytest.mark.slow
def test_runs_table_names_the_differing_parameter(tracked: Project) -> None:
    result = tracked.run("runs", "fit", env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if " lr" in line)
    assert "loss" in header
    assert "width" not in result.stdout  # the same in every run: not a column
    for record in runs_json(tracked, "fit"):
        assert record["id"] in result.stdout
    assert "0.01" in result.stdout and "0.5" in result.stdout


@pytest.mark.slow
def test_params_file_of_another_experiment_is_refused(tracked: Project) -> None:
    other = tracked.only_run_dir("other")
    result = tracked.run("run", "fit", "--params-file", str(other / "parameters.toml"))
    assert result.returncode == 2
    line = error_line(result)
    assert "'other'" in line and "'fit'" in line
    assert len(tracked.run_dirs("fit")) == 3


@pytest.mark.slow
def test_runs_skips_a_corrupt_run_json_with_a_warning(tracked: Project, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tracked.root / "output", copy)
    broken = sorted((copy / "fit").iterdir())[0]
    (broken / "run.json").write_text('{"id": "half a fi')
    result = tracked.run("runs", "--json", "--output-dir", str(copy))
    assert result.returncode == 0, result.stderr
    ids = {r["id"] for r in result.json()}
    assert len(ids) == 3 and broken.name not in ids
    assert str(broken / "run.json") in result.stderr
    table = tracked.run("runs", "--output-dir", str(copy), env={"COLUMNS": "200"})
    assert table.returncode == 0, table.stderr
    assert str(broken / "run.json") in table.stderr
    assert all(run_id in table.stdout for run_id in ids)


# ---------------------------------------------------------------- how main ends

EXITS = """
    import os
    import sys

    import pystematic as ps

    @ps.parameter("how", default="zero")
    @ps.experiment
    def leave(params, context):
        context.recorder.scalar("x", 1.0)
        context.recorder.step()
        if params.how == "zero":
            sys.exit(0)
        if params.how == "three":
            sys.exit(3)
        if params.how == "text":
            sys.exit("bad input file")
        os._exit(5)
"""


@pytest.mark.parametrize(
    ("how", "code", "status", "error"),
    [
        ("zero", 0, "completed", None),
        ("three", 3, "failed", "main exited with status 3"),
        ("text", 1, "failed", "main exited with 'bad input file'"),
    ],
)
def test_sys_exit_in_main(
    project: Project, how: str, code: int, status: str, error: str | None
) -> None:
    project.write("exps.py", EXITS)
    result = project.run("run", "leave", "--how", how)
    assert result.returncode == code, result.stderr
    record = run_json(project.only_run_dir("leave"))
    assert (record["status"], record["error"]) == (status, error)
    assert record["metrics"] == {"x": 1.0}
    if how == "text":
        assert "bad input file" in result.stderr


def test_os_exit_in_main_is_died(project: Project) -> None:
    project.write("exps.py", EXITS)
    result = project.run("run", "leave", "--how", "os_exit")
    assert result.returncode == 5
    (record,) = project.run("runs", "--json").json()
    assert record["status"] == "died"


NESTED = """
    import json
    import random

    import pystematic as ps

    @ps.experiment
    def inner(params, context):
        return 1

    @ps.experiment
    def outer(params, context):
        random.random()
        state = random.getstate()
        try:
            inner.run({})
            message = None
        except ps.PystematicError as e:
            message = str(e)
        seen = {
            "message": message,
            "same_rng": random.getstate() == state,
            "same_context": ps.context.output_dir == context.output_dir,
        }
        (context.output_dir / "nested.json").write_text(json.dumps(seen))
"""


def test_an_experiment_started_inside_a_running_one_is_refused(project: Project) -> None:
    project.write("exps.py", NESTED)
    result = project.run("run", "outer")
    assert result.returncode == 0, result.stderr
    seen = json.loads((project.only_run_dir("outer") / "nested.json").read_text())
    assert seen["message"] == (
        "cannot start experiment 'inner' inside the running experiment 'outer': "
        "one experiment runs at a time in a process"
    )
    assert seen["same_rng"] and seen["same_context"]
    assert project.run_dirs("inner") == []


LEAVER = """
    import subprocess
    import threading

    import pystematic as ps

    @ps.parameter("what", default="child")
    @ps.experiment
    def leaver(params, context):
        if params.what == "child":
            proc = subprocess.Popen(["sleep", "300"])
            (context.output_dir / "child.pid").write_text(str(proc.pid))
        else:
            threading.Thread(target=threading.Event().wait, name="forever", daemon=False).start()
"""


def test_children_left_running_are_stopped_and_named(project: Project) -> None:
    project.write("exps.py", LEAVER)
    result = project.run("run", "leaver", timeout=60)
    assert result.returncode == 0, result.stderr
    run_dir = project.only_run_dir("leaver")
    pid = int((run_dir / "child.pid").read_text())
    assert not Path(f"/proc/{pid}").exists()
    log = (run_dir / "output.log").read_text()
    assert f"main left child processes running, stopping them: {pid} (sleep 300)" in log
    assert run_json(run_dir)["status"] == "completed"


def test_a_thread_left_running_does_not_hold_the_process(project: Project) -> None:
    project.write("exps.py", LEAVER)
    result = project.run("run", "leaver", "--what", "thread", timeout=60)
    assert result.returncode == 0, result.stderr
    run_dir = project.only_run_dir("leaver")
    assert (
        "main left threads running, not waiting for them: forever"
        in (run_dir / "output.log").read_text()
    )
    assert run_json(run_dir)["status"] == "completed"


LOADER = """
    import functools
    import json

    import numpy as np

    import pystematic as ps

    def note(folder, worker_id):
        draw = float(np.random.random())
        (folder / f"worker{worker_id}.json").write_text(json.dumps(draw))

    @ps.experiment
    def loader(params, context):
        folder = context.output_dir
        data = context.dataloader(
            list(range(8)),
            batch_size=2,
            num_workers=2,
            worker_init_fn=functools.partial(note, folder),
        )
        list(data)
"""


def test_dataloader_runs_the_users_worker_init_fn_after_the_seeding(project: Project) -> None:
    project.write("exps.py", LOADER)
    draws = []
    for _ in range(2):
        assert project.run("run", "loader", "--random-seed", "7").returncode == 0
        run_dir = project.run_dirs("loader")[-1]
        draws.append([json.loads((run_dir / f"worker{w}.json").read_text()) for w in (0, 1)])
    assert draws[0] == draws[1]  # seeded before the user's function ran
    assert draws[0][0] != draws[0][1]  # and differently per worker


HEAP = """
    import atexit
    import gc
    import json
    import sys

    import pystematic as ps

    @ps.experiment
    def heap(params, context):
        return gc.get_freeze_count()

    @ps.experiment
    def heap_at_exit(params, context):
        # Runs after the run ended, as the interpreter exits.
        atexit.register(print, "frozen at exit:", gc.get_freeze_count() > 0)

    if __name__ == "__main__":
        before = gc.get_freeze_count()
        during = heap.run()
        print(json.dumps([before, during, gc.get_freeze_count()]))
"""


def test_the_heap_is_frozen_while_main_runs_and_given_back_after_an_in_process_run(
    project: Project,
) -> None:
    project.write("exps.py", HEAP)
    result = project.python("exps.py")
    assert result.returncode == 0, result.stderr
    before, during, after = json.loads(result.stdout.splitlines()[-1])
    assert before == 0
    assert during > 10_000  # torch's and the modules' objects: out of the collector's way
    assert after == 0  # exp.run() in a notebook: the kernel's heap goes back as it was


def test_the_console_script_exits_with_the_heap_still_frozen(project: Project) -> None:
    project.write("exps.py", HEAP)
    result = project.run("run", "heap_at_exit")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "frozen at exit: True"
