"""`pystematic runs` through the real CLI: widths, pipes, died runs, errors, --sweep."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from _runs_data import write_run
from conftest import Project, Result, read_metrics
from pystematic.cli import run_cli
from pystematic.rundir import parse_time

EXPERIMENTS = """
    import os
    import signal

    import pystematic as ps

    @ps.parameter("lr", type=float, default=0.1)
    @ps.parameter("optimizer", type=str, default="adam")
    @ps.parameter("batch_size", type=int, default=32)
    @ps.parameter("die", type=bool, default=False)
    @ps.experiment
    def train(params, context):
        \"\"\"Sixteen steps; --die kills the process outright after them.\"\"\"
        for i in range(16):
            context.recorder.scalar("train/loss", params.lr / (i + 1))
            context.recorder.scalar("train/accuracy", 1 - params.lr / (i + 1))
            context.recorder.scalar("val/loss", 2 * params.lr / (i + 1))
            context.recorder.step()
        if params.die:
            context.recorder.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    @ps.parameter("checkpoint", type=str, default="last.pt")
    @ps.experiment
    def evaluate(params, context):
        context.recorder.scalar("test/accuracy", 0.75)
        context.recorder.step()

    @ps.experiment
    def never_run(params, context):
        pass
"""

TRAIN_RUNS = [
    ["--lr", "0.1", "--random-seed", "1"],
    ["--lr", "0.2", "--optimizer", "sgd", "--random-seed", "2"],
    ["--lr", "0.3", "--optimizer", "sgd", "--batch-size", "64", "--random-seed", "3"],
]
METRICS = ["train/loss", "train/accuracy", "val/loss"]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """Three runs of `train`, one of `evaluate`, then a `train` run killed with SIGKILL."""
    tmp = tmp_path_factory.mktemp("results")
    project = Project(tmp / "proj")
    project.write("pystematic.toml", 'modules = ["exps"]\n')
    project.write("exps/__init__.py", "")
    project.write("exps/models.py", EXPERIMENTS)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GIT_CEILING_DIRECTORIES": str(tmp)}
    # One after the other: the table's "least recently varied" follows start times.
    killed = ["train", "--die", "--lr", "0.4"]
    for args in [*(["train", *a] for a in TRAIN_RUNS), ["evaluate"], killed]:
        proc = subprocess.run(
            [sys.executable, "-m", "pystematic", "run", *args],
            cwd=project.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == (-9 if args is killed else 0), proc.stderr
    return project


def runs(project: Project, *args: str, columns: int | None = None) -> Result:
    env = {"COLUMNS": str(columns)} if columns else None
    if columns is None:
        os.environ.pop("COLUMNS", None)  # a pipe, as in `pystematic runs | less -S`
    return project.run("runs", *args, env=env)


def header_names(out: str) -> list[str]:
    """The column names of the first table (headers may fold over several lines)."""
    lines = out.splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("┏"))
    rows = []
    for line in lines[top + 1 :]:
        if line.startswith("┡"):
            break
        rows.append([cell.strip() for cell in line.strip()[1:-1].split("┃")])
    return ["".join(parts) for parts in zip(*rows, strict=True)]


def died_run(project: Project) -> dict[str, Any]:
    (record,) = [r for r in project.run("runs", "--json").json() if r["status"] == "died"]
    return record


@pytest.mark.slow
def test_at_80_columns_every_metric_is_shown_and_parameters_give_way(results: Project) -> None:
    """The issue's case: three runs at 80 columns showed no metric at all."""
    out = runs(results, "train", "--filter", "die=false", columns=80)
    assert out.returncode == 0, out.stderr
    assert max(len(line) for line in out.stdout.splitlines()) <= 80
    assert header_names(out.stdout) == ["id", "status", "duration", *METRICS]
    caption = " ".join(out.stdout.split())
    assert "not shown, too wide: lr, optimizer, batch_size, random_seed" in caption
    # with room for two parameters: the seed goes first, then optimizer, which last changed
    # at the second run, while batch_size changed at the third
    out = runs(results, "train", "--filter", "die=false", columns=95)
    assert header_names(out.stdout) == ["id", "status", "duration", "lr", "batch_size", *METRICS]
    assert "not shown, too wide: optimizer, random_seed" in " ".join(out.stdout.split())


@pytest.mark.slow
def test_the_sort_column_is_shown_and_the_runs_ranked(results: Project) -> None:
    out = runs(results, "train", "--sort", "-train/accuracy", "--columns", "lr", columns=80)
    assert out.returncode == 0, out.stderr
    assert header_names(out.stdout) == ["id", "lr", "train/accuracy"]
    lrs = [re.findall(r"[^│ ]+", line)[1] for line in out.stdout.splitlines() if "│ 2" in line]
    assert lrs == ["0.1", "0.2", "0.3", "0.4"]


