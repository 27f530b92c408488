"""The ``pystematic runs`` table: which parameters gave which result, fitted to the terminal.

One table per experiment (each has its own parameters and metrics), columns in the order
id, status, duration, the parameters that differ between the experiment's listed runs (all
of them for a single run), then its metrics. When a table is wider than the terminal:

1. parameter and picked columns shrink, widest first, to :data:`MIN_COLUMN_WIDTH` (values
   cut with an ellipsis); metric columns shrink to their widest value (headers fold onto
   more lines, values are never cut);
2. parameter columns are left out: the constant ones first, then ``random_seed`` (drawn
   anew for nearly every run), then the least recently varied (see :func:`drop_order`);
   the caption names them;
3. never the id, status, duration, the metrics or the ``--sort`` column: when those alone
   do not fit, the table continues below in further panels that repeat the id column.

rich is imported when a table is drawn, never when this module is imported. For speed a
table has a single row whose cells hold one line per run, and columns lay out their own
lines: rich measures and wraps each cell on its own at about 60 µs a cell, so 2,000 runs x
16 columns took 2 s to print that way.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .runs import (
    MISSING,
    Field,
    differing_params,
    resolve_field,
    same_value,
    sort_field,
)

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult
    from rich.style import Style

#: Narrowest a parameter or picked column gets before parameter columns are left out.
MIN_COLUMN_WIDTH = 8
#: Lines a metric's header may fold onto, at most, when its column shrinks.
MAX_HEADER_LINES = 3
#: Parameters left out right after the constant ones: they differ between almost all runs.
NOISE_PARAMS = ("random_seed",)
# A header folds after these characters ("train/" "accuracy").
_WORD = re.compile(r"[^/_.\-]+[/_.\-]*|[/_.\-]+")
#: The columns every table starts with.
DEFAULT_FIELDS = ("id", "status", "duration")

STATUS_STYLES = {
    "completed": "green",
    "running": "cyan",
    "failed": "red",
    "died": "bold red",
    "interrupted": "yellow",
}


def runs_table(
    records: Sequence[dict[str, Any]],
    *,
    columns: Sequence[str] | None = None,
    sort: str | None = None,
) -> RunsView:
    """A rich renderable of *records*: one table per experiment, in order of appearance.

    ``columns`` picks the columns (names as :func:`pystematic.runs.resolve_field` takes
    them; ``id`` is always first); unknown names are a ``ParameterError`` with a "did you
    mean". ``sort`` (a ``--sort`` value) names a column that is always shown.
    """
    picked = None
    if columns is not None:
        picked = [resolve_field(name, records, "--columns") for name in columns]
    sorted_by = sort_field(sort, records) if sort else None
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(record["experiment"], []).append(record)
    plans = [_plan(name, runs, picked, sorted_by) for name, runs in groups.items()]
    return RunsView(plans)


@dataclass
class _Plan:
    """One experiment's table before it meets a terminal: columns and which go first."""

    title: str
    columns: list[_Column]
    drop_order: list[int] = field(default_factory=list)


def _plan(
    experiment: str,
    records: list[dict[str, Any]],
    picked: list[Field] | None,
    sorted_by: Field | None,
) -> _Plan:
    fields = _default_fields(records) if picked is None else _picked_fields(records, picked)
    if sorted_by is not None and sorted_by not in fields and sorted_by.name != "experiment":
        if picked is None and sorted_by.kind == "field":
            fields.insert(len(DEFAULT_FIELDS), sorted_by)  # after the duration
        elif picked is None and _has(records, sorted_by):  # a constant parameter
            metrics = [i for i, f in enumerate(fields) if f.kind == "metric"]
            fields.insert(metrics[0] if metrics else len(fields), sorted_by)
        elif _has(records, sorted_by):
            fields.append(sorted_by)
    columns = [_column(f, records) for f in fields]
    protected = {i for i, f in enumerate(fields) if f.kind != "param" or f == sorted_by}
    params = [f.name for f in fields if f.kind == "param"]
    order = drop_order(records, params)
    index = {f.name: i for i, f in enumerate(fields) if f.kind == "param"}
    count = f"{len(records)} run{'' if len(records) == 1 else 's'}"
    return _Plan(
        title=f"{experiment}: {count}",
        columns=columns,
        drop_order=[index[name] for name in order if index[name] not in protected],
    )


