"""The ``mlflow`` recorder backend against real local MLflow stores (sqlite in tmp_path),
read back with MLflow's own client and ``mlflow.search_runs()``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import Project
from pystematic.recording import Recorder
from pystematic.recording.mlflow import MlflowBackend, resolve_uri

# MLflow's own use of SQLAlchemy warns about things outside our control.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TRAIN = """
import pystematic as ps

@ps.parameter("lr", type=float, default=0.1)
@ps.parameter("fail", type=bool, default=False)
@ps.experiment
def train(params, context):
    for s in range(3):
        context.recorder.scalars({"loss": params.lr * (3 - s), "val acc": 0.5 + 0.1 * s})
        context.recorder.step()
    if params.fail:
        raise RuntimeError("diverged")
"""

CONFIG = """
recorder = ["jsonl", "mlflow"]

[mlflow]
tracking_uri = "sqlite:///mlflow.db"
"""


@dataclass
class Stores:
    project: Project
    config_db: str  # the config's tracking_uri, resolved against the project root
    env_db: str  # MLFLOW_TRACKING_URI of the failing run
    empty: Path  # an empty store, to copy
    completed: Path
    failed: Path
    commit: str


def git(cwd: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args]
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    """Two real runs made by the CLI, at once: one completes into the config's store,
    one fails into the store MLFLOW_TRACKING_URI names (it wins over the config)."""
    root = tmp_path_factory.mktemp("mlflow") / "proj"
    root.mkdir()
    project = Project(root)
    project.write("pystematic.toml", CONFIG)
    project.write("train.py", TRAIN)
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-qm", "x")
    env_db = f"sqlite:///{root.parent / 'env.db'}"
    # Creating an MLflow store takes seconds (its schema migrations): make one, copy it.
    from mlflow import MlflowClient

    empty = root.parent / "empty.db"
    MlflowClient(tracking_uri=f"sqlite:///{empty}").search_experiments()
    shutil.copy(empty, root.parent / "env.db")
    shutil.copy(empty, root / "mlflow.db")
    cli = [sys.executable, "-m", "pystematic", "run", "train"]
    good = subprocess.Popen(
        [*cli, "--tag", "baseline", "--tag", "v2", "--random-seed", "3"], cwd=root
    )
    bad = subprocess.Popen(
        [*cli, "--fail", "--lr", "0.5"],
        cwd=root,
        env={**os.environ, "MLFLOW_TRACKING_URI": env_db},
        stderr=subprocess.DEVNULL,
    )
    assert (good.wait(timeout=300), bad.wait(timeout=300)) == (0, 1)
    completed, failed = sorted(
        project.run_dirs("train"), key=lambda d: json.loads((d / "run.json").read_text())["status"]
    )
    yield Stores(
        project,
        f"sqlite:///{root / 'mlflow.db'}",
        env_db,
        empty,
        completed,
        failed,
        git(root, "rev-parse", "HEAD"),
    )


def only_run(uri: str, experiment: str = "train") -> Any:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, run


def history(client: Any, run: Any, tag: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, tag)]


@pytest.mark.slow
def test_a_completed_run_has_params_tags_metric_history_and_finished(stores: Stores) -> None:
    import mlflow

    mlflow.set_tracking_uri(stores.config_db)
    df = mlflow.search_runs(experiment_names=["train"])
    assert len(df) == 1
    row = df.iloc[0]
    assert (row["params.lr"], row["params.fail"], row["params.random_seed"]) == (
        "0.1",
        "False",
        "3",
    )
    assert row["params.deterministic"] == "False"
    assert row["status"] == "FINISHED"
    assert row["tags.mlflow.runName"] == stores.completed.name
    assert row["tags.pystematic.run_id"] == stores.completed.name
    assert row["tags.pystematic.experiment"] == "train"
    assert row["tags.pystematic.run_dir"] == str(stores.completed)
    assert row["tags.pystematic.tags"] == "baseline,v2"
    assert row["tags.mlflow.source.git.commit"] == stores.commit
    assert row["metrics.loss"] == 0.1 * 1  # the last step's value

    client, run = only_run(stores.config_db)
    assert history(client, run, "loss") == [(s, 0.1 * (3 - s)) for s in range(3)]
    assert history(client, run, "val_acc") == [(s, 0.5 + 0.1 * s) for s in range(3)]
    lines = [json.loads(x) for x in (stores.completed / "metrics.jsonl").read_text().splitlines()]
    stamps = [m.timestamp for m in client.get_metric_history(run.info.run_id, "loss")]
    assert stamps == [int(line["time"] * 1000) for line in lines]


@pytest.mark.slow
def test_a_failed_run_goes_to_the_env_store_as_failed(stores: Stores) -> None:
    client, run = only_run(stores.env_db)
    assert run.info.status == "FAILED" and run.info.run_name == stores.failed.name
    assert run.data.params["lr"] == "0.5" and run.data.params["fail"] == "True"
    assert history(client, run, "loss") == [(s, 0.5 * (3 - s)) for s in range(3)]
    assert json.loads((stores.failed / "run.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_interrupted_is_killed_and_a_resume_continues_the_same_run(
    stores: Stores, tmp_path: Path
) -> None:
    shutil.copy(stores.empty, tmp_path / "own.db")
    uri = f"sqlite:///{tmp_path / 'own.db'}"
    run_dir = tmp_path / "run-1"
    with pytest.raises(KeyboardInterrupt), Recorder(run_dir, [MlflowBackend(uri)]) as rec:
        rec.start_run({"lr": 0.1, "opt": {"name": "sgd"}}, experiment="fit")
        for s in range(2):
            rec.scalar("loss", float(s))
            rec.step()
        raise KeyboardInterrupt
    client, run = only_run(uri, "fit")
    assert run.info.status == "KILLED" and run.data.params == {"lr": "0.1", "opt.name": "sgd"}

    with Recorder(run_dir, [MlflowBackend(uri)]) as rec:
        rec.start_run({"lr": 0.1, "opt": {"name": "sgd"}, "new": 1}, experiment="fit", resumed=True)
        rec.truncate(1)
        rec.scalar("loss", 10.0)
        rec.step()
    client, resumed = only_run(uri, "fit")
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.params["new"] == "1"
    assert sorted(history(client, resumed, "loss")) == [(0, 0.0), (1, 1.0), (1, 10.0)]


def test_a_missing_mlflow_is_one_line_with_the_install_hint(project: Project) -> None:
    project.write("pystematic.toml", "")
    project.write("train.py", TRAIN)
    code = (
        "import sys; sys.modules['mlflow'] = None\n"
        "from pystematic.cli import run_cli\n"
        "sys.exit(run_cli(['run', 'train', '--recorder', 'mlflow']))\n"
    )
    result = project.python("-c", code)
    assert result.returncode == 2
    assert result.stderr == (
        "error: the 'mlflow' recorder backend needs mlflow: pip install 'pystematic[mlflow]'\n"
    )
    assert not (project.root / "output").exists()


def test_relative_config_uris_are_taken_from_the_project_root(tmp_path: Path) -> None:
    assert resolve_uri("sqlite:///m.db", tmp_path) == f"sqlite:///{tmp_path / 'm.db'}"
    assert resolve_uri("sqlite:////abs/m.db", tmp_path) == "sqlite:////abs/m.db"
    assert resolve_uri("mlruns", tmp_path) == str(tmp_path / "mlruns")
    assert resolve_uri("http://host:5000", tmp_path) == "http://host:5000"
