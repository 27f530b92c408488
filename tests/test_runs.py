"""Tests for pystematic.runs: reading run dirs, the `died` rule, filters, sort, table."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from pystematic.errors import ParameterError
from pystematic.runs import (
    DIED_AFTER_S,
    EXTRA_KEYS,
    RECORD_KEYS,
    CorruptRunWarning,
    differing_params,
    fit_widths,
    format_duration,
    format_metric,
    load_runs,
    parse_filters,
    runs_table,
    select_runs,
    value_matches,
)

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


def render(records: list[dict[str, Any]], width: int = 250) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None).print(runs_table(records))
    return buffer.getvalue()


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


# --- load_runs -------------------------------------------------------------------------------


def test_load_runs_returns_the_documented_keys_oldest_first(output: Path) -> None:
    records = load_runs(output)
    assert ids(records) == ["0", "1", "2", "3", "4"]
    for record in records:
        assert list(record) == [*RECORD_KEYS, *EXTRA_KEYS]
    first = records[0]
    assert first["experiment"] == "train"
    assert first["status"] == "completed"
    assert first["duration"] == 90.0
    assert first["params"] == {"lr": 0.01, "epochs": 10, "augment": True}
    assert first["metrics"] == {"loss": 0.5, "acc": 0.8}
    assert first["path"] == str(output / "train" / first["id"])
    assert os.path.isabs(first["path"])
    assert records[3]["tags"] == ["best", "x"]
    json.dumps(records)  # what `runs --json` prints


def test_load_runs_sorts_by_start_across_experiments_and_ties_by_id(tmp_path: Path) -> None:
    start = NOW - timedelta(hours=2)
    write_run(tmp_path, "b", "20261125-100000-0002", start_at=start)
    write_run(tmp_path, "a", "20261125-100000-0001", start_at=start)
    write_run(tmp_path, "c", "20261125-090000-0000", start_at=start - timedelta(minutes=5))
    assert [r["experiment"] for r in load_runs(tmp_path)] == ["c", "a", "b"]


def test_experiment_selects_one_id_or_a_whole_group(output: Path) -> None:
    assert ids(load_runs(output, "train")) == ["0", "1", "2"]
    assert ids(load_runs(output, "vision.fit")) == ["3"]
    assert ids(load_runs(output, "vision")) == ["3", "4"]
    assert load_runs(output, "vis") == []
    assert load_runs(output, "train.fit") == []


def test_experiment_is_not_a_name_prefix(tmp_path: Path) -> None:
    write_run(tmp_path, "train", "r1")
    write_run(tmp_path, "train2", "r2")
    write_run(tmp_path, "train.sub", "r3")
    assert [r["id"] for r in load_runs(tmp_path, "train")] == ["r1", "r3"]


def test_missing_output_dir_holds_no_runs(tmp_path: Path) -> None:
    assert load_runs(tmp_path / "nope") == []
    (tmp_path / "file").write_text("x")
    assert load_runs(tmp_path / "file") == []


def test_output_dir_defaults_to_the_projects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pystematic.toml").write_text('output_dir = "results"\n')
    write_run(tmp_path / "results", "train", "r1")
    write_run(tmp_path / "output", "train", "not-this-one")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert [r["id"] for r in load_runs()] == ["r1"]


def test_truncated_run_json_is_skipped_with_a_warning_naming_it(output: Path) -> None:
    broken = write_run(output, "train", "20990101-000000-dead") / "run.json"
    broken.write_text(broken.read_text()[:50])
    with pytest.warns(CorruptRunWarning, match=re.escape(str(broken))) as caught:
        records = load_runs(output)
    assert len(caught) == 1
    assert "not valid JSON" in str(caught[0].message)
    assert ids(records) == ["0", "1", "2", "3", "4"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not valid JSON"),
        (b"\xff\xfe garbage", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'{"id": "x"}', "no status"),
        (b'{"status": "completed", "params": [1]}', "not JSON objects"),
    ],
)
def test_corrupt_or_foreign_run_json_is_skipped(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    write_run(tmp_path, "train", "good")
    bad = tmp_path / "train" / "bad" / "run.json"
    bad.parent.mkdir()
    bad.write_bytes(content)
    with pytest.warns(CorruptRunWarning, match=re.escape(reason)):
        records = load_runs(tmp_path)
    assert [r["id"] for r in records] == ["good"]


def test_unreadable_run_json_is_skipped_with_a_warning(tmp_path: Path) -> None:
    write_run(tmp_path, "train", "good")
    (tmp_path / "train" / "weird" / "run.json").mkdir(parents=True)  # a folder, not a file
    with pytest.warns(CorruptRunWarning, match="cannot read it"):
        assert [r["id"] for r in load_runs(tmp_path)] == ["good"]


def test_folders_without_run_json_and_stray_files_are_skipped_quietly(tmp_path: Path) -> None:
    write_run(tmp_path, "train", "good")
    (tmp_path / "train" / "being-created").mkdir()  # run.json not written yet
    (tmp_path / "train" / "sweep-1" / "links").mkdir(parents=True)
    (tmp_path / "train" / "notes.txt").write_text("hi")
    (tmp_path / ".cache" / "x").mkdir(parents=True)
    (tmp_path / ".cache" / "x" / "run.json").write_text("{}")  # hidden folders are not runs
    (tmp_path / "README").write_text("hi")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r["id"] for r in load_runs(tmp_path)] == ["good"]


def test_missing_fields_fall_back_to_folder_names(tmp_path: Path) -> None:
    run = tmp_path / "vision.fit" / "20261125-140312-7f3a"
    run.mkdir(parents=True)
    (run / "run.json").write_text('{"status": "failed", "failed_rank": 1}')
    (record,) = load_runs(tmp_path)
    assert record["id"] == "20261125-140312-7f3a"
    assert record["experiment"] == "vision.fit"
    assert record["params"] == {} and record["metrics"] == {} and record["tags"] == []
    assert record["start"] is None and record["duration"] is None
    assert record["failed_rank"] == 1


# --- the died rule ---------------------------------------------------------------------------


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def running(root: Path, run_id: str, heartbeat_age: float, host: str, pid: int) -> None:
    start = datetime.now(timezone.utc) - timedelta(minutes=10)
    write_run(
        root,
        "train",
        run_id,
        start_at=start,
        status="running",
        end=None,
        duration=None,
        host=host,
        pid=pid,
        heartbeat=iso(datetime.now(timezone.utc) - timedelta(seconds=heartbeat_age)),
    )


@pytest.mark.skipif(sys.platform == "win32", reason="pids are not checked on Windows")
def test_running_runs_that_died_are_shown_as_died(tmp_path: Path) -> None:
    here = socket.gethostname()
    stale = DIED_AFTER_S + 30
    running(tmp_path, "a-stale-heartbeat", stale, "elsewhere", 12345)
    running(tmp_path, "b-stale-heartbeat-live-pid", stale, here, os.getpid())
    running(tmp_path, "c-fresh-live-pid", 1, here, os.getpid())
    running(tmp_path, "d-fresh-dead-pid-here", 1, here, dead_pid())
    running(tmp_path, "e-fresh-dead-pid-elsewhere", 1, "elsewhere", dead_pid())
    status = {r["id"]: r["status"] for r in load_runs(tmp_path)}
    assert status == {
        "a-stale-heartbeat": "died",
        "b-stale-heartbeat-live-pid": "died",
        "c-fresh-live-pid": "running",
        "d-fresh-dead-pid-here": "died",
        # another host's pid says nothing here: only its heartbeat counts
        "e-fresh-dead-pid-elsewhere": "running",
    }


def test_finished_runs_are_never_died(tmp_path: Path) -> None:
    old = NOW - timedelta(days=30)
    for status in ("completed", "failed", "interrupted"):
        write_run(tmp_path, "train", status, start_at=old, status=status, pid=dead_pid())
    assert {r["status"] for r in load_runs(tmp_path)} == {"completed", "failed", "interrupted"}


def test_running_duration_is_the_time_so_far_and_died_until_the_last_heartbeat(
    tmp_path: Path,
) -> None:
    running(tmp_path, "alive", 1, "elsewhere", 1)
    running(tmp_path, "gone", 300, "elsewhere", 1)
    by_id = {r["id"]: r for r in load_runs(tmp_path)}
    assert 599 <= by_id["alive"]["duration"] <= 700  # started 10 minutes ago
    assert 299 <= by_id["gone"]["duration"] <= 301  # last heartbeat 5 minutes ago
    raw = json.loads(Path(by_id["gone"]["path"], "run.json").read_text())
    assert raw["status"] == "running"  # derived when read, never written


def test_running_run_without_heartbeat_uses_its_start(tmp_path: Path) -> None:
    write_run(tmp_path, "train", "r", status="running", heartbeat=None, duration=None)
    (record,) = load_runs(tmp_path)
    assert record["status"] == "died"  # started an hour ago, no sign of life since


def test_z_suffixed_times_are_understood(tmp_path: Path) -> None:
    beat = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    write_run(tmp_path, "train", "r", status="running", heartbeat=beat, duration=None)
    (record,) = load_runs(tmp_path)
    assert record["status"] == "running"


# --- filters ---------------------------------------------------------------------------------


def test_parse_filters_splits_at_the_first_equals_sign() -> None:
    assert parse_filters(["lr=0.01", " tag = best ", "note=a=b", "name="]) == [
        ("lr", "0.01"),
        ("tag", "best"),
        ("note", "a=b"),
        ("name", ""),
    ]


@pytest.mark.parametrize("bad", ["lr", "=0.01", "  =x"])
def test_parse_filters_rejects_bad_syntax(bad: str) -> None:
    with pytest.raises(ParameterError, match="expected KEY=VALUE"):
        parse_filters([bad])


@pytest.mark.parametrize(
    ("value", "text", "expected"),
    [
        (0.01, "0.01", True),
        (0.001, "1e-3", True),
        (0.01, "0.010", True),
        (0.01, "0.1", False),
        (10, "10", True),
        (10, "10.0", True),
        (10, "ten", False),
        (True, "true", True),
        (True, "True", True),
        (True, "1", False),
        (False, "false", True),
        (False, "true", False),
        (None, "none", True),
        (None, "null", True),
        (None, "", False),
        ("adam", "adam", True),
        ("adam", "Adam", False),
        ("", "", True),
        (["a", "b"], "b", True),
        (["a", "b"], "c", False),
        ([1, 2], "2", True),
    ],
)
def test_value_matches_compares_the_text_form(value: Any, text: str, expected: bool) -> None:
    assert value_matches(value, text) is expected


def test_filter_on_params(output: Path) -> None:
    records = load_runs(output)
    assert ids(select_runs(records, filters=["lr=0.01"])) == ["0", "3"]
    assert ids(select_runs(records, filters=[("lr", "1e-3")])) == ["1"]
    assert ids(select_runs(records, filters=["augment=true"])) == ["0", "2"]
    assert ids(select_runs(records, filters=["augment=false"])) == ["1"]
    # different keys must all hold
    assert ids(select_runs(records, filters=["lr=0.01", "augment=true"])) == ["0"]
    # the same key given twice: either value
    assert ids(select_runs(records, filters=["lr=0.01", "lr=0.1"])) == ["0", "2", "3"]


def test_filter_accepts_the_cli_spelling_of_a_parameter(output: Path) -> None:
    records = load_runs(output)
    assert ids(select_runs(records, filters=["batch-size=32"])) == ["3"]


def test_filter_on_tag_status_and_experiment(output: Path, tmp_path: Path) -> None:
    records = load_runs(output)
    assert ids(select_runs(records, filters=["tag=best"])) == ["1", "3"]
    assert ids(select_runs(records, filters=["tag=x", "tag=nope"])) == ["3"]
    assert ids(select_runs(records, filters=["experiment=vision"])) == ["3", "4"]
    assert ids(select_runs(records, filters=["experiment=vision.eval"])) == ["4"]
    assert ids(select_runs(records, filters=["experiment=train", "tag=best"])) == ["1"]
    assert ids(select_runs(records, filters=["status=completed"])) == ["0", "1", "2", "3", "4"]
    assert select_runs(records, filters=["status=failed"]) == []

    running(tmp_path / "other", "r", DIED_AFTER_S + 60, "elsewhere", 1)
    died = load_runs(tmp_path / "other")
    assert len(select_runs(died, filters=["status=died"])) == 1
    assert select_runs(died, filters=["status=running"]) == []


def test_filter_on_an_unknown_parameter_is_an_error_with_a_suggestion(output: Path) -> None:
    records = load_runs(output)
    with pytest.raises(ParameterError, match=r"no listed run has a parameter 'lrr'.*'lr'"):
        select_runs(records, filters=["lrr=0.1"])
    assert select_runs([], filters=["lrr=0.1"]) == []


def test_filter_drops_runs_without_the_parameter(output: Path) -> None:
    records = load_runs(output)
    assert ids(select_runs(records, filters=["checkpoint=a.pt"])) == ["4"]


# --- sort and last ---------------------------------------------------------------------------


def test_sort_by_metric_ascending_and_descending_missing_last(output: Path) -> None:
    records = load_runs(output)
    assert ids(select_runs(records, sort="loss")) == ["1", "3", "0", "2", "4"]
    assert ids(select_runs(records, sort="-loss")) == ["2", "0", "3", "1", "4"]
    assert ids(select_runs(records, sort="acc")) == ["2", "4", "0", "1", "3"]
    assert ids(select_runs(records, sort="-acc")) == ["0", "4", "2", "1", "3"]


def test_sort_by_parameter_and_by_record_field(output: Path) -> None:
    records = load_runs(output)
    # a metric wins over a parameter of the same name; `epochs` is only a parameter
    assert ids(select_runs(records, sort="-epochs")) == ["0", "1", "2", "3", "4"]
    assert ids(select_runs(records, sort="lr")) == ["1", "0", "3", "2", "4"]
    assert ids(select_runs(records, sort="-id")) == ["4", "3", "2", "1", "0"]
    assert ids(select_runs(records, sort="batch-size")) == ["3", "0", "1", "2", "4"]


def test_sort_puts_nan_last_and_numbers_before_text(tmp_path: Path) -> None:
    write_run(tmp_path, "t", "a", metrics={"m": float("nan")})
    write_run(tmp_path, "t", "b", metrics={"m": 2.0})
    write_run(tmp_path, "t", "c", metrics={"m": 1.0})
    write_run(tmp_path, "t", "d", params={"p": "x"}, metrics={})
    write_run(tmp_path, "t", "e", params={"p": 3})
    records = load_runs(tmp_path)
    assert [r["id"] for r in select_runs(records, sort="m")] == ["c", "b", "a", "d", "e"]
    assert [r["id"] for r in select_runs(records, sort="-m")] == ["b", "c", "a", "d", "e"]
    assert [r["id"] for r in select_runs(records, sort="p")] == ["e", "d", "a", "b", "c"]


def test_sort_by_unknown_name_is_an_error_with_a_suggestion(output: Path) -> None:
    with pytest.raises(ParameterError, match=r"--sort los:.*did you mean 'loss'"):
        select_runs(load_runs(output), sort="los")


def test_last_keeps_the_most_recent_runs_before_sorting(output: Path) -> None:
    records = load_runs(output)
    assert ids(select_runs(records, last=2)) == ["3", "4"]
    assert ids(select_runs(records, last=10)) == ["0", "1", "2", "3", "4"]
    assert select_runs(records, last=0) == []
    # the latest three of train, ranked by loss
    latest = select_runs(records, filters=["experiment=train"], last=2, sort="loss")
    assert ids(latest) == ["1", "2"]
    assert ids(select_runs(list(reversed(records)), last=2)) == ["3", "4"]
    with pytest.raises(ParameterError, match="--last -1"):
        select_runs(records, last=-1)


# --- differing params and the table ----------------------------------------------------------


def test_differing_params(output: Path) -> None:
    records = load_runs(output)
    train = select_runs(records, filters=["experiment=train"])
    assert differing_params(train) == ["lr", "augment"]  # epochs is 10 in all three
    assert differing_params(train[:1]) == []
    assert differing_params([]) == []
    # absent in some runs counts as different
    assert differing_params(records) == ["lr", "epochs", "augment", "batch_size", "checkpoint"]


def test_differing_params_puts_the_seed_last_and_tells_flags_from_numbers(
    tmp_path: Path,
) -> None:
    write_run(tmp_path, "t", "a", params={"random_seed": 1, "x": 1, "flag": True, "same": 2.0})
    write_run(tmp_path, "t", "b", params={"random_seed": 2, "x": 2, "flag": 1, "same": 2})
    assert differing_params(load_runs(tmp_path)) == ["x", "flag", "random_seed"]


def test_table_shows_differing_params_and_last_metrics(output: Path) -> None:
    train = load_runs(output, "train")
    out = render(train)
    header = next(line for line in out.splitlines() if "status" in line)
    assert re.findall(r"\w+", header) == [
        "id", "status", "duration", "lr", "augment", "loss", "acc",
    ]  # fmt: skip
    assert out.startswith("train: 3 runs")
    assert "experiment" not in out
    row = next(line for line in out.splitlines() if train[0]["id"] in line)
    assert re.findall(r"[^│┃ ]+", row) == [
        train[0]["id"], "completed", "1m30s", "0.01", "true", "0.5", "0.8",
    ]  # fmt: skip
    row = next(line for line in out.splitlines() if train[1]["id"] in line)
    assert re.findall(r"[^│┃ ]+", row)[-2:] == ["0.3", "-"]  # acc missing


def test_table_of_several_experiments_has_an_experiment_column(output: Path) -> None:
    out = render(load_runs(output))
    assert out.startswith("5 runs")
    assert "experiment" in out
    assert "vision.eval" in out
    assert "checkpoint" in out


def test_table_of_one_run_shows_all_its_params(output: Path) -> None:
    out = render(load_runs(output, "train")[:1])
    assert out.splitlines()[0].rstrip() == "train: 1 run"
    assert "epochs" in out and "augment" in out


def test_table_shows_died_failed_rank_and_is_not_fooled_by_markup(tmp_path: Path) -> None:
    running(tmp_path, "r1", DIED_AFTER_S + 60, "elsewhere", 1)
    write_run(tmp_path, "train", "r2", status="failed", failed_rank=1, params={"n": "[red]x"})
    write_run(tmp_path, "train", "r3", params={"n": "two\nlines"}, metrics={"a[b]": 1.5})
    out = render(load_runs(tmp_path))
    assert "died" in out
    assert "failed (rank 1)" in out
    assert "[red]x" in out
    assert "two lines" in out
    assert "a[b]" in out
    assert len([line for line in out.splitlines() if line.startswith("│")]) == 3


def test_table_colours_status(tmp_path: Path) -> None:
    running(tmp_path, "r1", DIED_AFTER_S + 60, "elsewhere", 1)
    buffer = io.StringIO()
    console = Console(file=buffer, width=120, force_terminal=True, color_system="standard")
    console.print(runs_table(load_runs(tmp_path)))
    assert "\x1b[1;31m died" in buffer.getvalue()


def test_table_keeps_one_line_per_run_in_a_narrow_terminal(output: Path) -> None:
    records = load_runs(output)
    wide = render(records, width=250)
    assert "not shown" not in wide
    out = render(records, width=75)
    lines = out.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 75
    rows = [line for line in lines if line.startswith("│")]
    assert len(rows) == len(records)
    assert all(r["id"] in row for r, row in zip(records, rows, strict=True))
    assert "vision.eval" in out  # fixed columns are never cut
    # 75 cells hold id, experiment, status, duration and one cut parameter column
    assert "lr" in out
    assert "not shown, too wide: epochs, augment, batch_size, checkpoint, loss, acc" in " ".join(
        line.strip() for line in lines
    )


def test_table_puts_the_seed_after_the_metrics(tmp_path: Path) -> None:
    write_run(tmp_path, "t", "a", params={"random_seed": 11, "x": 1}, metrics={"loss": 1.0})
    write_run(tmp_path, "t", "b", params={"random_seed": 22, "x": 2}, metrics={"loss": 2.0})
    header = next(line for line in render(load_runs(tmp_path)).splitlines() if "id" in line)
    assert re.findall(r"\w+", header) == ["id", "status", "duration", "x", "loss", "random_seed"]


@pytest.mark.parametrize(
    ("naturals", "minimums", "max_width", "fixed", "widths"),
    [
        # fits: 3 columns take 3 * 3 + 1 cells of box and padding
        ([10, 5, 5], [10, 5, 5], 30, 1, [10, 5, 5]),
        # too wide: the widest shrinkable column gives way first
        ([10, 20, 5], [10, 8, 5], 34, 1, [10, 9, 5]),
        ([10, 20, 12], [10, 8, 8], 40, 1, [10, 10, 10]),
        ([10, 20, 12], [10, 8, 8], 41, 1, [10, 11, 10]),
        # minimums do not fit: columns are left out from the right
        ([10, 20, 12], [10, 8, 8], 30, 1, [10, 13]),
        ([10, 20, 12], [10, 8, 8], 20, 1, [10]),
        # never the fixed columns: rich crops those
        ([30, 20], [30, 8], 20, 1, [30]),
        ([], [], 10, 0, []),
    ],
)
def test_fit_widths(
    naturals: list[int], minimums: list[int], max_width: int, fixed: int, widths: list[int]
) -> None:
    assert fit_widths(naturals, minimums, max_width, fixed) == widths


def test_table_of_no_runs(tmp_path: Path) -> None:
    assert render([]).startswith("0 runs")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0.04, "0.0s"),
        (12.34, "12.3s"),
        (59.96, "60.0s"),
        (60, "1m00s"),
        (245.4, "4m05s"),
        (7380, "2h03m"),
        (3 * 86400 + 4 * 3600 + 59, "3d04h"),
    ],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.912345678, "0.91235"),
        (10.0, "10"),
        (3, "3"),
        (123456.7, "123457"),
        (12345.67, "12346"),
        (1.5e-05, "1.5e-05"),
        (2.5e12, "2.5e+12"),
        (float("nan"), "nan"),
        (float("-inf"), "-inf"),
        (True, "true"),
        ("text", "text"),
    ],
)
def test_format_metric(value: Any, text: str) -> None:
    assert format_metric(value) == text


def test_importing_runs_does_not_import_torch() -> None:
    code = "import sys, pystematic.runs\nprint('torch' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
