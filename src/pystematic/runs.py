"""Past runs under the output dir: the data behind ``pystematic runs``, ``ps.load_runs`` and
``ps.runs_dataframe``.

Only ``<output_dir>/<experiment>/<run-id>/run.json`` is read (one small file a run), plus the
tail of metrics.jsonl for a run that died, so listing thousands of runs stays well under a
second. This module imports the standard library only (pandas inside
:func:`runs_dataframe`); the table is drawn by :mod:`pystematic.runs_table`.

A record is a plain dict (JSON-ready, so ``--json`` prints it as is) with the keys of
:data:`RECORD_KEYS` (the contract of ``runs --json``) plus :data:`EXTRA_KEYS`:

- ``id``, ``experiment``: from run.json, else the folder names.
- ``status``: ``running``, ``completed``, ``failed``, ``interrupted`` or ``died``. ``died``
  is derived here, never written: a ``running`` run that :func:`pystematic.rundir.is_alive`
  says is gone.
- ``start``, ``end``: ISO-8601 UTC strings (``end`` is None until the run ends).
- ``duration``: seconds; for a run still going, the time so far; for a run that died,
  the time until its last sign of life (heartbeat or last recorded step).
- ``path``: absolute path of the run dir, as a string.
- ``params``: parameter name -> value; ``metrics``: scalar tag -> last value (for a run that
  died, read from metrics.jsonl, since run.json's copy is refreshed only with the heartbeat).
- ``tags`` (list of str), ``error``, ``failed_rank``, ``world_size``, ``sweep`` (the id of
  the sweep that made the run, or None).
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import rundir
from .errors import ParameterError, PystematicError, did_you_mean

if TYPE_CHECKING:
    import pandas

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
#: The keys of every record, in ``runs --json`` order (a contract: scripts read them).
RECORD_KEYS = ("id", "experiment", "status", "start", "duration", "path", "params", "metrics")
#: Further keys every record has.
EXTRA_KEYS = ("end", "tags", "error", "failed_rank", "world_size", "sweep")
#: Record keys that ``--sort``, ``--columns`` and ``--filter`` accept besides parameter and
#: metric names.
FIELDS = (
    "id",
    "experiment",
    "status",
    "start",
    "end",
    "duration",
    "world_size",
    "tags",
    "sweep",
    "error",
    "failed_rank",
    "path",
)
#: ``--filter`` keys that are not parameter names.
SPECIAL_FILTER_KEYS = ("status", "experiment", "tag", "sweep")
#: How far back from its end metrics.jsonl of a run that died is read, at most.
TAIL_LIMIT_BYTES = 16 << 20
_TAIL_BLOCK = 64 << 10

Filter = str | tuple[str, str]  # "KEY=VALUE" or a parse_filters pair


class CorruptRunWarning(UserWarning):
    """A run dir whose run.json cannot be read (half-written, corrupt or foreign): it is skipped."""


class _Missing:
    """Marks a value a run does not have (distinct from a recorded ``None``)."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


# --- reading ---------------------------------------------------------------------------------


def load_runs(
    output_dir: str | os.PathLike[str] | None = None,
    experiment: str | None = None,
    *,
    sweep: str | None = None,
) -> list[dict[str, Any]]:
    """Read every run under *output_dir*, oldest first (by start time, then id).

    ``output_dir`` defaults to the project's (``pystematic.project.load_project()``); a
    folder that does not exist holds no runs. ``experiment`` keeps the runs of that
    experiment id, or of every experiment in that group (``vision`` keeps ``vision.fit``
    and ``vision.eval``); ``sweep`` keeps the runs of that sweep. A run dir whose run.json
    is corrupt is skipped with a :class:`CorruptRunWarning` naming the file; a folder
    without run.json is not a run (a sweep folder, or a run dir being created) and is
    skipped quietly.
    """
    root = os.path.abspath(_output_dir(output_dir))
    now = time.time()
    host = socket.gethostname()
    records: list[dict[str, Any]] = []
    for exp_name, exp_path in _experiment_dirs(root, experiment):
        for run_name, run_path in _subdirs(exp_path):
            record = _read_run(run_path, exp_name, run_name, now, host)
            if record is not None and (sweep is None or record["sweep"] == sweep):
                records.append(record)
    records.sort(key=_time_order)
    return records


