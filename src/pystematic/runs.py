"""Past runs under the output dir: the data behind ``pystematic runs`` and ``ps.load_runs``.

Only ``<output_dir>/<experiment>/<run-id>/run.json`` is read (one small file a run), so
listing thousands of runs stays well under a second. This module imports the standard
library only; rich is imported when a table is built, torch never.

A record is a plain dict (JSON-ready, so ``--json`` prints it as is and
``pandas.DataFrame(ps.load_runs())`` works) with the keys of :data:`RECORD_KEYS`
(the contract of ``runs --json``) plus :data:`EXTRA_KEYS`:

- ``id``, ``experiment``: from run.json, else the folder names.
- ``status``: ``running``, ``completed``, ``failed``, ``interrupted`` or ``died``. ``died``
  is derived here, never written: a ``running`` run whose heartbeat is older than
  :data:`DIED_AFTER_S`, or whose process is gone on this host.
- ``start``, ``end``: ISO-8601 UTC strings (``end`` is None until the run ends).
- ``duration``: seconds; for a run still going, the time so far; for a run that died,
  the time until its last heartbeat.
- ``path``: absolute path of the run dir, as a string.
- ``params``: parameter name -> value; ``metrics``: scalar tag -> last value.
- ``tags`` (list of str), ``error``, ``failed_rank``, ``world_size``.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ParameterError

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult
    from rich.measure import Measurement
    from rich.style import Style
    from rich.table import Table

RUN_FILE = "run.json"
#: A ``running`` run whose heartbeat (refreshed every 5 s) is older than this has died.
DIED_AFTER_S = 30.0
#: The keys of every record, in ``runs --json`` order (the contract of DESIGN.md section 1).
RECORD_KEYS = ("id", "experiment", "status", "start", "duration", "path", "params", "metrics")
#: Further keys every record has.
EXTRA_KEYS = ("end", "tags", "error", "failed_rank", "world_size")
#: ``--filter`` keys that are not parameter names.
SPECIAL_FILTER_KEYS = ("status", "experiment", "tag")
#: Record fields ``--sort`` accepts besides metric and parameter names.
SORTABLE_FIELDS = ("id", "experiment", "status", "start", "end", "duration", "world_size")
# Differing parameters shown after the others: they differ between almost all runs.
_LATE_PARAMS = ("random_seed",)

STATUS_STYLES = {
    "completed": "green",
    "running": "cyan",
    "failed": "red",
    "died": "bold red",
    "interrupted": "yellow",
}

Filter = str | tuple[str, str]  # "KEY=VALUE" or a parse_filters pair


class CorruptRunWarning(UserWarning):
    """A run dir whose run.json cannot be read (half-written, corrupt or foreign): it is skipped."""


class _Missing:
    """Marks a value a run does not have (distinct from a recorded ``None``)."""

    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


# --- reading ---------------------------------------------------------------------------------


def load_runs(
    output_dir: str | os.PathLike[str] | None = None, experiment: str | None = None
) -> list[dict[str, Any]]:
    """Read every run under *output_dir*, oldest first (by start time, then id).

    ``output_dir`` defaults to the project's (``pystematic.project.load_project()``); a
    folder that does not exist holds no runs. ``experiment`` keeps the runs of that
    experiment id, or of every experiment in that group (``vision`` keeps ``vision.fit``
    and ``vision.eval``). A run dir whose run.json is corrupt is skipped with a
    :class:`CorruptRunWarning` naming the file; a folder without run.json is not a run
    (a sweep folder, or a run dir being created) and is skipped quietly.
    """
    if output_dir is None:
        from .project import load_project

        root = load_project().output_dir
    else:
        root = Path(output_dir)
    root_str = os.path.abspath(root)
    now = time.time()
    host = socket.gethostname()
    records: list[dict[str, Any]] = []
    for exp_name, exp_path in _experiment_dirs(root_str, experiment):
        for run_name, run_path in _subdirs(exp_path):
            record = _read_run(run_path, exp_name, run_name, now, host)
            if record is not None:
                records.append(record)
    records.sort(key=_time_order)
    return records


def _subdirs(path: str) -> Iterator[tuple[str, str]]:
    """(name, path) of the folders in *path*, hidden ones left out; nothing if it is no folder."""
    try:
        entries = os.scandir(path)
    except OSError:  # missing, not a folder, unreadable: no runs there
        return
    with entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
            except OSError:
                continue
            if is_dir:
                yield entry.name, entry.path


def _experiment_dirs(root: str, experiment: str | None) -> Iterator[tuple[str, str]]:
    for name, path in _subdirs(root):
        if experiment is None or _experiment_matches(name, experiment):
            yield name, path


def _experiment_matches(experiment_id: str, wanted: str) -> bool:
    """An experiment id matches itself and the groups above it (``vision`` has ``vision.fit``)."""
    return experiment_id == wanted or experiment_id.startswith(wanted + ".")


def _read_run(
    run_dir: str, exp_name: str, run_name: str, now: float, host: str
) -> dict[str, Any] | None:
    path = os.path.join(run_dir, RUN_FILE)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        _skip(path, f"cannot read it ({e.strerror or e})")
        return None
    try:
        raw = json.loads(data)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError alike
        _skip(path, f"not valid JSON ({e})")
        return None
    if not isinstance(raw, dict):
        _skip(path, f"expected a JSON object, got {type(raw).__name__}")
        return None
    status = raw.get("status")
    if not isinstance(status, str):
        _skip(path, "it has no status")
        return None
    params = raw.get("params")
    params = {} if params is None else params
    metrics = raw.get("metrics")
    metrics = {} if metrics is None else metrics
    if not isinstance(params, dict) or not isinstance(metrics, dict):
        _skip(path, "its params or metrics are not JSON objects")
        return None

    start = raw.get("start")
    start = start if isinstance(start, str) else None
    duration = raw.get("duration")
    duration = duration if isinstance(duration, (int, float)) else None
    if status == "running":
        heartbeat = _timestamp(raw.get("heartbeat"))
        if _has_died(raw, heartbeat, _timestamp(start), now, host):
            status = "died"
        if duration is None:
            started = _timestamp(start)
            until = now if status == "running" else heartbeat
            if started is not None and until is not None:
                duration = max(0.0, until - started)
    tags = raw.get("tags")
    return {
        "id": str(raw.get("id") or run_name),
        "experiment": str(raw.get("experiment") or exp_name),
        "status": status,
        "start": start,
        "duration": duration,
        "path": run_dir,
        "params": params,
        "metrics": metrics,
        "end": raw.get("end"),
        "tags": [str(t) for t in tags] if isinstance(tags, list) else [],
        "error": raw.get("error"),
        "failed_rank": raw.get("failed_rank"),
        "world_size": raw.get("world_size"),
    }


def _skip(path: str, why: str) -> None:
    warnings.warn(f"skipping run {path}: {why}", CorruptRunWarning, stacklevel=4)


def _has_died(
    raw: dict[str, Any], heartbeat: float | None, start: float | None, now: float, host: str
) -> bool:
    """The ``died`` rule: heartbeat stale, or the run's process gone from this host."""
    last_sign = heartbeat if heartbeat is not None else start
    if last_sign is not None and now - last_sign > DIED_AFTER_S:
        return True
    pid = raw.get("pid")
    if raw.get("host") == host and isinstance(pid, int) and not isinstance(pid, bool):
        return not _pid_alive(pid)
    return False


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (signal 0 checks, sends nothing)."""
    if pid <= 0:
        return False
    if sys.platform == "win32":
        # os.kill(pid, 0) terminates the process on Windows: rely on the heartbeat there.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def _timestamp(value: Any) -> float | None:
    """POSIX time of an ISO-8601 string (naive means UTC); None when absent or unparsable."""
    if not isinstance(value, str):
        return None
    if value.endswith("Z"):  # fromisoformat accepts "Z" from Python 3.11 only
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _time_order(record: dict[str, Any]) -> tuple[str, str]:
    # ISO-8601 UTC strings of one format sort as text; run ids break ties.
    return (record["start"] or "", record["id"])


# --- selecting -------------------------------------------------------------------------------


def parse_filters(filters: Sequence[str]) -> list[tuple[str, str]]:
    """Split ``--filter KEY=VALUE`` options (at the first ``=``, whitespace around both trimmed)."""
    parsed = []
    for text in filters:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ParameterError(
                f"--filter {text!r}: expected KEY=VALUE, e.g. lr=0.01, tag=baseline or "
                "status=failed"
            )
        parsed.append((key, value.strip()))
    return parsed


def select_runs(
    records: Sequence[dict[str, Any]],
    *,
    filters: Iterable[Filter] = (),
    sort: str | None = None,
    last: int | None = None,
) -> list[dict[str, Any]]:
    """Filter, keep the latest *last*, then sort; the records themselves are not copied.

    - ``filters``: ``KEY=VALUE`` strings or parsed pairs. Keys are ``status``,
      ``experiment`` (the id or a group above it), ``tag`` or a parameter name (``-`` and
      ``_`` alike). Values are compared as text (see :func:`value_matches`). Filters on one
      key are alternatives (``status=failed status=died``); filters on different keys must
      all hold. A parameter no run has is an error, with a "did you mean".
    - ``last``: keep the N most recent of the runs that pass (by start time), before
      sorting, so ``--sort loss --last 5`` ranks the latest five runs.
    - ``sort``: a metric, else a parameter, else a record field (:data:`SORTABLE_FIELDS`),
      ascending; a leading ``-`` sorts descending. Runs without a value (or NaN) come last
      either way, in time order. Without ``sort`` the runs stay oldest first.
    """
    if last is not None and last < 0:
        raise ParameterError(f"--last {last}: expected a number of runs, 0 or more")
    parsed = [parse_filters([f])[0] if isinstance(f, str) else f for f in filters]
    selected = sorted(_apply_filters(records, parsed), key=_time_order)
    if last is not None:
        selected = selected[len(selected) - last :] if last else []
    if sort:
        selected = _sorted_by(selected, sort, records)
    return selected


def value_matches(value: Any, wanted: str) -> bool:
    """Whether a recorded value matches a ``--filter`` value given as text.

    Text is compared as is; booleans match ``true``/``false`` (any case); numbers match
    their text or any text that parses to the same number (``lr=1e-3`` matches 0.001,
    ``epochs=10.0`` matches 10); ``None`` matches ``none`` or ``null``; a list matches when
    one of its items does (so ``tag=NAME`` keeps runs that have that tag among others).
    """
    if isinstance(value, (list, tuple)):
        return any(value_matches(item, wanted) for item in value)
    if value is None:
        return wanted.lower() in ("none", "null")
    if isinstance(value, bool):
        return wanted.lower() == ("true" if value else "false")
    if isinstance(value, (int, float)):
        if str(value) == wanted:
            return True
        try:
            return float(wanted) == value
        except ValueError:
            return False
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True) == wanted
    return str(value) == wanted


def _apply_filters(
    records: Sequence[dict[str, Any]], filters: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    if not filters:
        return list(records)
    wanted: dict[str, list[str]] = {}
    for key, value in filters:
        wanted.setdefault(key, []).append(value)
    getters = {key: _filter_getter(key, records) for key in wanted}

    def keep(record: dict[str, Any]) -> bool:
        for key, values in wanted.items():
            if key == "experiment":
                if not any(_experiment_matches(record["experiment"], v) for v in values):
                    return False
                continue
            value = getters[key](record)
            if value is _MISSING or not any(value_matches(value, v) for v in values):
                return False
        return True

    return [r for r in records if keep(r)]


def _filter_getter(key: str, records: Sequence[dict[str, Any]]) -> Callable[[dict[str, Any]], Any]:
    if key == "status":
        return lambda r: r["status"]
    if key in ("tag", "tags"):
        return lambda r: r["tags"]
    if key == "experiment":
        return lambda r: r["experiment"]
    name = _param_name(key, records)
    if name is None:
        known = sorted({p for r in records for p in r["params"]})
        raise ParameterError(
            f"--filter {key}=...: no listed run has a parameter {key!r}"
            + _did_you_mean(key, [*SPECIAL_FILTER_KEYS, *known])
        )
    return lambda r: r["params"].get(name, _MISSING)


def _param_name(key: str, records: Sequence[dict[str, Any]]) -> str | None:
    """The parameter name *key* refers to (CLI spelling accepted), or None; no runs: key itself."""
    if not records:
        return key
    for name in (key, key.replace("-", "_")):
        if any(name in r["params"] for r in records):
            return name
    return None


def _did_you_mean(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _sorted_by(
    selected: list[dict[str, Any]], sort: str, records: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    descending = sort.startswith("-")
    name = sort[1:] if descending else sort
    get = _sort_getter(name, records)
    present: list[tuple[tuple[int, float, str], dict[str, Any]]] = []
    missing = []
    for record in selected:
        key = _sort_key(get(record))
        if key is None:
            missing.append(record)
        else:
            present.append((key, record))
    # sort() is stable with reverse=True too: ties stay in time order.
    present.sort(key=lambda item: item[0], reverse=descending)
    return [record for _, record in present] + missing


def _sort_getter(name: str, records: Sequence[dict[str, Any]]) -> Callable[[dict[str, Any]], Any]:
    if not records or any(name in r["metrics"] for r in records):
        return lambda r: r["metrics"].get(name)
    param = _param_name(name, records)
    if param is not None:
        return lambda r: r["params"].get(param)
    if name in SORTABLE_FIELDS:
        return lambda r: r[name]
    metrics = {m for r in records for m in r["metrics"]}
    params = {p for r in records for p in r["params"]}
    raise ParameterError(
        f"--sort {name}: no listed run has a metric or parameter {name!r}"
        + _did_you_mean(name, [*metrics, *params, *SORTABLE_FIELDS])
    )


def _sort_key(value: Any) -> tuple[int, float, str] | None:
    """Numbers before text before anything else; None for a value to put last."""
    if value is None or value is _MISSING:
        return None
    if isinstance(value, (int, float)):
        number = float(value)
        return None if math.isnan(number) else (0, number, "")
    if isinstance(value, str):
        return (1, 0.0, value)
    return (2, 0.0, json.dumps(value, sort_keys=True, default=str))


def differing_params(records: Sequence[dict[str, Any]]) -> list[str]:
    """Parameter names whose values are not the same in all *records* (absent counts as a value).

    In order of first appearance, ``random_seed`` last. One record or none: nothing differs.
    """
    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(record["params"]))
    differing = []
    for name in names:
        first = records[0]["params"].get(name, _MISSING)
        if any(not _same(r["params"].get(name, _MISSING), first) for r in records[1:]):
            differing.append(name)
    late = [n for n in differing if n in _LATE_PARAMS]
    return [n for n in differing if n not in _LATE_PARAMS] + late


def _same(a: Any, b: Any) -> bool:
    # True == 1 in Python; a flag and a number are not the same parameter value.
    return a is b or (isinstance(a, bool) == isinstance(b, bool) and a == b)


# --- showing ---------------------------------------------------------------------------------


def runs_table(records: Sequence[dict[str, Any]]) -> Table:
    """A rich table of *records*: id, experiment, status, duration, params, last metrics.

    Parameter columns are those that differ between the records (all of them when there is
    one record), then the metrics, then ``random_seed``; the experiment column is left out
    when all records share one experiment (it is in the title then). Values are plain text,
    never read as markup, and every run keeps one line: when the table is wider than the
    terminal, the widest parameter and metric columns are cut (with an ellipsis) first,
    then columns are left out from the right and named in the caption.

    For speed the table has a single row whose cells hold one line per run, and it lays out
    its columns itself when printed: rich measures and wraps each cell on its own at about
    60 µs a cell, so 2,000 runs x 16 columns took 2 s to print that way.
    """
    experiments = {r["experiment"] for r in records}
    one_experiment = next(iter(experiments)) if len(experiments) == 1 else None
    params = list(records[0]["params"]) if len(records) == 1 else differing_params(records)
    metric_names: dict[str, None] = {}
    for record in records:
        metric_names.update(dict.fromkeys(record["metrics"]))

    columns = [_Column("id", [(r["id"], "bold") for r in records], fixed=True)]
    if one_experiment is None:
        columns.append(_Column("experiment", [(r["experiment"], "") for r in records], fixed=True))
    columns.append(_Column("status", [_status_cell(r) for r in records], fixed=True))
    durations = [(format_duration(r["duration"]), "") for r in records]
    columns.append(_Column("duration", durations, fixed=True, right=True))
    for name in params:
        if name not in _LATE_PARAMS:
            cells = [_value_cell(r["params"], name, format_value, "cyan") for r in records]
            columns.append(_Column(name, cells))
    for name in metric_names:
        cells = [_value_cell(r["metrics"], name, format_metric, "magenta") for r in records]
        columns.append(_Column(name, cells, right=True))
    for name in params:  # the seed last: the first column left out when space runs short
        if name in _LATE_PARAMS:
            cells = [_value_cell(r["params"], name, format_value, "cyan") for r in records]
            columns.append(_Column(name, cells))

    count = f"{len(records)} run{'' if len(records) == 1 else 's'}"
    title = f"{one_experiment}: {count}" if one_experiment else count
    return _table_class()(columns, has_rows=bool(records), title=title)


#: Narrowest a parameter or metric column gets before columns are left out.
MIN_COLUMN_WIDTH = 8


class _Column:
    """One column of the runs table: its header and one line of text per run."""

    def __init__(
        self, header: str, cells: list[tuple[str, str]], fixed: bool = False, right: bool = False
    ) -> None:
        from rich.cells import cell_len
        from rich.control import strip_control_codes

        self.header = header
        # A value stays on one line whatever it holds, so the runs stay aligned.
        self.cells = [
            (strip_control_codes(text.replace("\n", " ")), style) for text, style in cells
        ]
        self.fixed = fixed  # id, experiment, status, duration: never cut
        self.right = right
        self.width = max((_cells(t, cell_len) for t, _ in self.cells), default=0)
        self.width = max(self.width, _cells(header, cell_len))
        self.minimum = self.width if fixed else min(self.width, MIN_COLUMN_WIDTH)

    def fit(self, text: str, width: int) -> str:
        """*text* cut (with an ellipsis) or padded to *width* cells, plus a space either side."""
        from rich.cells import cell_len, set_cell_size

        size = _cells(text, cell_len)
        if size > width:
            text = set_cell_size(text, width - 1) + "…" if width > 1 else "…"[:width]
        elif size < width:
            pad = " " * (width - size)
            text = pad + text if self.right else text + pad
        return f" {text} "

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """One ready segment per line, padding included (see RunsTable)."""
        from rich.segment import Segment

        width = options.max_width - 2
        newline = Segment.line()
        styles: dict[str, Style | None] = {"": None}
        for text, style_name in self.cells:
            if style_name not in styles:
                styles[style_name] = console.get_style(style_name)
            yield Segment(self.fit(text, width), styles[style_name])
            yield newline

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        from rich.measure import Measurement

        return Measurement(self.minimum, self.width)


def _cells(text: str, cell_len: Callable[[str], int]) -> int:
    """Terminal cells *text* takes (wide characters take two)."""
    return len(text) if text.isascii() else cell_len(text)


def fit_widths(
    naturals: Sequence[int], minimums: Sequence[int], max_width: int, fixed: int = 0
) -> list[int]:
    """Column widths (content only) for a table of at most *max_width* cells, boxed and padded.

    Columns shrink widest first, each down to its minimum. When even the minimums do not
    fit, columns are left out from the right (the result is shorter), but never the first
    *fixed* ones: when those alone do not fit, rich crops the table at the terminal's edge.
    """
    keep = len(naturals)
    while True:
        budget = max_width - (3 * keep + 1)  # "│ " + " " around each, "│" at the end
        wanted, least = list(naturals[:keep]), list(minimums[:keep])
        if sum(wanted) <= budget:
            return wanted
        if sum(least) <= budget:
            return _water_level(wanted, least, budget)
        if keep <= fixed:
            return wanted
        keep -= 1


def _water_level(wanted: list[int], least: list[int], budget: int) -> list[int]:
    """Cap every column at one level, as high as fits, then give the spare cells out."""

    def widths(level: int) -> list[int]:
        return [max(low, min(want, level)) for want, low in zip(wanted, least, strict=True)]

    low, high = 0, max(wanted)
    while low < high:
        mid = (low + high + 1) // 2
        if sum(widths(mid)) <= budget:
            low = mid
        else:
            high = mid - 1
    result = widths(low)
    spare = budget - sum(result)
    for i, want in enumerate(wanted):
        if spare and result[i] < want:
            result[i] += 1
            spare -= 1
    return result


@functools.cache
def _table_class() -> Callable[..., Table]:
    """The runs table type, made on first use so that importing this module skips rich."""
    from rich.table import Table
    from rich.text import Text

    class RunsTable(Table):
        """A Table of one multi-line row that picks its column widths when printed."""

        def __init__(self, columns: list[_Column], *, has_rows: bool, title: str) -> None:
            super().__init__(title=title, title_justify="left", header_style="bold")
            self.run_columns = columns
            for column in columns:
                self.add_column(Text(column.header), justify="right" if column.right else "left")
            if has_rows:
                self.add_row(*columns)

        def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
            columns = self.run_columns
            widths = fit_widths(
                [c.width for c in columns],
                [c.minimum for c in columns],
                options.max_width,
                fixed=sum(c.fixed for c in columns),
            )
            left_out = [c.header for c in columns[len(widths) :]]
            caption = f"not shown, too wide: {', '.join(left_out)}" if left_out else None
            # The columns pad their own lines: rich's padding would render every line again.
            table = Table(
                title=self.title,
                title_justify=self.title_justify,
                header_style=self.header_style,
                caption=caption,
                caption_justify="left",
                padding=0,
            )
            for column, width in zip(columns, widths, strict=False):  # widths may be fewer
                table.add_column(
                    Text(column.fit(column.header, width)), width=width + 2, no_wrap=True
                )
            if self.rows:
                table.add_row(*columns[: len(widths)])
            yield table

    return RunsTable


def _value_cell(
    values: dict[str, Any], name: str, fmt: Callable[[Any], str], style: str
) -> tuple[str, str]:
    value = values.get(name, _MISSING)
    return ("-", "dim") if value is _MISSING else (fmt(value), style)


def _status_cell(record: dict[str, Any]) -> tuple[str, str]:
    status = record["status"]
    label = status
    if status == "failed" and record.get("failed_rank") is not None:
        label = f"failed (rank {record['failed_rank']})"
    return label, STATUS_STYLES.get(status, "")


def format_duration(seconds: float | None) -> str:
    """Human-readable duration: ``12.3s``, ``4m05s``, ``2h03m``, ``3d04h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


def format_value(value: Any) -> str:
    """A parameter value as on the CLI: exact numbers, ``true``/``false``, lists joined by ``,``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def format_metric(value: Any) -> str:
    """A scalar in 5 significant digits: ``0.91234``, ``123457``, ``1.5e-05``, ``10``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return format_value(value)
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e9:
        return str(int(value))
    magnitude = abs(value)
    if 1e5 <= magnitude < 1e9:
        return f"{value:.0f}"
    return f"{value:.5g}"