def _default_fields(records: list[dict[str, Any]]) -> list[Field]:
    params = list(records[0]["params"]) if len(records) == 1 else differing_params(records)
    params = [p for p in params if p not in NOISE_PARAMS] + [p for p in params if p in NOISE_PARAMS]
    metrics: dict[str, None] = {}
    for record in records:
        metrics.update(dict.fromkeys(record["metrics"]))
    return [
        *(Field("field", name) for name in DEFAULT_FIELDS),
        *(Field("param", name) for name in params),
        *(Field("metric", name) for name in metrics),
    ]


def _picked_fields(records: list[dict[str, Any]], picked: list[Field]) -> list[Field]:
    """The picked columns this experiment's runs have, ``id`` first, each once."""
    fields = [Field("field", "id")]
    for f in picked:
        if f not in fields and (f.kind == "field" or _has(records, f)):
            fields.append(f)
    return fields


def _has(records: list[dict[str, Any]], f: Field) -> bool:
    return any(f.get(r) is not MISSING for r in records)


def drop_order(records: Sequence[dict[str, Any]], params: Sequence[str]) -> list[str]:
    """The order in which parameter columns give way when a table is too wide.

    First the parameters that are the same in every run (right to left), then
    :data:`NOISE_PARAMS`, then the least recently varied: a parameter *varies* at a run
    when its value differs from the run before it (by start time), and the one whose last
    variation is oldest goes first (ties: the column further right first). So the
    parameters of the latest series of runs stay longest.
    """
    timeline = sorted(records, key=lambda r: (r["start"] or "", r["id"]))
    last_change: dict[str, int] = {}
    for name in params:
        changed = -1
        previous = timeline[0]["params"].get(name, MISSING) if timeline else MISSING
        for i, record in enumerate(timeline[1:], start=1):
            value = record["params"].get(name, MISSING)
            if not same_value(value, previous):
                changed = i
            previous = value
        last_change[name] = changed
    position = {name: i for i, name in enumerate(params)}
    constant = [p for p in params if last_change[p] < 0]
    noise = [p for p in params if p in NOISE_PARAMS and last_change[p] >= 0]
    varied = [p for p in params if p not in NOISE_PARAMS and last_change[p] >= 0]
    varied.sort(key=lambda p: (last_change[p], -position[p]))
    return constant[::-1] + noise + varied


# --- cells -----------------------------------------------------------------------------------


def _column(f: Field, records: list[dict[str, Any]]) -> _Column:
    if f.kind == "metric":
        cells = [_cell(f.get(r), format_metric, "magenta") for r in records]
        return _Column(f.name, cells, kind="metric", right=True)
    if f.kind == "param":
        cells = [_cell(f.get(r), format_value, "cyan") for r in records]
        return _Column(f.name, cells, kind="param")
    if f.name == "id":
        return _Column("id", [(r["id"], "bold") for r in records], kind="fixed")
    if f.name == "status":
        return _Column("status", [_status_cell(r) for r in records], kind="fixed")
    if f.name == "duration":
        cells = [(format_duration(r["duration"]), "") for r in records]
        return _Column("duration", cells, kind="fixed", right=True)
    fmt = _format_time if f.name in ("start", "end") else format_value
    right = f.name in ("world_size", "failed_rank")
    return _Column(f.name, [_cell(f.get(r), fmt, "") for r in records], kind="field", right=right)


def _cell(value: Any, fmt: Callable[[Any], str], style: str) -> tuple[str, str]:
    return ("-", "dim") if value is MISSING or value is None else (fmt(value), style)


def _status_cell(record: dict[str, Any]) -> tuple[str, str]:
    status = record["status"]
    label = status
    if status == "failed" and record.get("failed_rank") is not None:
        label = f"failed (rank {record['failed_rank']})"
    return label, STATUS_STYLES.get(status, "")


def _format_time(value: Any) -> str:
    """An ISO-8601 time as ``2026-11-25 14:03:12`` (UTC, as written)."""
    text = str(value)
    return text[:19].replace("T", " ") if len(text) >= 19 and text[10] == "T" else text


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


# --- columns and their widths ----------------------------------------------------------------


