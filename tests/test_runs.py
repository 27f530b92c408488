"""Tests for pystematic.runs: reading run dirs, the `died` rule, filters, sort, DataFrames."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from _runs_data import NOW, dead_pid, ids, iso, output, running, write_run
from pystematic import rundir, runs
from pystematic.errors import ParameterError
from pystematic.runs import (
    EXTRA_KEYS,
    RECORD_KEYS,
    CorruptRunWarning,
    differing_params,
    load_runs,
    metrics_since,
    parse_filters,
    select_runs,
    value_matches,
)

__all__ = ["output"]  # a fixture, shared with test_runs_table.py

STALE = rundir.DEAD_AFTER_SECONDS + 30


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

HERE = socket.gethostname()


def alive(**fields: Any) -> bool:
    """rundir.is_alive of a running run.json, at a fixed `now` on the host `here`."""
    data = {"status": "running", "host": "here", "start": "2026-11-25T10:00:00+00:00", **fields}
    now = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc).timestamp()
    return rundir.is_alive(data, now=now, host="here")


def ago(seconds: float) -> str:
    return iso(datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc) - timedelta(seconds=seconds))


def test_on_another_host_the_heartbeat_decides() -> None:
    limit = rundir.DEAD_AFTER_SECONDS
    assert limit == 6 * rundir.HEARTBEAT_SECONDS
    assert alive(host="other", pid=1, heartbeat=ago(limit)) is True
    assert alive(host="other", pid=1, heartbeat=ago(limit + 1)) is False
    # no heartbeat yet: the start time stands in for it
    assert alive(host="other", heartbeat=None, start=ago(limit - 1)) is True
    assert alive(host="other", heartbeat=None, start=ago(limit + 1)) is False
    assert alive(host="other", heartbeat=None, start=None) is False
    assert alive(host="other", heartbeat=ago(-60)) is True  # a clock ahead of ours
    assert alive(host="other", heartbeat=ago(1), status="completed") is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process start times: /proc")
def test_on_this_host_the_pid_decides_at_once() -> None:
    now = datetime.now(timezone.utc)
    fresh, stale = iso(now), iso(now - timedelta(hours=1))
    # this test process, which started before the "fresh" heartbeat: alive even when the
    # heartbeat is late (the run is busy), since its process is there
    assert rundir.is_alive(
        {"status": "running", "host": HERE, "pid": os.getpid(), "heartbeat": fresh}
    )
    # a process that is gone: dead at once, a heartbeat of a second ago notwithstanding
    gone = {"status": "running", "host": HERE, "pid": dead_pid(), "heartbeat": fresh}
    assert rundir.is_alive(gone) is False
    # a live pid that started after the run's last heartbeat is another process reusing it
    reused = {"status": "running", "host": HERE, "pid": os.getpid(), "heartbeat": stale}
    assert rundir.is_alive(reused) is False
    # the same dead pid on another host says nothing: its heartbeat counts
    assert rundir.is_alive({**gone, "host": "elsewhere"}) is True


def test_running_runs_that_died_are_shown_as_died(tmp_path: Path) -> None:
    running(tmp_path, "a-stale-heartbeat", STALE, "elsewhere", 12345)
    running(tmp_path, "b-fresh-heartbeat", 1, "elsewhere", dead_pid())
    running(tmp_path, "c-fresh-dead-pid-here", 1, HERE, dead_pid())
    status = {r["id"]: r["status"] for r in load_runs(tmp_path)}
    assert status == {
        "a-stale-heartbeat": "died",
        "b-fresh-heartbeat": "running",
        "c-fresh-dead-pid-here": "died",
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


def test_a_died_run_takes_its_last_metrics_and_duration_from_metrics_jsonl(
    tmp_path: Path,
) -> None:
    """run.json holds the metrics of the last heartbeat; the steps after it are in the file."""
    run = running(
        tmp_path, "gone", 300, "elsewhere", 1, start_age=600, metrics={"loss": 9.0, "acc": 0.1}
    )
    beat = rundir.parse_time(json.loads((run / "run.json").read_text())["heartbeat"])
    assert beat is not None
    lines = [
        {"step": 0, "time": beat - 10, "loss": 9.0, "acc": 0.1, "early": 1.0},
        {"step": 1, "time": beat + 1, "loss": 0.5},
        {"step": 2, "time": beat + 2, "loss": 0.25, "lr": 0.01},
    ]
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in lines) + '{"step": 3, "ti'  # torn by a kill
    )
    (record,) = load_runs(tmp_path)
    assert record["status"] == "died"
    # `early` was recorded before the heartbeat: run.json did not have it, the tail skips it
    assert record["metrics"] == {"loss": 0.25, "acc": 0.1, "lr": 0.01}
    assert record["duration"] == pytest.approx(300 - 600 + 600 + 2, abs=1)  # until step 2


def test_metrics_since_reads_only_the_tail_of_a_long_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "metrics.jsonl"
    with path.open("w") as f:
        f.write(json.dumps({"step": 0, "time": 0.0, "only_at_the_start": 1.0}) + "\n")
        for step in range(1, 200_000):
            f.write(json.dumps({"step": step, "time": float(step), "loss": 1.0 / step}) + "\n")
    assert path.stat().st_size > 40 * 64 * 1024
    values, last = metrics_since(path, 199_990.0)
    assert values == {"loss": 1.0 / 199_999}
    assert last == 199_999.0
    # without a time to start from it reads as far back as the limit allows, not the start
    monkeypatch.setattr(runs, "TAIL_LIMIT_BYTES", 1 << 20)
    values, _ = metrics_since(path, None)
    assert "only_at_the_start" not in values
    assert metrics_since(tmp_path / "missing.jsonl", 0.0) == ({}, None)


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

    running(tmp_path / "other", "r", STALE, "elsewhere", 1)
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


def test_differing_params_tells_flags_from_numbers(tmp_path: Path) -> None:
    write_run(tmp_path, "t", "a", params={"random_seed": 1, "x": 1, "flag": True, "same": 2.0})
    write_run(tmp_path, "t", "b", params={"random_seed": 2, "x": 2, "flag": 1, "same": 2})
    assert differing_params(load_runs(tmp_path)) == ["random_seed", "x", "flag"]
