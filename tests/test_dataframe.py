"""ps.runs_dataframe(): the runs as a pandas DataFrame, columns named as MLflow names them."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

import pystematic as ps
from _runs_data import NOW, output, running, write_run

__all__ = ["output"]  # a fixture


def test_one_row_per_run_with_typed_columns(output: Path) -> None:
    df = ps.runs_dataframe(output)
    assert list(df.columns) == [
        "id", "experiment", "status", "start", "end", "duration", "path", "tags",
        "params.lr", "params.epochs", "params.augment", "params.batch_size",
        "params.checkpoint", "metrics.loss", "metrics.acc",
    ]  # fmt: skip
    assert len(df) == 5
    assert str(df["start"].dtype).startswith("datetime64") and str(df["start"].dt.tz) == "UTC"
    assert df["end"].iloc[0] - df["start"].iloc[0] == pd.Timedelta(seconds=90)
    assert df["duration"].dtype == "float64" and df["duration"].iloc[0] == 90.0
    assert df["tags"].iloc[3] == ["best", "x"]
    # a parameter or metric a run does not have is NaN
    assert df["params.epochs"].isna().tolist() == [False, False, False, True, True]
    assert df["metrics.acc"].tolist()[:3] == [0.8, pytest.approx(float("nan"), nan_ok=True), 0.6]


def test_sort_values_on_a_metric_works(output: Path) -> None:
    df = ps.runs_dataframe(output, experiment="train").sort_values("metrics.loss")
    assert df["params.lr"].tolist() == [0.001, 0.01, 0.1]
    assert df["experiment"].unique().tolist() == ["train"]
    best = df.sort_values("metrics.acc", ascending=False).iloc[0]
    assert best["params.lr"] == 0.01


def test_experiment_group_sweep_and_running_runs(tmp_path: Path) -> None:
    write_run(tmp_path, "vision.fit", "a", sweep="s1", params={"lr": 0.1})
    write_run(tmp_path, "vision.eval", "b", params={"k": 1})
    running(tmp_path, "c", 1, "elsewhere", 1, experiment="vision.fit", sweep="s1")
    assert ps.runs_dataframe(tmp_path, experiment="vision")["id"].tolist() == ["a", "b", "c"]
    df = ps.runs_dataframe(tmp_path, sweep="s1")
    assert df["id"].tolist() == ["a", "c"]
    assert df["status"].tolist() == ["completed", "running"]
    assert pd.isna(df["end"].iloc[1])
    assert 599 <= df["duration"].iloc[1] <= 700  # still going: the time so far


def test_no_runs_is_an_empty_frame_with_the_columns(tmp_path: Path) -> None:
    df = ps.runs_dataframe(tmp_path / "nothing")
    assert list(df.columns) == ["id", "experiment", "status", "start", "end", "duration",
                                "path", "tags"]  # fmt: skip
    assert len(df) == 0


def test_without_pandas_the_error_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_run(tmp_path, "t", "a", start_at=NOW - timedelta(hours=1))
    monkeypatch.setitem(sys.modules, "pandas", None)  # what `import pandas` meets when absent
    with pytest.raises(ps.PystematicError) as caught:
        ps.runs_dataframe(tmp_path)
    assert str(caught.value) == "runs_dataframe() needs pandas: pip install 'pystematic[pandas]'"