class _Column:
    """One column of a runs table: its header and one line of text per run."""

    def __init__(
        self, header: str, cells: list[tuple[str, str]], *, kind: str, right: bool = False
    ) -> None:
        from rich.control import strip_control_codes

        self.header = header
        # A value stays on one line whatever it holds, so the runs stay aligned.
        self.cells = [
            (text, style)
            if text.isprintable()
            else (strip_control_codes(text.replace("\n", " ")), style)
            for text, style in cells
        ]
        self.kind = kind  # fixed (id, status, duration), param, metric or field
        self.right = right
        values = max((_cells(t) for t, _ in self.cells), default=0)
        self._plain = values if all(t.isascii() for t, _ in self.cells) else None
        header_width = _cells(header)
        self.width = max(values, header_width)
        # The narrowest width, and the narrowest that folds the header only after a separator.
        if kind == "fixed":
            self.minimum = self.width
        elif kind == "metric":  # values whole; the header folds
            self.minimum = max(values, math.ceil(header_width / MAX_HEADER_LINES), 1)
        else:
            self.minimum = min(self.width, MIN_COLUMN_WIDTH)
        words = max(map(_cells, _WORD.findall(header)), default=0)
        self.comfortable = min(self.width, max(self.minimum, words))

    def fit(self, text: str, width: int) -> str:
        """*text* cut (with an ellipsis) or padded to *width* cells, plus a space either side."""
        from rich.cells import set_cell_size

        size = _cells(text)
        if size > width:
            text = set_cell_size(text, width - 1) + "…" if width > 1 else "…"[:width]
        elif size < width:
            pad = " " * (width - size)
            text = pad + text if self.right else text + pad
        return f" {text} "

    def fit_all(self, width: int) -> list[str]:
        """Every cell, as :meth:`fit` makes it (at C speed for ASCII cells that fit)."""
        if self._plain is not None and self._plain <= width:
            pad = str.rjust if self.right else str.ljust
            return [f" {pad(text, width)} " for text, _ in self.cells]
        return [self.fit(text, width) for text, _ in self.cells]

    def header_lines(self, width: int) -> list[str]:
        """The header folded to *width* (after a ``/``, ``_``, ``.`` or ``-`` where one is)."""
        text, lines = self.header, list[str]()
        while _cells(text) > width and len(lines) < MAX_HEADER_LINES - 1:
            cut = max(text.rfind(sep, 0, width) for sep in "/_.-") + 1
            cut = cut if cut > 0 else width
            lines.append(text[:cut])
            text = text[cut:]
        return [*lines, text]


def _cells(text: str) -> int:
    """Terminal cells *text* takes (wide characters take two)."""
    if text.isascii():
        return len(text)
    from rich.cells import cell_len

    return cell_len(text)


def table_width(widths: Sequence[int]) -> int:
    """Cells a boxed table with these content widths takes: ``│ `` + `` `` around each, ``│``."""
    return sum(widths) + 3 * len(widths) + 1


def fit_widths(
    naturals: Sequence[int], minimums: Sequence[int], max_width: int
) -> list[int] | None:
    """Content widths for a boxed table of at most *max_width* cells, or None if none fit.

    Columns keep their natural width when all fit; otherwise every column is capped at one
    level, as high as fits (the widest give way first), never below its minimum.
    """
    budget = max_width - table_width([0] * len(naturals))
    if sum(naturals) <= budget:
        return list(naturals)
    if sum(minimums) > budget:
        return None

    def capped(level: int) -> list[int]:
        return [max(low, min(want, level)) for want, low in zip(naturals, minimums, strict=True)]

    low, high = 0, max(naturals)
    while low < high:
        mid = (low + high + 1) // 2
        if sum(capped(mid)) <= budget:
            low = mid
        else:
            high = mid - 1
    result = capped(low)
    spare = budget - sum(result)
    for i, want in enumerate(naturals):
        if spare and result[i] < want:
            result[i] += 1
            spare -= 1
    return result


@dataclass
class Layout:
    """How a table meets a terminal: panels (column index, width) and the columns left out."""

    panels: list[list[tuple[int, int]]]
    dropped: list[int]


