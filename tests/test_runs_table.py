"""Tests for pystematic.runs_table: the columns of `pystematic runs` and how they fit."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from _runs_data import NOW, output, running, write_run
from pystematic import rundir
from pystematic.errors import ParameterError
from pystematic.runs import load_runs, select_runs
from pystematic.runs_table import (
    drop_order,
    fit_widths,
    format_duration,
    format_metric,
    layout,
    runs_table,
)

__all__ = ["output"]  # a fixture

STALE = rundir.DEAD_AFTER_SECONDS + 60


def render(
    records: list[dict[str, Any]],
    width: int = 250,
    columns: list[str] | None = None,
    sort: str | None = None,
) -> str:
    buffer = io.StringIO()
    view = runs_table(records, columns=columns, sort=sort)
    Console(file=buffer, width=width, color_system=None).print(view)
    return buffer.getvalue()


def headers(out: str) -> list[list[str]]:
    """The column names of each table (a header may fold over several lines)."""
    tables, lines = [], out.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("┏"):
            rows = []
            for header_line in lines[i + 1 :]:
                if header_line.startswith("┡"):
                    break
                rows.append([cell.strip() for cell in header_line.strip()[1:-1].split("┃")])
            tables.append(["".join(parts) for parts in zip(*rows, strict=True)])
    return tables


def row_of(out: str, run_id: str) -> list[str]:
    line = next(line for line in out.splitlines() if run_id in line)
    return re.findall(r"[^│┃ ]+", line)


def timeline(tmp_path: Path, params: list[dict[str, Any]], **metrics: float) -> list[dict]:
    """Runs of `t` one minute apart with these parameters, all with the same metrics."""
    for i, p in enumerate(params):
        start = NOW - timedelta(hours=1) + timedelta(minutes=i)
        write_run(tmp_path, "t", f"run-{i}", start_at=start, params=p, metrics=metrics)
    return load_runs(tmp_path)


# --- which columns ---------------------------------------------------------------------------


def test_table_shows_differing_params_then_last_metrics(output: Path) -> None:
    train = load_runs(output, "train")
    out = render(train)
    assert headers(out) == [["id", "status", "duration", "lr", "augment", "loss", "acc"]]
    assert out.startswith("train: 3 runs")
    assert row_of(out, train[0]["id"]) == [
        train[0]["id"], "completed", "1m30s", "0.01", "true", "0.5", "0.8",
    ]  # fmt: skip
    assert row_of(out, train[1]["id"])[-2:] == ["0.3", "-"]  # acc missing


def test_several_experiments_get_a_table_each_with_their_own_metrics(output: Path) -> None:
    out = render(load_runs(output), width=80)
    assert [line.rstrip() for line in out.splitlines() if re.match(r"\S+: \d+ run", line)] == [
        "train: 3 runs",
        "vision.fit: 1 run",
        "vision.eval: 1 run",
    ]
    assert headers(out) == [
        ["id", "status", "duration", "lr", "augment", "loss", "acc"],
        ["id", "status", "duration", "lr", "batch_size", "loss"],
        ["id", "status", "duration", "checkpoint", "acc"],
    ]


def test_table_of_one_run_shows_all_its_params(output: Path) -> None:
    out = render(load_runs(output, "train")[:1])
    assert out.splitlines()[0].rstrip() == "train: 1 run"
    assert headers(out)[0][3:6] == ["lr", "epochs", "augment"]


def test_the_seed_is_the_last_parameter(tmp_path: Path) -> None:
    records = timeline(
        tmp_path, [{"random_seed": 11, "x": 1}, {"random_seed": 22, "x": 2}], loss=1.0
    )
    assert headers(render(records)) == [["id", "status", "duration", "x", "random_seed", "loss"]]


def test_table_shows_died_failed_rank_and_is_not_fooled_by_markup(tmp_path: Path) -> None:
    running(tmp_path, "r1", STALE, "elsewhere", 1)
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
    running(tmp_path, "r1", STALE, "elsewhere", 1)
    buffer = io.StringIO()
    console = Console(file=buffer, width=120, force_terminal=True, color_system="standard")
    console.print(runs_table(load_runs(tmp_path)))
    assert "\x1b[1;31m died" in buffer.getvalue()


def test_table_of_no_runs() -> None:
    assert render([]) == "0 runs\n"


# --- --columns and --sort --------------------------------------------------------------------


def test_columns_picks_the_columns_in_order_with_the_id_first(output: Path) -> None:
    train = load_runs(output, "train")
    out = render(train, columns=["acc", "epochs", "status", "params.lr"])
    assert headers(out) == [["id", "acc", "epochs", "status", "lr"]]
    assert row_of(out, train[0]["id"]) == [train[0]["id"], "0.8", "10", "completed", "0.01"]
    start = render(train, columns=["start", "tags", "world_size"])
    assert row_of(start, train[1]["id"])[1:] == [*train[1]["start"][:19].split("T"), "best", "1"]


def test_columns_that_no_run_has_are_an_error_with_a_suggestion(output: Path) -> None:
    with pytest.raises(ParameterError, match=r"--columns los: .*did you mean 'loss'"):
        runs_table(load_runs(output), columns=["lr", "los"])


def test_a_metric_and_a_parameter_of_one_name_are_told_apart(tmp_path: Path) -> None:
    records = timeline(tmp_path, [{"lr": 0.1}, {"lr": 0.2}], lr=0.05)
    assert headers(render(records, columns=["lr"]))[0] == ["id", "lr"]
    assert row_of(render(records, columns=["lr"]), "run-0")[1] == "0.05"  # the metric wins
    assert row_of(render(records, columns=["params.lr"]), "run-0")[1] == "0.1"
    assert row_of(render(records, columns=["metrics.lr"]), "run-0")[1] == "0.05"


def test_the_sort_column_is_always_shown(output: Path, tmp_path: Path) -> None:
    train = load_runs(output, "train")
    # a constant parameter, a record field, a metric left out of --columns
    out = render(select_runs(train, sort="epochs"), sort="epochs")
    assert headers(out)[0] == ["id", "status", "duration", "lr", "augment", "epochs", "loss", "acc"]
    out = render(select_runs(train, sort="-start"), sort="-start")
    assert headers(out)[0][:4] == ["id", "status", "duration", "start"]
    assert headers(render(train, columns=["lr"], sort="-acc"))[0] == ["id", "lr", "acc"]


# --- too wide --------------------------------------------------------------------------------


def test_drop_order_constant_then_seed_then_least_recently_varied(tmp_path: Path) -> None:
    records = timeline(
        tmp_path,
        [
            {"a": 1, "b": 1, "c": 1, "k": 0, "random_seed": 5},
            {"a": 2, "b": 1, "c": 1, "k": 0, "random_seed": 6},  # a varies at run 1
            {"a": 2, "b": 2, "c": 2, "k": 0, "random_seed": 7},  # b and c at run 2
            {"a": 2, "b": 2, "c": 3, "k": 0, "random_seed": 8},  # c again at run 3
        ],
    )
    names = ["a", "b", "c", "k", "random_seed"]
    assert drop_order(records, names) == ["k", "random_seed", "a", "b", "c"]
    # the time order counts, not the order the runs are listed in
    assert drop_order(records[::-1], names) == ["k", "random_seed", "a", "b", "c"]
    # absent and present differ; a tie goes to the column further right
    assert drop_order(records[:2], ["b", "a", "x"]) == ["x", "b", "a"]
    records[3]["params"].pop("k")
    assert drop_order(records, ["k", "a"]) == ["a", "k"]


def test_at_80_columns_metrics_stay_and_parameters_give_way(tmp_path: Path) -> None:
    """The case of the issue: three runs at 80 columns showed no metric at all."""
    params = [
        {"lr": 0.1, "optimizer": "adam", "batch_size": 32, "random_seed": 1},
        {"lr": 0.2, "optimizer": "sgd", "batch_size": 32, "random_seed": 2},
        {"lr": 0.3, "optimizer": "sgd", "batch_size": 64, "random_seed": 3},
    ]
    metrics = {"train/loss": 0.0125, "train/accuracy": 0.9375, "val/loss": 0.125}
    records = timeline(tmp_path, params, **metrics)
    wide = render(records, width=200)
    assert headers(wide)[0] == [
        "id", "status", "duration", "lr", "optimizer", "batch_size", "random_seed",
        *metrics,
    ]  # fmt: skip
    assert "not shown" not in wide
    out = render(records, width=80)
    lines = out.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    assert headers(out) == [["id", "status", "duration", "lr", "batch_size", *metrics]]
    assert row_of(out, "run-1")[-3:] == ["0.0125", "0.9375", "0.125"]
    # the seed went first, then optimizer (last varied at run 1, batch_size at run 2)
    caption = " ".join(line.strip() for line in lines[-2:])
    assert "not shown, too wide: optimizer, random_seed" in caption


def test_when_even_the_metrics_do_not_fit_the_table_continues_below(tmp_path: Path) -> None:
    metrics = {f"metric_{i}": 0.5 + i for i in range(8)}
    records = timeline(tmp_path, [{"lr": 0.1}, {"lr": 0.2}], **metrics)
    out = render(records, width=60, sort="lr")
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 60
    tables = headers(out)
    assert len(tables) >= 2
    assert all(table[0] == "id" for table in tables)  # every panel names the runs
    shown = [name for table in tables for name in table[1:]]
    assert shown == ["status", "duration", "lr", *metrics]  # --sort lr kept, nothing dropped
    assert "t: 2 runs (continued)" in out


def test_narrow_metric_headers_fold_and_values_are_never_cut(tmp_path: Path) -> None:
    records = timeline(tmp_path, [{"x": 1}, {"x": 2}], **{"validation/accuracy": 0.123456})
    out = render(records, width=56)
    assert headers(out)[0][-1] == "validation/accuracy"  # folded over lines
    assert "0.12346" in out


@pytest.mark.parametrize(
    ("naturals", "minimums", "max_width", "widths"),
    [
        # fits: 3 columns take 3 * 3 + 1 cells of box and padding
        ([10, 5, 5], [10, 5, 5], 30, [10, 5, 5]),
        # too wide: the widest shrinkable column gives way first
        ([10, 20, 5], [10, 8, 5], 34, [10, 9, 5]),
        ([10, 20, 12], [10, 8, 8], 40, [10, 10, 10]),
        ([10, 20, 12], [10, 8, 8], 41, [10, 11, 10]),
        # the minimums do not fit
        ([10, 20, 12], [10, 8, 8], 30, None),
        ([], [], 10, []),
    ],
)
def test_fit_widths(
    naturals: list[int], minimums: list[int], max_width: int, widths: list[int] | None
) -> None:
    assert fit_widths(naturals, minimums, max_width) == widths


def test_layout_drops_in_order_then_splits_into_panels() -> None:
    naturals, minimums = [10, 6, 6, 6, 6], [10, 6, 6, 6, 6]
    fits = layout(naturals, minimums, [3, 1], 50)
    assert fits.dropped == [] and len(fits.panels) == 1
    one_dropped = layout(naturals, minimums, [3, 1], 41)
    assert one_dropped.dropped == [3]
    assert [i for i, _ in one_dropped.panels[0]] == [0, 1, 2, 4]
    split = layout(naturals, minimums, [3], 25)
    assert split.dropped == [3]
    assert [[i for i, _ in panel] for panel in split.panels] == [[0, 1], [0, 2], [0, 4]]


# --- formats and imports ---------------------------------------------------------------------


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


def test_importing_runs_and_the_table_imports_neither_rich_nor_torch() -> None:
    code = (
        "import sys, pystematic.runs, pystematic.runs_table, pystematic.diff\n"
        "print(sorted(m for m in ('rich', 'torch', 'pandas') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
