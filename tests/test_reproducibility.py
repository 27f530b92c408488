"""Acceptance: the example classifier, rerun with the same seed, gives bitwise-identical metrics.

The example has dropout, a shuffling sampler and two DataLoader workers that add noise,
so every source of randomness the seed must pin down is in play.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import Project, read_metrics, tomllib

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "classifier"
SMALL = ["--epochs", "2", "--samples", "128"]

pytestmark = pytest.mark.slow


def without_time(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl with the one key that may differ between identical runs taken out."""
    rows = read_metrics(run_dir)
    assert rows, f"{run_dir} recorded nothing"
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


def parameters(run_dir: Path) -> dict[str, Any]:
    return tomllib.loads((run_dir / "parameters.toml").read_text())


def run_all(project: Project, commands: dict[str, list[str]]) -> dict[str, Path]:
    """Start every command at once (they wait on DataLoader workers); run dirs by tag."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GIT_CEILING_DIRECTORIES": str(project.root)}
    procs = {
        tag: subprocess.Popen(
            [sys.executable, "-m", "pystematic", "run", "train", *SMALL, "--tag", tag, *args],
            cwd=project.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag, args in commands.items()
    }
    for tag, proc in procs.items():
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{tag}: {stderr}"
    found = {}
    for run_dir in project.run_dirs("train"):
        [tag] = json.loads((run_dir / "run.json").read_text())["tags"]
        found[tag] = run_dir
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("repro") / "classifier"
    shutil.copytree(
        EXAMPLE, root, ignore=shutil.ignore_patterns("output", "__pycache__", ".pystematic*")
    )
    project = Project(root)
    first = run_all(
        project,
        {
            "a": ["--random-seed", "7"],
            "b": ["--random-seed", "7"],
            "other-seed": ["--random-seed", "8"],
            "drawn": [],
        },
    )
    again = run_all(
        project,
        {
            "a-again": ["--params-file", str(first["a"] / "parameters.toml")],
            "drawn-again": ["--params-file", str(first["drawn"] / "parameters.toml")],
        },
    )
    return {**first, **again}


def test_same_seed_gives_identical_metrics(runs: dict[str, Path]) -> None:
    a, b = without_time(runs["a"]), without_time(runs["b"])
    assert a == b
    assert any("train/loss" in row for row in a) and any("train/accuracy" in row for row in a)
    # Two epochs of 128 samples in batches of 32 (the project's [defaults]): 4 + 1 steps each.
    assert [row["step"] for row in a] == list(range(10))
    assert (runs["a"] / "seeds.log").read_text() == (runs["b"] / "seeds.log").read_text()


def test_same_seed_gives_identical_weights(runs: dict[str, Path]) -> None:
    import torch

    def weights(run_dir: Path) -> dict[str, Any]:
        (latest,) = (run_dir / "checkpoints").glob("checkpoint-*.pt")
        payload = torch.load(latest, weights_only=False)
        state: dict[str, Any] = payload["user"]["model"]
        return state

    a, b, other = weights(runs["a"]), weights(runs["b"]), weights(runs["other-seed"])
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], other[k]) for k in a)


def test_another_seed_gives_other_metrics(runs: dict[str, Path]) -> None:
    a, other = without_time(runs["a"]), without_time(runs["other-seed"])
    assert len(a) == len(other)
    losses = [row.get("train/loss") for row in a]
    assert losses != [row.get("train/loss") for row in other]


def test_params_file_reproduces_a_run(runs: dict[str, Path]) -> None:
    assert parameters(runs["a-again"]) == parameters(runs["a"])
    assert without_time(runs["a-again"]) == without_time(runs["a"])


def test_params_file_reproduces_a_run_whose_seed_was_drawn(runs: dict[str, Path]) -> None:
    seed = parameters(runs["drawn"])["random_seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**32
    assert parameters(runs["drawn-again"]) == parameters(runs["drawn"])
    assert without_time(runs["drawn-again"]) == without_time(runs["drawn"])