@pytest.mark.slow
def test_at_200_columns_and_piped_every_differing_parameter_is_shown(results: Project) -> None:
    wide = runs(results, "train", columns=200)
    assert wide.returncode == 0, wide.stderr
    names = ["id", "status", "duration", "lr", "optimizer", "batch_size", "die", "random_seed"]
    assert header_names(wide.stdout) == [*names, *METRICS]
    assert "not shown" not in wide.stdout
    piped = runs(results, "train")
    assert piped.returncode == 0, piped.stderr
    assert "\x1b[" not in piped.stdout
    assert header_names(piped.stdout) == [*names, *METRICS]
    assert piped.stdout == wide.stdout  # a pipe gets the table's own width, no colour
    narrow = runs(results, "train", columns=60)
    assert "not shown" in narrow.stdout and "\x1b[" not in narrow.stdout


@pytest.mark.slow
def test_several_experiments_show_each_experiments_metrics(results: Project) -> None:
    out = runs(results, columns=100)
    assert out.returncode == 0, out.stderr
    titles = [line.rstrip() for line in out.stdout.splitlines() if re.match(r"\w+: \d+ run", line)]
    assert titles == ["train: 4 runs", "evaluate: 1 run"]
    evaluate = out.stdout[out.stdout.index("evaluate: 1 run") :]
    assert header_names(evaluate) == [
        "id", "status", "duration", "checkpoint", "deterministic", "random_seed",
        "test/accuracy",
    ]  # fmt: skip
    assert all(name in header_names(out.stdout) for name in METRICS)


@pytest.mark.slow
def test_a_died_run_shows_its_duration_and_last_metrics_from_metrics_jsonl(
    results: Project,
) -> None:
    record = died_run(results)
    run_dir = Path(record["path"])
    raw = json.loads((run_dir / "run.json").read_text())
    assert raw["status"] == "running" and raw["metrics"] == {}  # killed before a heartbeat
    steps = read_metrics(run_dir)
    assert len(steps) == 16
    last = steps[-1]
    assert record["metrics"] == {tag: last[tag] for tag in METRICS}
    started = raw["start"]
    assert record["duration"] > 0
    assert record["duration"] == pytest.approx(last["time"] - parse_time(started), abs=1e-3)
    table = runs(results, "train", "--filter", "status=died", "--columns", "duration,val/loss")
    assert f"{last['val/loss']:.5g}" in table.stdout


@pytest.mark.slow
def test_unknown_experiment_is_one_line_with_a_suggestion(results: Project) -> None:
    out = results.run("runs", "trian")
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1
    assert out.stderr.startswith("error: unknown experiment 'trian'")
    assert "did you mean 'train'?" in out.stderr
    # declared but never run (named as on the command line): not an error, just no runs
    empty = results.run("runs", "never-run")
    assert (empty.returncode, empty.stdout.strip()) == (0, "0 runs")


def test_unknown_names_are_errors_with_suggestions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_run(tmp_path, "train", "r1", params={"lr": 0.1}, metrics={"loss": 1.0}, sweep="s-1")
    write_run(tmp_path, "train", "r2", params={"lr": 0.2}, metrics={"loss": 2.0})
    (tmp_path / "train" / "sweeps" / "s-2").mkdir(parents=True)
    base = ["runs", "--output-dir", str(tmp_path)]
    cases = [
        (["trian"], "unknown experiment 'trian': no runs under", "did you mean 'train'?"),
        (["--columns", "lr,los"], "--columns los: no listed run has", "did you mean 'loss'?"),
        (["--columns", " , "], "--columns ' , ': expected names", ""),
        (["--sweep", "s-3"], "--sweep s-3: no such sweep", "did you mean"),
    ]
    for args, start, hint in cases:
        assert run_cli([*base, *args]) == 2, args
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1, (args, err)
        assert err.startswith(f"error: {start}") and hint in err, err
    # --sweep keeps that sweep's runs; a sweep with a folder but no runs yet lists none
    assert run_cli([*base, "--sweep", "s-1", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["sweep"]) for r in listed] == [("r1", "s-1")]
    assert run_cli([*base, "--sweep", "s-2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_json_output_keeps_the_documented_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_run(tmp_path, "train", "r1", params={"lr": 0.1}, metrics={"loss": float("nan")})
    assert run_cli(["runs", "--output-dir", str(tmp_path), "--json", "--columns", "lr"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert list(record) == [
        "id", "experiment", "status", "start", "duration", "path", "params", "metrics",
        "end", "tags", "error", "failed_rank", "world_size", "sweep",
    ]  # fmt: skip
    assert record["metrics"] == {"loss": None}
