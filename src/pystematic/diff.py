"""Why two runs differ: ``pystematic diff RUN_A RUN_B``.

Compares two run dirs side by side: parameters, seeds (seeds.log), code (git commit,
branch, dirty and the difference of their git.diff files), packages (packages.txt),
environment (run.json) and metrics (metrics.jsonl). The metrics decide the verdict:
*identical* means every value but ``time`` is the same bit for bit.

:func:`compare_metrics` and :func:`compare_seeds` are the reusable pieces (``pystematic
reproduce`` gives its verdict with them). Standard library only; rich is imported by
:func:`print_diff` alone.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import RunDirError

if TYPE_CHECKING:
    from rich.console import Console

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
SEEDS_FILE = "seeds.log"
GIT_DIFF_FILE = "git.diff"
PACKAGES_FILE = "packages.txt"
#: run.json keys compared under "environment", with their labels.
ENVIRONMENT_KEYS = {
    "python_version": "python",
    "torch_version": "torch",
    "cuda_version": "CUDA",
    "gpu": "GPU",
    "host": "host",
    "world_size": "world size",
    "backend": "backend",
    "pystematic_version": "pystematic",
}
#: run.json keys compared under "code".
CODE_KEYS = {"git_commit": "commit", "git_branch": "branch", "git_dirty": "dirty"}
# Lines of the difference of two git.diff files shown on the terminal (--json has all).
_SHOWN_DIFF_LINES = 40


# --- finding runs ----------------------------------------------------------------------------


def find_run(ref: str, output_dir: Callable[[], Path]) -> Path:
    """The run dir *ref* names: a path to a run dir (or its run.json), else a run id.

    An id is looked up in every experiment folder under ``output_dir()`` (called only for
    ids); a unique prefix of an id will do. Anything else is a :class:`RunDirError`.
    """
    path = Path(ref)
    if os.sep in ref or (os.altsep and os.altsep in ref) or path.exists():
        if path.name == RUN_FILE and path.is_file():
            path = path.parent
        if not (path / RUN_FILE).is_file():
            what = "does not exist" if not path.exists() else "is not a run dir (no run.json)"
            raise RunDirError(f"{ref} {what}")
        return path.resolve()
    root = output_dir()
    runs: dict[str, list[Path]] = {}
    for exp in _folders(root):
        for run in _folders(exp):
            runs.setdefault(run.name, []).append(run)
    found = runs.get(ref) or [p for name, ps in runs.items() if name.startswith(ref) for p in ps]
    found = [p for p in found if (p / RUN_FILE).is_file()]
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(sorted(f"{p.parent.name}/{p.name}" for p in found)[:3])
        raise RunDirError(f"run id {ref!r} is ambiguous under {root}: {names}, ...")
    close = difflib.get_close_matches(ref, list(runs), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise RunDirError(f"no run {ref!r} under {root}{hint}")


def _folders(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []


def read_run_json(run_dir: Path) -> dict[str, Any]:
    """run.json of *run_dir* as a dict (a :class:`RunDirError` when it cannot be read)."""
    try:
        data = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RunDirError(f"{run_dir / RUN_FILE}: unreadable ({e})") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{run_dir / RUN_FILE}: expected a JSON object")
    return data


# --- metrics ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricDifference:
    """One scalar at one step in both runs; ``a`` or ``b`` is None where that run lacks it."""

    step: int
    tag: str
    a: Any
    b: Any

    @property
    def absolute(self) -> float | None:
        """``|b - a|`` when both are finite numbers."""
        if not (_finite(self.a) and _finite(self.b)):
            return None
        return abs(float(self.b) - float(self.a))

    @property
    def relative(self) -> float | None:
        """``|b - a| / max(|a|, |b|)`` when both are finite numbers and not both zero."""
        absolute = self.absolute
        if absolute is None:
            return None
        scale = max(abs(float(self.a)), abs(float(self.b)))
        return absolute / scale if scale else 0.0


@dataclass(frozen=True)
class FinalValue:
    """The last value of a scalar in each run (None where the run never recorded it)."""

    tag: str
    a: Any
    b: Any

    @property
    def difference(self) -> float | None:
        """``b - a`` when both are finite numbers."""
        return float(self.b) - float(self.a) if _finite(self.a) and _finite(self.b) else None

    @property
    def identical(self) -> bool:
        return _same_bits(self.a, self.b)


@dataclass
class MetricsComparison:
    """Two metrics.jsonl files compared value by value, ``time`` left out.

    ``identical``: the same steps with the same scalars, bit for bit. ``steps`` and
    ``scalars`` count the distinct steps and tags of both files (``identical: 1,200 steps
    x 4 scalars``); ``first_difference`` is the lowest step (and, in it, the first tag)
    where they differ, a step present in one file only included.
    """

    identical: bool
    steps: int
    scalars: int
    first_difference: MetricDifference | None
    largest_absolute: MetricDifference | None
    largest_relative: MetricDifference | None
    only_in_a: list[int]
    only_in_b: list[int]
    finals: list[FinalValue]
    missing_a: bool = False
    missing_b: bool = False
    unreadable_a: int = 0
    unreadable_b: int = 0
    max_steps: int | None = None

    def verdict(self) -> str:
        """One line: ``identical: S steps x K scalars`` or where they first differ."""
        if self.identical:
            return f"identical: {self.steps:,} steps x {self.scalars} scalars"
        first = self.first_difference
        assert first is not None
        if first.a is None and first.b is None:  # pragma: no cover - not produced
            return f"differ at step {first.step}"
        if first.a is None or first.b is None:
            which = "B" if first.a is None else "A"
            return f"differ: step {first.step}, {first.tag!r} is only in {which}"
        return (
            f"differ: first at step {first.step}, {first.tag!r}: "
            f"{_exact(first.a)} vs {_exact(first.b)}"
        )

    def notes(self) -> list[str]:
        """Lines that explain the verdict: missing files, steps in one file only, skipped
        lines, and (when they differ) the largest absolute and relative differences."""
        notes = []
        if self.missing_a or self.missing_b:
            which = " and ".join(x for x, m in (("A", self.missing_a), ("B", self.missing_b)) if m)
            notes.append(f"no metrics.jsonl in {which}")
        for label, steps in (("A", self.only_in_a), ("B", self.only_in_b)):
            if steps:
                notes.append(f"{len(steps):,} steps only in {label} ({_ranges(steps)})")
        for label, count in (("A", self.unreadable_a), ("B", self.unreadable_b)):
            if count:
                notes.append(f"{count} unreadable line(s) in {label}'s metrics.jsonl skipped")
        for kind, d in (("absolute", self.largest_absolute), ("relative", self.largest_relative)):
            if d is not None and not self.identical:
                value = d.absolute if kind == "absolute" else d.relative
                notes.append(
                    f"largest {kind} difference {value:.6g} at step {d.step}, {d.tag!r} "
                    f"({_exact(d.a)} vs {_exact(d.b)})"
                )
        return notes

    def to_json(self) -> dict[str, Any]:
        def difference(d: MetricDifference | None) -> dict[str, Any] | None:
            if d is None:
                return None
            return {**asdict(d), "absolute": d.absolute, "relative": d.relative}

        return {
            "identical": self.identical,
            "verdict": self.verdict(),
            "steps": self.steps,
            "scalars": self.scalars,
            "first_difference": difference(self.first_difference),
            "largest_absolute": difference(self.largest_absolute),
            "largest_relative": difference(self.largest_relative),
            "only_in_a": self.only_in_a,
            "only_in_b": self.only_in_b,
            "finals": [
                {**asdict(f), "difference": f.difference, "identical": f.identical}
                for f in self.finals
            ],
            "missing_a": self.missing_a,
            "missing_b": self.missing_b,
            "unreadable_a": self.unreadable_a,
            "unreadable_b": self.unreadable_b,
            "max_steps": self.max_steps,
        }


class _Unordered(Exception):
    """A metrics.jsonl whose steps do not increase line by line (not one we wrote)."""


class _Steps:
    """The (step, scalars) of a metrics.jsonl file, in file order; counts unreadable lines."""

    def __init__(self, path: Path, max_steps: int | None, ordered: bool) -> None:
        self.path = path
        self.max_steps = max_steps
        self.ordered = ordered
        self.missing = not path.is_file()
        self.unreadable = 0

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any]]]:
        if self.missing:
            return
        if not self.ordered:
            merged: dict[int, dict[str, Any]] = {}
            for step, values in self._lines():
                merged.setdefault(step, {}).update(values)
            yield from sorted(merged.items())
            return
        previous = None
        for step, values in self._lines():
            if previous is not None and step <= previous:
                raise _Unordered
            previous = step
            yield step, values

    def _lines(self) -> Iterator[tuple[int, dict[str, Any]]]:
        self.unreadable = 0
        with open(self.path, "rb") as f:
            for line in f:
                try:
                    values = json.loads(line)
                    step = values.pop("step")
                except (ValueError, KeyError, AttributeError, TypeError):
                    self.unreadable += bool(line.strip())
                    continue
                if type(step) is not int:
                    self.unreadable += 1
                    continue
                if self.max_steps is not None and step >= self.max_steps:
                    continue
                values.pop("time", None)
                yield step, values


def compare_metrics(
    path_a: str | os.PathLike[str],
    path_b: str | os.PathLike[str],
    *,
    max_steps: int | None = None,
) -> MetricsComparison:
    """Compare two metrics.jsonl files (or the run dirs that hold them), streaming.

    ``max_steps`` compares only the steps numbered below it (the first N recorder steps:
    ``global_step`` starts at 0). A missing file counts as one without steps; torn or
    foreign lines are skipped and counted.
    """
    a, b = _metrics_path(path_a), _metrics_path(path_b)
    try:
        return _compare(_Steps(a, max_steps, True), _Steps(b, max_steps, True), max_steps)
    except _Unordered:
        return _compare(_Steps(a, max_steps, False), _Steps(b, max_steps, False), max_steps)


def _metrics_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path / METRICS_FILE if path.is_dir() else path


def _compare(steps_a: _Steps, steps_b: _Steps, max_steps: int | None) -> MetricsComparison:
    tags: dict[str, None] = {}
    last_a: dict[str, Any] = {}
    last_b: dict[str, Any] = {}
    only_a: list[int] = []
    only_b: list[int] = []
    first: MetricDifference | None = None
    largest_abs: MetricDifference | None = None
    largest_rel: MetricDifference | None = None
    count = 0
    for step, values_a, values_b in _merge(iter(steps_a), iter(steps_b)):
        count += 1
        if values_a is None:
            only_b.append(step)
        elif values_b is None:
            only_a.append(step)
        tags.update(dict.fromkeys(values_a or ()))
        tags.update(dict.fromkeys(values_b or ()))
        last_a.update(values_a or ())
        last_b.update(values_b or ())
        if values_a is not None and values_a == values_b and _no_signed_zero(values_a):
            continue  # the common case: the same step, equal values (-0.0 checked apart)
        for tag in dict.fromkeys([*(values_a or ()), *(values_b or ())]):
            va = None if values_a is None else values_a.get(tag)
            vb = None if values_b is None else values_b.get(tag)
            if _same_bits(va, vb):
                continue
            difference = MetricDifference(step, tag, va, vb)
            if first is None:
                first = difference
            absolute, relative = difference.absolute, difference.relative
            if absolute is not None:
                if largest_abs is None or absolute > (largest_abs.absolute or 0.0):
                    largest_abs = difference
                if relative is not None and (
                    largest_rel is None or relative > (largest_rel.relative or 0.0)
                ):
                    largest_rel = difference
    finals = [FinalValue(tag, last_a.get(tag), last_b.get(tag)) for tag in tags]
    return MetricsComparison(
        identical=first is None,
        steps=count,
        scalars=len(tags),
        first_difference=first,
        largest_absolute=largest_abs,
        largest_relative=largest_rel,
        only_in_a=only_a,
        only_in_b=only_b,
        finals=finals,
        missing_a=steps_a.missing,
        missing_b=steps_b.missing,
        unreadable_a=steps_a.unreadable,
        unreadable_b=steps_b.unreadable,
        max_steps=max_steps,
    )


def _merge(
    a: Iterator[tuple[int, dict[str, Any]]], b: Iterator[tuple[int, dict[str, Any]]]
) -> Iterator[tuple[int, dict[str, Any] | None, dict[str, Any] | None]]:
    """Join two step-ordered streams on the step."""
    item_a, item_b = next(a, None), next(b, None)
    while item_a is not None or item_b is not None:
        if item_b is None or (item_a is not None and item_a[0] < item_b[0]):
            assert item_a is not None
            yield item_a[0], item_a[1], None
            item_a = next(a, None)
        elif item_a is None or item_b[0] < item_a[0]:
            yield item_b[0], None, item_b[1]
            item_b = next(b, None)
        else:
            yield item_a[0], item_a[1], item_b[1]
            item_a, item_b = next(a, None), next(b, None)


def _no_signed_zero(values: Mapping[str, Any]) -> bool:
    # 0.0 == -0.0 in Python but not bit for bit: such a step is compared value by value.
    return all(v != 0 for v in values.values() if type(v) is float)


def _same_bits(a: Any, b: Any) -> bool:
    """The same value bit for bit (NaN equals NaN; 0.0 and -0.0 differ; 1 and 1.0 do not)."""
    if _number(a) and _number(b):
        fa, fb = float(a), float(b)
        if math.isnan(fa) or math.isnan(fb):
            return math.isnan(fa) and math.isnan(fb)
        return fa == fb and math.copysign(1.0, fa) == math.copysign(1.0, fb)
    return bool(a == b) and type(a) is type(b)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return _number(value) and math.isfinite(value)


def _exact(value: Any) -> str:
    """A value with every digit that matters (floats as ``repr``)."""
    return repr(value) if isinstance(value, float) else json.dumps(value)


# --- seeds -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedDifference:
    """A seed (by rank and call number) that is not the same in both runs.

    ``kind``: ``value`` (same purpose, another value), ``order`` (another purpose at this
    call, and this call's purpose is drawn at another call in the other run), ``purpose``
    (another purpose, drawn nowhere in the other run), ``only_a`` / ``only_b``.
    """

    rank: int
    call: int
    kind: str
    purpose_a: str | None
    value_a: int | None
    purpose_b: str | None
    value_b: int | None
    #: for ``order``: the call at which the other run draws this run's purpose
    elsewhere: int | None = None

    def describe(self) -> str:
        """One line for a person: which seed, and how it differs."""
        seed = "the master seed" if self.call == 0 else f"seed {self.call}"
        rank = f" on rank {self.rank}" if self.rank else ""
        if self.kind == "value":
            return f"{seed} ({self.purpose_a!r}){rank}: {self.value_a} vs {self.value_b}"
        if self.kind == "only_a":
            return f"{seed} ({self.purpose_a!r}){rank}: drawn only in A"
        if self.kind == "only_b":
            return f"{seed} ({self.purpose_b!r}){rank}: drawn only in B"
        text = f"{seed}{rank}: {self.purpose_a!r} in A, {self.purpose_b!r} in B"
        if self.kind == "order":
            text += (
                f" (drawn in a different order: {self.purpose_a!r} is seed {self.elsewhere} in B)"
            )
        return text


@dataclass
class SeedsComparison:
    """Two seeds.log files compared call by call."""

    identical: bool
    master_a: int | None
    master_b: int | None
    derived_a: int
    derived_b: int
    differences: list[SeedDifference] = field(default_factory=list)
    missing_a: bool = False
    missing_b: bool = False

    def summary(self) -> str:
        """One line: the same seeds, or the first thing that differs."""
        if self.missing_a and self.missing_b:
            return "no seeds.log in either run"
        if self.identical:
            return f"the same: master seed {self.master_a}, {self.derived_a} derived seeds"
        if self.master_a != self.master_b:
            order = [d for d in self.differences if d.kind != "value" and d.call != 0]
            text = f"master seed {self.master_a} vs {self.master_b}, so every derived seed differs"
            return text + (f"; also {order[0].describe()}" if order else "")
        return self.differences[0].describe()

    def to_json(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in asdict(self).items() if k != "differences"},
            "summary": self.summary(),
            "differences": [{**asdict(d), "description": d.describe()} for d in self.differences],
        }


def read_seeds(path: str | os.PathLike[str]) -> dict[tuple[int, int], tuple[str, int]] | None:
    """``(rank, call) -> (purpose, value)`` of a seeds.log (or its run dir); None if missing.

    A resumed run logs its seeds again from the start: the first line of each call counts.
    """
    path = Path(path)
    if path.is_dir():
        path = path / SEEDS_FILE
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    seeds: dict[tuple[int, int], tuple[str, int]] = {}
    for line in text.splitlines():
        try:
            record = json.loads(line)
            key = (int(record["rank"]), int(record["call"]))
            value = (str(record["purpose"]), int(record["value"]))
        except (ValueError, KeyError, TypeError):
            continue
        seeds.setdefault(key, value)
    return seeds


def compare_seeds(
    path_a: str | os.PathLike[str],
    path_b: str | os.PathLike[str],
    *,
    partial_b: bool = False,
) -> SeedsComparison:
    """Compare two seeds.log files (or run dirs): each seed's purpose and value, call by call.

    ``partial_b``: B stopped early on purpose (``reproduce --steps``), so the seeds A drew
    after B's last one are not differences.
    """
    seeds_a, seeds_b = read_seeds(path_a), read_seeds(path_b)
    a, b = seeds_a or {}, seeds_b or {}
    if partial_b:
        last: dict[int, int] = {}
        for rank, call in b:
            last[rank] = max(call, last.get(rank, -1))
        a = {(rank, call): v for (rank, call), v in a.items() if call <= last.get(rank, -1)}
    calls_b: dict[tuple[int, str], int] = {}
    for (rank, call), (purpose, _) in sorted(b.items()):
        calls_b.setdefault((rank, purpose), call)
    purposes_a = {(rank, purpose) for (rank, _), (purpose, _) in a.items()}
    differences = []
    for key in sorted(a.keys() | b.keys()):
        rank, call = key
        pa, va = a.get(key, (None, None))
        pb, vb = b.get(key, (None, None))
        if pa == pb and va == vb:
            continue
        elsewhere = None
        if pa is None:
            kind = "only_b"
        elif pb is None:
            kind = "only_a"
        elif pa == pb:
            kind = "value"
        elif (rank, pa) in calls_b or (rank, pb) in purposes_a:
            kind = "order"
            elsewhere = calls_b.get((rank, pa))
        else:
            kind = "purpose"
        differences.append(SeedDifference(rank, call, kind, pa, va, pb, vb, elsewhere))

    def master(seeds: dict[tuple[int, int], tuple[str, int]]) -> int | None:
        return seeds[(0, 0)][1] if (0, 0) in seeds else None

    return SeedsComparison(
        identical=not differences,
        master_a=master(a),
        master_b=master(b),
        derived_a=sum(1 for rank, call in a if rank == 0 and call > 0),
        derived_b=sum(1 for rank, call in b if rank == 0 and call > 0),
        differences=differences,
        missing_a=seeds_a is None,
        missing_b=seeds_b is None,
    )


# --- packages and code -----------------------------------------------------------------------


def read_packages(path: Path) -> dict[str, tuple[str, str]] | None:
    """packages.txt as ``normalized name -> (name, version)``; None when missing."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return parse_packages(text)


def parse_packages(text: str) -> dict[str, tuple[str, str]]:
    """``name==version`` lines (packages.txt) as ``normalized name -> (name, version)``."""
    found = {}
    for line in text.splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and name:
            found[re.sub(r"[-_.]+", "-", name).lower()] = (name, version)
    return found


@dataclass
class PackagesComparison:
    """What differs between two packages.txt files."""

    added: list[str]  # name==version, in B only
    removed: list[str]  # in A only
    changed: list[tuple[str, str, str]]  # name, version in A, version in B
    same: int
    missing_a: bool = False
    missing_b: bool = False

    @property
    def identical(self) -> bool:
        return not (self.added or self.removed or self.changed)


def compare_packages(path_a: Path, path_b: Path) -> PackagesComparison:
    """Compare two packages.txt files."""
    return compare_package_listings(read_packages(path_a), read_packages(path_b))


def compare_package_listings(
    a: Mapping[str, tuple[str, str]] | None, b: Mapping[str, tuple[str, str]] | None
) -> PackagesComparison:
    """Compare two listings as :func:`read_packages` gives them (None: no listing)."""
    pa, pb = a or {}, b or {}
    return PackagesComparison(
        added=[f"{pb[k][0]}=={pb[k][1]}" for k in sorted(pb.keys() - pa.keys())],
        removed=[f"{pa[k][0]}=={pa[k][1]}" for k in sorted(pa.keys() - pb.keys())],
        changed=[
            (pb[k][0], pa[k][1], pb[k][1])
            for k in sorted(pa.keys() & pb.keys())
            if pa[k][1] != pb[k][1]
        ],
        same=sum(1 for k in pa.keys() & pb.keys() if pa[k][1] == pb[k][1]),
        missing_a=a is None,
        missing_b=b is None,
    )


def git_diff_difference(run_a: Path, run_b: Path) -> list[str]:
    """The unified diff between the two runs' git.diff files (empty when they match)."""
    texts = []
    for run in (run_a, run_b):
        try:
            texts.append((run / GIT_DIFF_FILE).read_text(encoding="utf-8", errors="replace"))
        except OSError:
            texts.append("")
    if texts[0] == texts[1]:
        return []
    return list(
        difflib.unified_diff(
            texts[0].splitlines(),
            texts[1].splitlines(),
            fromfile="A/git.diff",
            tofile="B/git.diff",
            lineterm="",
        )
    )


# --- the whole comparison --------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One named value in both runs."""

    name: str
    a: Any
    b: Any

    @property
    def same(self) -> bool:
        if _number(self.a) and _number(self.b):
            return _same_bits(self.a, self.b)
        # True == 1 in Python; a flag and a number are not the same value.
        return isinstance(self.a, bool) == isinstance(self.b, bool) and bool(self.a == self.b)


@dataclass
class RunDiff:
    """Everything :func:`diff_runs` found; ``metrics.identical`` is the verdict."""

    a: dict[str, Any]  # the two runs: id, experiment, status, start, duration, path
    b: dict[str, Any]
    params: list[Row]
    seeds: SeedsComparison
    code: list[Row]
    git_diff: list[str]
    packages: PackagesComparison
    environment: list[Row]
    metrics: MetricsComparison

    def to_json(self) -> dict[str, Any]:
        def rows(items: list[Row]) -> dict[str, Any]:
            return {r.name: {"a": r.a, "b": r.b, "same": r.same} for r in items}

        return {
            "a": self.a,
            "b": self.b,
            "identical": self.metrics.identical,
            "params": rows(self.params),
            "seeds": self.seeds.to_json(),
            "code": {**rows(self.code), "git_diff": self.git_diff},
            "packages": {
                "added": self.packages.added,
                "removed": self.packages.removed,
                "changed": [{"name": n, "a": va, "b": vb} for n, va, vb in self.packages.changed],
                "same": self.packages.same,
                "missing_a": self.packages.missing_a,
                "missing_b": self.packages.missing_b,
            },
            "environment": rows(self.environment),
            "metrics": self.metrics.to_json(),
        }


def diff_runs(run_a: Path, run_b: Path) -> RunDiff:
    """Compare two run dirs in every respect ``pystematic diff`` shows."""
    data_a, data_b = read_run_json(run_a), read_run_json(run_b)
    params_a, params_b = run_params(run_a, data_a), run_params(run_b, data_b)
    return RunDiff(
        a=_summary(run_a, data_a),
        b=_summary(run_b, data_b),
        params=[
            Row(name, params_a.get(name), params_b.get(name))
            for name in dict.fromkeys([*params_a, *params_b])
        ],
        seeds=compare_seeds(run_a, run_b),
        code=[Row(label, data_a.get(key), data_b.get(key)) for key, label in CODE_KEYS.items()],
        git_diff=git_diff_difference(run_a, run_b),
        packages=compare_packages(run_a / PACKAGES_FILE, run_b / PACKAGES_FILE),
        environment=[
            Row(label, data_a.get(key), data_b.get(key)) for key, label in ENVIRONMENT_KEYS.items()
        ],
        metrics=compare_metrics(run_a, run_b),
    )


def _summary(run_dir: Path, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(data.get("id") or run_dir.name),
        "experiment": str(data.get("experiment") or run_dir.parent.name),
        "status": data.get("status"),
        "start": data.get("start"),
        "duration": data.get("duration"),
        "path": str(run_dir),
    }


def run_params(run_dir: Path, data: dict[str, Any]) -> dict[str, Any]:
    """run.json's params, else parameters.toml's."""
    params = data.get("params")
    if isinstance(params, dict):
        return params
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python < 3.11 only
        import tomli as tomllib
    try:
        return tomllib.loads((run_dir / "parameters.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


# --- showing ---------------------------------------------------------------------------------


def print_diff(result: RunDiff, console: Console | None = None) -> None:
    """Print *result* side by side: a section per respect, what differs in full."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table, box

    console = console or Console()
    out = console.print

    def show(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "true" if value else "false"
        return escape(_exact(value) if isinstance(value, float) else str(value))

    def side_by_side(rows: Sequence[tuple[str, ...]], extra: str | None = None) -> None:
        table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, show_edge=False)
        table.add_column("")
        table.add_column("A", overflow="fold")
        table.add_column("B", overflow="fold")
        if extra:
            table.add_column(extra, justify="right")
        for row in rows:
            table.add_row(*row)
        console.print(table)

    def heading(name: str, text: str, differs: bool) -> None:
        style = "bold yellow" if differs else "bold green"
        out(f"[{style}]{name}[/]: {escape(text)}")

    for label, run in (("A", result.a), ("B", result.b)):
        out(
            f"[bold]{label}[/]  {escape(run['experiment'])}  {escape(run['id'])}  "
            f"{escape(str(run['status']))}  [dim]{escape(run['path'])}[/]",
            soft_wrap=True,
        )

    differing = [r for r in result.params if not r.same]
    same = len(result.params) - len(differing)
    out()
    if differing:
        heading("parameters", f"{len(differing)} differ, {same} the same", True)
        side_by_side([(escape(r.name), show(r.a), show(r.b)) for r in differing])
    else:
        heading("parameters", f"the same ({same})", False)

    seeds = result.seeds
    heading("seeds", seeds.summary(), not seeds.identical)
    shown = [d for d in seeds.differences if d.kind != "value" or seeds.master_a == seeds.master_b]
    for difference in shown[:10]:
        out(f"  {escape(difference.describe())}")
    if len(shown) > 10:
        out(f"  ... {len(shown) - 10} more (--json has all)")

    code_rows = [r for r in result.code if not r.same]
    if code_rows or result.git_diff:
        parts = [r.name for r in code_rows] + (["git.diff"] if result.git_diff else [])
        heading("code", f"{', '.join(parts)} differ", True)
        if code_rows:
            side_by_side([(r.name, show(r.a), show(r.b)) for r in code_rows])
        if result.git_diff:
            for line in result.git_diff[:_SHOWN_DIFF_LINES]:
                style = "green" if line.startswith("+") else "red" if line.startswith("-") else ""
                out(
                    f"  [{style}]{escape(line)}[/]" if style else f"  {escape(line)}",
                    soft_wrap=True,
                )
            if len(result.git_diff) > _SHOWN_DIFF_LINES:
                more = len(result.git_diff) - _SHOWN_DIFF_LINES
                out(f"  ... {more} more lines (--json has all)")
    else:
        commit = dict((r.name, r.a) for r in result.code)
        where = f"commit {str(commit['commit'])[:12]}" if commit["commit"] else "no git"
        if commit.get("branch"):
            where += f" on {commit['branch']}"
        if commit.get("dirty"):
            where += ", the same uncommitted changes"
        heading("code", f"the same ({where})", False)

    packages = result.packages
    if packages.identical:
        note = " (no packages.txt)" if packages.missing_a and packages.missing_b else ""
        heading("packages", f"the same ({packages.same}){note}", False)
    else:
        counts = [
            f"{len(packages.changed)} changed" if packages.changed else "",
            f"{len(packages.added)} only in B" if packages.added else "",
            f"{len(packages.removed)} only in A" if packages.removed else "",
        ]
        heading("packages", ", ".join(c for c in counts if c), True)
        rows = [(escape(n), escape(va), escape(vb)) for n, va, vb in packages.changed]
        rows += [(escape(p.split("==")[0]), "-", escape(p.split("==")[1])) for p in packages.added]
        rows += [
            (escape(p.split("==")[0]), escape(p.split("==")[1]), "-") for p in packages.removed
        ]
        side_by_side(rows)

    env_rows = [r for r in result.environment if not r.same]
    if env_rows:
        heading("environment", f"{', '.join(r.name for r in env_rows)} differ", True)
        side_by_side([(r.name, show(r.a), show(r.b)) for r in env_rows])
    else:
        values = [f"{r.name} {show(r.a)}" for r in result.environment if r.a is not None]
        heading("environment", f"the same ({', '.join(values)})", False)

    metrics = result.metrics
    heading("metrics", metrics.verdict(), not metrics.identical)
    for note in metrics.notes():
        out(f"  {escape(note)}")
    if metrics.finals:
        final_rows = []
        for final in metrics.finals:
            diff = final.difference
            shown_diff = "" if final.identical else ("-" if diff is None else f"{diff:+.6g}")
            final_rows.append((escape(final.tag), show(final.a), show(final.b), shown_diff))
        out("  final values:")
        side_by_side(final_rows, extra="B - A")


def _ranges(steps: list[int]) -> str:
    """``0-9, 15, 20-22`` for the first few runs of consecutive steps."""
    parts: list[str] = []
    start = previous = steps[0]
    for step in [*steps[1:], None]:
        if step is not None and step == previous + 1:
            previous = step
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if step is None or len(parts) == 5:
            break
        start = previous = step
    more = ", ..." if len(parts) == 5 and steps[-1] != previous else ""
    return ", ".join(parts) + more