def read_run(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The record of one run dir, as :func:`load_runs` makes it; None when it holds no run.

    For callers that know their runs' folders (a sweep), so they do not read every run."""
    path = os.path.abspath(run_dir)
    name, parent = os.path.basename(path), os.path.basename(os.path.dirname(path))
    return _read_run(path, parent, name, time.time(), socket.gethostname())


def experiment_ids(output_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """The experiments that have a folder under *output_dir* (runs or not), sorted."""
    return sorted(name for name, _ in _subdirs(os.path.abspath(_output_dir(output_dir))))


def experiment_matches(experiment_id: str, wanted: str) -> bool:
    """An experiment id matches itself and the groups above it (``vision`` has ``vision.fit``)."""
    return experiment_id == wanted or experiment_id.startswith(wanted + ".")


def _output_dir(output_dir: str | os.PathLike[str] | None) -> Path:
    if output_dir is not None:
        return Path(output_dir)
    from .project import load_project

    return load_project().output_dir


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
        if experiment is None or experiment_matches(name, experiment):
            yield name, path


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
        until: float | None = now
        if not rundir.is_alive(raw, now=now, host=host):
            status = "died"
            until = rundir.last_sign_of_life(raw)
            # run.json has the metrics of the last heartbeat; later steps are in the file.
            later, last_step = metrics_since(os.path.join(run_dir, METRICS_FILE), until)
            metrics = {**metrics, **later}
            if last_step is not None and (until is None or last_step > until):
                until = last_step
        started = rundir.parse_time(start)
        if duration is None and started is not None and until is not None:
            duration = max(0.0, until - started)
    tags = raw.get("tags")
    sweep = raw.get("sweep")
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
        "sweep": None if sweep is None else str(sweep),
    }


def _skip(path: str, why: str) -> None:
    warnings.warn(f"skipping run {path}: {why}", CorruptRunWarning, stacklevel=4)


def metrics_since(
    path: str | os.PathLike[str], since: float | None
) -> tuple[dict[str, Any], float | None]:
    """The last value of each scalar committed at or after *since* in a metrics.jsonl file.

    Returns ``(values, time of the last step)``. Only the end of the file is read: blocks
    backwards until a step older than *since* (at most :data:`TAIL_LIMIT_BYTES`), so a run
    that died after a million steps costs no more than one that died after ten. ``since``
    None reads as far back as that limit. A torn or foreign line is skipped; a missing file
    gives ``({}, None)``.
    """
    try:
        f = open(path, "rb")  # noqa: SIM115
    except OSError:
        return {}, None
    with f:
        end = f.seek(0, os.SEEK_END)
        pos, data = end, b""
        while pos > 0 and end - pos < TAIL_LIMIT_BYTES:
            size = min(_TAIL_BLOCK, pos)
            pos -= size
            f.seek(pos)
            data = f.read(size) + data
            if since is not None:
                first = 0 if pos == 0 else data.find(b"\n") + 1
                stop = data.find(b"\n", first)
                step_time = _line_time(data[first : stop if stop >= 0 else len(data)])
                if step_time is not None and step_time < since:
                    break
    lines = data.split(b"\n")
    if pos > 0:
        lines = lines[1:]  # starts mid-line
    # Newest first, so only the steps after *since* are parsed, and the first value seen of
    # a tag is its last.
    values: dict[str, Any] = {}
    last: float | None = None
    for line in reversed(lines):
        try:
            step = json.loads(line)
        except ValueError:
            continue
        if not isinstance(step, dict):
            continue
        step_time = step.get("time")
        if isinstance(step_time, (int, float)):
            if since is not None and step_time < since:
                break
            last = step_time if last is None else max(last, step_time)
        for key, value in step.items():
            if key not in ("step", "time"):
                values.setdefault(key, value)
    return values, last


def _line_time(line: bytes) -> float | None:
    try:
        step = json.loads(line)
    except ValueError:
        return None
    value = step.get("time") if isinstance(step, dict) else None
    return value if isinstance(value, (int, float)) else None


def _time_order(record: dict[str, Any]) -> tuple[str, str]:
    # ISO-8601 UTC strings of one format sort as text; run ids break ties.
    return (record["start"] or "", record["id"])


# --- naming what a run has -------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """A value every record may have: a ``metric``, a ``param`` or a record ``field``."""

    kind: str
    name: str

    def get(self, record: dict[str, Any]) -> Any:
        """The record's value, or :data:`MISSING`."""
        if self.kind == "metric":
            return record["metrics"].get(self.name, MISSING)
        if self.kind == "param":
            return record["params"].get(self.name, MISSING)
        return record.get(self.name, MISSING)


def resolve_field(name: str, records: Sequence[dict[str, Any]], option: str) -> Field:
    """What *name* refers to in *records*: a metric, else a parameter, else a record field.

    ``params.NAME`` and ``metrics.NAME`` (the DataFrame's column names) say which; a
    parameter may be spelled as on the CLI (``batch-size``). With no records every name is
    taken for a metric. Anything else is a :class:`ParameterError` naming *option*, with a
    "did you mean".
    """
    if name.startswith("metrics.") and _has_metric(name[8:], records):
        return Field("metric", name[8:])
    if name.startswith("params."):
        param = _param_name(name[7:], records)
        if param is not None:
            return Field("param", param)
    if not records or _has_metric(name, records):
        return Field("metric", name)
    param = _param_name(name, records)
    if param is not None:
        return Field("param", param)
    if name in FIELDS:
        return Field("field", name)
    metrics = {m for r in records for m in r["metrics"]}
    params = {p for r in records for p in r["params"]}
    raise ParameterError(
        f"{option} {name}: no listed run has a metric or parameter {name!r}"
        + did_you_mean(name, [*metrics, *params, *FIELDS])
    )


def _has_metric(name: str, records: Sequence[dict[str, Any]]) -> bool:
    return any(name in r["metrics"] for r in records)


def _param_name(key: str, records: Sequence[dict[str, Any]]) -> str | None:
    """The parameter name *key* refers to (CLI spelling accepted), or None; no runs: key itself."""
    if not records:
        return key
    for name in (key, key.replace("-", "_")):
        if any(name in r["params"] for r in records):
            return name
    return None


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
      ``experiment`` (the id or a group above it), ``tag``, ``sweep`` or a parameter name
      (``-`` and ``_`` alike). Values are compared as text (see :func:`value_matches`).
      Filters on one key are alternatives (``status=failed status=died``); filters on
      different keys must all hold. A parameter no run has is an error, with a "did you
      mean".
    - ``last``: keep the N most recent of the runs that pass (by start time), before
      sorting, so ``--sort loss --last 5`` ranks the latest five runs.
    - ``sort``: a name :func:`resolve_field` knows, ascending; a leading ``-`` sorts
      descending. Runs without a value (or NaN) come last either way, in time order.
      Without ``sort`` the runs stay oldest first.
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


def sort_field(sort: str, records: Sequence[dict[str, Any]]) -> Field:
    """The field a ``--sort`` value (``NAME`` or ``-NAME``) sorts by."""
    return resolve_field(sort.removeprefix("-"), records, "--sort")


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
                if not any(experiment_matches(record["experiment"], v) for v in values):
                    return False
                continue
            value = getters[key](record)
            if value is MISSING or not any(value_matches(value, v) for v in values):
                return False
        return True

    return [r for r in records if keep(r)]


def _filter_getter(key: str, records: Sequence[dict[str, Any]]) -> Callable[[dict[str, Any]], Any]:
    if key in ("status", "experiment", "sweep"):
        return lambda r: r[key]
    if key in ("tag", "tags"):
        return lambda r: r["tags"]
    name = _param_name(key, records)
    if name is None:
        known = sorted({p for r in records for p in r["params"]})
        raise ParameterError(
            f"--filter {key}=...: no listed run has a parameter {key!r}"
            + did_you_mean(key, [*SPECIAL_FILTER_KEYS, *known])
        )
    return lambda r: r["params"].get(name, MISSING)


def _sorted_by(
    selected: list[dict[str, Any]], sort: str, records: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    descending = sort.startswith("-")
    field = sort_field(sort, records)
    present: list[tuple[tuple[int, float, str], dict[str, Any]]] = []
    missing = []
    for record in selected:
        key = _sort_key(field.get(record))
        if key is None:
            missing.append(record)
        else:
            present.append((key, record))
    # sort() is stable with reverse=True too: ties stay in time order.
    present.sort(key=lambda item: item[0], reverse=descending)
    return [record for _, record in present] + missing


def _sort_key(value: Any) -> tuple[int, float, str] | None:
    """Numbers before text before anything else; None for a value to put last."""
    if value is None or value is MISSING:
        return None
    if isinstance(value, (int, float)):
        number = float(value)
        return None if math.isnan(number) else (0, number, "")
    if isinstance(value, str):
        return (1, 0.0, value)
    return (2, 0.0, json.dumps(value, sort_keys=True, default=str))


def differing_params(records: Sequence[dict[str, Any]]) -> list[str]:
    """Parameter names whose values are not the same in all *records* (absent counts as a value).

    In order of first appearance. One record or none: nothing differs.
    """
    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(record["params"]))
    differing = []
    for name in names:
        first = records[0]["params"].get(name, MISSING)
        if any(not same_value(r["params"].get(name, MISSING), first) for r in records[1:]):
            differing.append(name)
    return differing


def same_value(a: Any, b: Any) -> bool:
    """Equal parameter values; a flag and a number are not the same value (``True == 1``)."""
    return a is b or (isinstance(a, bool) == isinstance(b, bool) and a == b)


# --- as a DataFrame --------------------------------------------------------------------------

#: The first columns of :func:`runs_dataframe`, before ``params.*`` and ``metrics.*``.
DATAFRAME_COLUMNS = ("id", "experiment", "status", "start", "end", "duration", "path", "tags")


def runs_dataframe(
    output_dir: str | os.PathLike[str] | None = None,
    experiment: str | None = None,
    sweep: str | None = None,
) -> pandas.DataFrame:
    """The runs of :func:`load_runs` as a pandas DataFrame, one row per run, oldest first.

    Columns: :data:`DATAFRAME_COLUMNS`, then ``params.<name>`` and ``metrics.<tag>`` (the
    names MLflow's ``search_runs()`` gives them), so
    ``df.sort_values("metrics.val/acc")`` works. ``start`` and ``end`` are UTC timestamps
    (``NaT`` while a run goes), ``duration`` float seconds, ``tags`` a list of str; a
    parameter or metric a run does not have is NaN. Needs the ``pandas`` extra.
    """
    try:
        import pandas as pd
    except ImportError:
        raise PystematicError(
            "runs_dataframe() needs pandas: pip install 'pystematic[pandas]'"
        ) from None
    records = load_runs(output_dir, experiment, sweep=sweep)
    columns: dict[str, list[Any]] = {name: [] for name in DATAFRAME_COLUMNS}
    for key in ("id", "experiment", "status", "start", "end", "path", "tags"):
        columns[key] = [r[key] for r in records]
    columns["duration"] = [math.nan if r["duration"] is None else r["duration"] for r in records]
    for prefix, key in (("params.", "params"), ("metrics.", "metrics")):
        names: dict[str, None] = {}
        for record in records:
            names.update(dict.fromkeys(record[key]))
        for name in names:
            values = [r[key].get(name, math.nan) for r in records]
            columns[prefix + name] = [math.nan if v is None else v for v in values]
    frame = pd.DataFrame(columns)
    for key in ("start", "end"):
        frame[key] = pd.to_datetime(frame[key], utc=True, format="ISO8601")
    frame["duration"] = frame["duration"].astype("float64")
    return frame