def layout(
    naturals: Sequence[int],
    minimums: Sequence[int] | tuple[Sequence[int], Sequence[int]],
    drop: Sequence[int],
    max_width: int,
) -> Layout:
    """Fit columns into *max_width*: shrink, then leave out *drop* in order, then split.

    *minimums* is one width a column or a pair: the widths its header folds nicely at,
    then the least it can take; the first is tried before the second at each step, so a
    header folds mid-word only where that keeps a column in. Column 0 (the id) starts
    every panel. Columns not in *drop* are never left out: when they do not fit at their
    minimum widths they are spread over several panels, as many to a panel as fit (at
    least one, which rich crops at the terminal's edge).
    """
    comfortable, least = minimums if isinstance(minimums, tuple) else (minimums, minimums)

    def fit(columns: list[int]) -> list[int] | None:
        want = [naturals[i] for i in columns]
        return fit_widths(want, [comfortable[i] for i in columns], max_width) or fit_widths(
            want, [least[i] for i in columns], max_width
        )

    shown = list(range(len(naturals)))
    dropped: list[int] = []
    for candidate in [None, *drop]:
        if candidate is not None:
            shown.remove(candidate)
            dropped.append(candidate)
        widths = fit(shown)
        if widths is not None:
            return Layout([list(zip(shown, widths, strict=True))], dropped)
    panels: list[list[int]] = [[0]]
    for i in shown[1:]:
        if (
            len(panels[-1]) == 1
            or table_width([comfortable[j] for j in [*panels[-1], i]]) <= max_width
        ):
            panels[-1].append(i)
        else:
            panels.append([0, i])
    placed = []
    for panel in panels:
        widths = fit(panel) or [comfortable[i] for i in panel]
        placed.append(list(zip(panel, widths, strict=True)))
    return Layout(placed, dropped)


# --- drawing ---------------------------------------------------------------------------------


class RunsView:
    """The tables of :func:`runs_table`, laid out when printed (the width is known then)."""

    def __init__(self, plans: list[_Plan]) -> None:
        self.plans = plans

    @property
    def natural_width(self) -> int:
        """Cells the widest table takes when nothing is cut (for output that is not a terminal)."""
        return max((table_width([c.width for c in plan.columns]) for plan in self.plans), default=0)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.text import Text

        if not self.plans:
            yield Text("0 runs")
            return
        for n, plan in enumerate(self.plans):
            if n:
                yield Text("")
            yield from _draw(plan, console, options)


def _draw(plan: _Plan, console: Console, options: ConsoleOptions) -> Iterator[Any]:
    """A plan as boxed tables, one per panel: segments made here, a line at a time.

    rich's Table renders every cell on its own (about 60 µs a cell), which made 2,000 runs
    take seconds; the box characters and styles are rich's own (ASCII where the terminal
    needs it).
    """
    from rich import box
    from rich.segment import Segment
    from rich.text import Text

    columns = plan.columns
    fitted = layout(
        [c.width for c in columns],
        ([c.comfortable for c in columns], [c.minimum for c in columns]),
        plan.drop_order,
        options.max_width,
    )
    lines = box.HEAVY_HEAD.substitute(options, safe=console.safe_box)
    header_style = console.get_style("table.header")
    styles: dict[str, Style | None] = {"": None}
    newline = Segment.line()
    for p, panel in enumerate(fitted.panels):
        title = plan.title if p == 0 else f"{plan.title} (continued)"
        yield Text(title, style="table.title")
        widths = [width + 2 for _, width in panel]
        yield Segment(lines.get_top(widths))
        yield newline
        folded = [columns[i].header_lines(width) for i, width in panel]
        height = max(map(len, folded))
        for k in range(height):  # headers sit on the last lines, over their column
            yield Segment(lines.head_left)
            for n, ((i, width), header) in enumerate(zip(panel, folded, strict=True)):
                text = header[k - height + len(header)] if k >= height - len(header) else ""
                if n:
                    yield Segment(lines.head_vertical)
                yield Segment(columns[i].fit(text, width), header_style)
            yield Segment(lines.head_right)
            yield newline
        yield Segment(lines.get_row(widths, "head"))
        yield newline
        cells = []  # per column: (text, style) of every row, fitted
        for i, width in panel:
            for _, name in columns[i].cells:
                if name not in styles:
                    styles[name] = console.get_style(name)
            fitted_cells = columns[i].fit_all(width)
            cells.append(
                [
                    (t, styles[name])
                    for t, (_, name) in zip(fitted_cells, columns[i].cells, strict=True)
                ]
            )
        left, bar, right = (
            Segment(c) for c in (lines.mid_left, lines.mid_vertical, lines.mid_right)
        )
        for row in zip(*cells, strict=True):
            yield left
            for n, (text, style) in enumerate(row):
                if n:
                    yield bar
                yield Segment(text, style)
            yield right
            yield newline
        yield Segment(lines.get_bottom(widths))
        yield newline
    if fitted.dropped:
        names = ", ".join(columns[i].header for i in sorted(fitted.dropped))
        caption = f"not shown, too wide: {names} (pick columns with --columns)"
        yield Text(caption, style="table.caption")
