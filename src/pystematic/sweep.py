"""Sweeps: many ordinary runs of one experiment over a grid or random samples of parameters.

``pystematic sweep EXP --grid lr=0.1,0.01 --sample dropout=uniform(0,0.5) --trials 4
--repeat 2 --jobs 2 [flags]`` plans the points (the grid's cartesian product, times each
trial, times the repeats), checks every value with the parameter's own type and choices
before anything starts, and derives each run's ``random_seed`` from the sweep seed and the
run's index. It writes ``<output_dir>/<EXP>/sweeps/<sweep-id>/sweep.json`` (atomically,
again whenever a run starts or ends), then runs the points at most ``--jobs`` at a time,
each an ordinary run in its own process (:mod:`pystematic.jobs`) with ``sweep: <id>`` in its
run.json, or as SLURM jobs through submitit. A run dir is made only when its run starts, so
a 1,000-point grid starts its first run at once. Ctrl-C or SIGTERM stops the runs cleanly;
``pystematic sweep --resume SWEEP_DIR`` runs what did not complete.

From Python: :func:`param_matrix` and :func:`run_parameter_sweep`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from . import rundir, seeding
from .discovery import ExperimentInfo
from .errors import ConfigError, ParameterError, PystematicError, RunDirError, did_you_mean
from .jobs import (
    STOP_GRACE_S,
    JobResult,
    ProcessJob,
    RunJob,
    check_importable,
    gpu_slots,
    visible_gpus,
)
from .params import BUILTIN_PARAMETERS, Parameter, cli_name, convert, to_toml_value
from .project import Project

SWEEP_JSON = "sweep.json"
SWEEPS_DIR = "sweeps"
#: Built-in parameters a sweep may vary; the others describe how a run runs, not what.
SWEEPABLE_BUILTINS = ("random_seed", "deterministic")
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
#: Spawn-key tags: run seeds and sample draws are separate streams of the sweep seed.
_RUN_SEED_TAG = 0x53575052  # "SWPR"
_SAMPLE_TAG = 0x53575053  # "SWPS"
#: How often the sweep looks at its runs, and refreshes its heartbeat in sweep.json.
POLL_S = 0.01
HEARTBEAT_S = rundir.HEARTBEAT_SECONDS
#: Exit codes of a sweep stopped by a signal (128 + the signal).
SIGNAL_EXIT: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
EXECUTORS = ("local", "slurm")
#: submitit's cluster for ``--executor slurm``; ``local`` runs the same submission path on
#: this machine (how the tests exercise it without SLURM).
SUBMITIT_CLUSTER_ENV = "PYSTEMATIC_SUBMITIT_CLUSTER"
SLURM_KEYS = {
    # [sweep.slurm] key -> submitit AutoExecutor parameter
    "partition": "slurm_partition",
    "time": "timeout_min",
    "gpus_per_task": "slurm_gpus_per_task",
    "cpus_per_task": "cpus_per_task",
    "array_parallelism": "slurm_array_parallelism",
    "mem_gb": "mem_gb",
    "account": "slurm_account",
    "qos": "slurm_qos",
    "constraint": "slurm_constraint",
    "setup": "slurm_setup",
    "additional_parameters": "slurm_additional_parameters",
}
SWEEP_KEYS = ("jobs", "executor", "slurm")


# ---------------------------------------------------------------- values and distributions


def split_values(text: str, what: str) -> list[Any]:
    """The comma-separated values of ``--grid`` or ``choice(...)``: quotes keep commas
    (``'a,b'``), brackets make a list for a repeatable parameter (``[1,2],[3]``)."""
    items: list[Any] = []
    current: list[str] = []
    quote: str | None = None
    depth = 0
    quoted = False

    def close() -> None:
        token = "".join(current).strip()
        if not token and not quoted:
            raise ParameterError(f"{what}: empty value")
        if token.startswith("[") and token.endswith("]") and not quoted:
            inner = token[1:-1].strip()
            items.append(split_values(inner, what) if inner else [])
        else:
            items.append(token)

    for char in text:
        if quote is not None:
            if char == quote:
                quote = None
            else:
                current.append(char)
        elif char in "'\"":
            quote, quoted = char, True
        elif char == "[":
            depth += 1
            current.append(char)
        elif char == "]":
            depth -= 1
            current.append(char)
        elif char == "," and depth == 0:
            close()
            current, quoted = [], False
        else:
            current.append(char)
    if quote is not None or depth != 0:
        raise ParameterError(f"{what}: unbalanced {'quote' if quote else 'brackets'}")
    close()
    return items


def _number(text: Any, what: str, kind: type = float) -> Any:
    try:
        return kind(text) if kind is float else int(str(text), 0)
    except (TypeError, ValueError):
        raise ParameterError(
            f"{what}: {text!r} is not {'a number' if kind is float else 'an integer'}"
        ) from None


@dataclass(frozen=True)
class Distribution:
    """A ``--sample`` distribution of one parameter: ``kind(args)``, drawn from a uniform u."""

    name: str
    kind: str
    args: tuple[Any, ...]
    text: str

    def draw(self, u: float) -> Any:
        """The value at ``u`` in [0, 1) (the sweep's generator supplies u)."""
        if self.kind == "uniform":
            low, high = self.args
            return low + (high - low) * u
        if self.kind == "loguniform":
            low, high = self.args
            return math.exp(math.log(low) + (math.log(high) - math.log(low)) * u)
        if self.kind == "randint":
            low, high = self.args
            return min(high, low + int(u * (high - low + 1)))
        return self.args[min(len(self.args) - 1, int(u * len(self.args)))]


def _assignment(option: str, spec: str, params: Mapping[str, Parameter]) -> tuple[Parameter, str]:
    """The parameter and the text of ``NAME=...``; unknown names get a did-you-mean."""
    name, sep, rest = spec.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name:
        example = "lr=0.1,0.01" if option == "--grid" else "lr=loguniform(1e-4,1e-1)"
        raise ParameterError(f"{option} {spec!r}: expected NAME=..., e.g. {option} {example}")
    param = params.get(name)
    if param is None:
        known = sorted(n for n, p in params.items() if not p.builtin)
        hint = (
            did_you_mean(name, [*known, *SWEEPABLE_BUILTINS])
            or f" (known: {', '.join(known) or 'none'})"
        )
        raise ParameterError(f"{option} {spec}: unknown parameter {name!r}{hint}")
    if param.builtin and name not in SWEEPABLE_BUILTINS:
        raise ParameterError(
            f"{option} {spec}: --{cli_name(name)} cannot be swept "
            f"(of the built-in parameters only {', '.join(SWEEPABLE_BUILTINS)} can)"
        )
    return param, rest.strip()


def _checked(param: Parameter, value: Any, origin: str) -> Any:
    """*value* in its sweep.json form (TOML-ready; custom types keep their input), checked by
    the parameter's own type and choices."""
    if param.multiple and not isinstance(value, list):
        value = [value]
    if not param.multiple and isinstance(value, list):
        raise ParameterError(f"{origin}: --{cli_name(param.name)} takes one value, not a list")
    converted = convert(param, value, origin)
    if param.name == "random_seed":
        _check_seed(converted, origin)
    if param.is_custom:
        return value
    return to_toml_value(converted)


def _check_seed(seed: Any, origin: str) -> None:
    if seed is not None and not 0 <= seed < seeding.SEED_BOUND:
        raise ParameterError(f"{origin}: a seed is in [0, 2**32), got {seed}")


def parse_grid(spec: str, params: Mapping[str, Parameter]) -> tuple[str, list[Any]]:
    """``NAME=V1,V2,...`` -> (name, checked values)."""
    param, text = _assignment("--grid", spec, params)
    if not text:
        raise ParameterError(f"--grid {spec}: empty grid (give one value or more)")
    origin = f"--grid {spec}"
    return param.name, [_checked(param, v, origin) for v in split_values(text, origin)]


def parse_sample(spec: str, params: Mapping[str, Parameter]) -> Distribution:
    """``NAME=DIST`` -> a checked distribution of that parameter."""
    param, text = _assignment("--sample", spec, params)
    origin = f"--sample {spec}"
    kind, sep, rest = text.partition("(")
    kind = kind.strip()
    if not sep or not rest.endswith(")") or kind not in DISTRIBUTIONS:
        raise ParameterError(
            f"{origin}: expected one of {', '.join(k + '(...)' for k in DISTRIBUTIONS)}"
            + (did_you_mean(kind, DISTRIBUTIONS) if kind else "")
        )
    args = split_values(rest[:-1], origin) if rest[:-1].strip() else []
    if kind == "choice":
        if not args:
            raise ParameterError(f"{origin}: choice() needs one value or more")
        return Distribution(param.name, kind, tuple(_checked(param, a, origin) for a in args), text)
    if len(args) != 2 or any(isinstance(a, list) for a in args):
        raise ParameterError(f"{origin}: {kind}(a,b) takes two numbers")
    numeric = param.type_name in ("float", "int") or param.is_custom
    if param.multiple or param.choices is not None or not numeric:
        raise ParameterError(
            f"{origin}: --{cli_name(param.name)} is not a number parameter; use choice(...)"
        )
    if kind == "randint":
        low, high = (_number(a, origin, int) for a in args)
        if low > high:
            raise ParameterError(f"{origin}: randint(a,b) needs a <= b")
    else:
        if param.type_name == "int":
            raise ParameterError(
                f"{origin}: {kind} draws floats but --{cli_name(param.name)} is an int; "
                "use randint(a,b)"
            )
        low, high = (_number(a, origin) for a in args)
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise ParameterError(f"{origin}: {kind}(a,b) needs finite a < b")
        if kind == "loguniform" and low <= 0:
            raise ParameterError(f"{origin}: loguniform(a,b) needs 0 < a")
    return Distribution(param.name, kind, (low, high), text)


# ---------------------------------------------------------------- the plan


def run_seed(sweep_seed: int, index: int) -> int:
    """The ``random_seed`` of run *index* of the sweep with *sweep_seed* (a SeedSequence child)."""
    import numpy as np

    sequence = np.random.SeedSequence(sweep_seed, spawn_key=(_RUN_SEED_TAG, index))
    return int(sequence.generate_state(1, dtype=np.uint32)[0])


def _sample_stream(sweep_seed: int) -> Callable[[], float]:
    """Uniform draws in [0, 1) for ``--sample``, fixed by the sweep seed (Python's
    ``random()`` keeps its sequence across versions)."""
    import random

    import numpy as np

    state = np.random.SeedSequence(sweep_seed, spawn_key=(_SAMPLE_TAG,)).generate_state(4)
    return random.Random(int.from_bytes(state.tobytes(), "little")).random


def draw_trials(
    samples: Sequence[Distribution], trials: int, sweep_seed: int, params: Mapping[str, Parameter]
) -> list[dict[str, Any]]:
    """*trials* points drawn from *samples*, checked (trial by trial, parameter by parameter)."""
    uniform = _sample_stream(sweep_seed)
    points = []
    for _ in range(trials):
        point = {}
        for dist in samples:
            value = dist.draw(uniform())
            point[dist.name] = (
                value
                if dist.kind == "choice"
                else _checked(params[dist.name], value, f"--sample {dist.name}={dist.text}")
            )
        points.append(point)
    return points


def plan_points(
    grid: Mapping[str, Sequence[Any]], trials: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Each trial x the grid's cartesian product (the last grid parameter varies fastest)."""
    combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    return [{**trial, **combo} for trial in (trials or [{}]) for combo in combos]


def param_matrix(**values: Any) -> list[dict[str, Any]]:
    """The cartesian product of parameter values: ``param_matrix(lr=[0.1, 0.01], bs=[16, 32])``
    gives four dicts, the last name varying fastest. A value that is not a list or tuple is
    one value."""
    lists = {}
    for name, value in values.items():
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if not items:
            raise ParameterError(f"param_matrix: {name} has no values")
        lists[name] = items
    return [dict(zip(lists, combo, strict=True)) for combo in itertools.product(*lists.values())]


def planned_runs(
    points: Sequence[Mapping[str, Any]], repeat: int, sweep_seed: int
) -> list[dict[str, Any]]:
    """sweep.json's run entries: each point *repeat* times, each run its own seed (derived
    from the sweep seed and the run's index unless the point sets ``random_seed``)."""
    runs: list[dict[str, Any]] = []
    for point in points:
        for r in range(repeat):
            index = len(runs)
            params = dict(point)
            if params.get("random_seed") is None:
                params["random_seed"] = run_seed(sweep_seed, index)
            runs.append(
                {
                    "index": index,
                    "params": params,
                    "repeat": r,
                    "status": "queued",
                    "run_id": None,
                    "run_dir": None,
                    "error": None,
                    "previous_run_ids": [],
                }
            )
    return runs


# ---------------------------------------------------------------- settings


@dataclass
class Settings:
    """How a sweep runs its jobs: options over ``[sweep]`` config over defaults."""

    jobs: int = 1
    executor: str = "local"
    gpus_per_job: int | None = None
    slurm: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "executor": self.executor,
            "gpus_per_job": self.gpus_per_job,
            "slurm": dict(self.slurm),
        }


def settings(options: Mapping[str, Any], project: Project) -> Settings:
    """The sweep options checked against each other and completed from ``[sweep]``."""
    config = dict(project.sweep)
    where = f"{project.config_file}: [sweep]"
    for key in config:
        if key not in SWEEP_KEYS:
            raise ConfigError(
                f"{where} has no setting {key!r}{did_you_mean(key, SWEEP_KEYS)} "
                f"(known: {', '.join(SWEEP_KEYS)})"
            )
    slurm_config = config.get("slurm", {})
    if not isinstance(slurm_config, dict):
        raise ConfigError(f"{where} 'slurm' must be a table")
    for key in slurm_config:
        if key not in SLURM_KEYS:
            raise ConfigError(
                f"{project.config_file}: [sweep.slurm] has no setting {key!r}"
                + did_you_mean(key, SLURM_KEYS)
            )
    jobs = options.get("jobs")
    if jobs is None:
        jobs = config.get("jobs", 1)
        if not isinstance(jobs, int) or isinstance(jobs, bool):
            raise ConfigError(f"{where} jobs must be an integer, got {jobs!r}")
    if jobs < 1:
        raise ParameterError(f"--jobs {jobs}: need at least 1 run at a time")
    executor = options.get("executor") or config.get("executor") or "local"
    if executor not in EXECUTORS:
        raise ParameterError(
            f"--executor {executor}: expected local or slurm"
            + did_you_mean(str(executor), EXECUTORS)
        )
    slurm = {k: v for k, v in slurm_config.items()}
    for key in ("partition", "time", "gpus_per_task", "cpus_per_task", "array_parallelism"):
        value = options.get(f"slurm_{key}")
        if value is not None:
            slurm[key] = value
    if "time" in slurm:
        slurm["time"] = slurm_minutes(slurm["time"])
    for key in ("gpus_per_task", "cpus_per_task", "array_parallelism"):
        value = slurm.get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ParameterError(f"--slurm-{cli_name(key)} {value}: expected a positive integer")
    gpus = options.get("gpus_per_job")
    if executor == "slurm":
        if gpus is not None:
            slurm.setdefault("gpus_per_task", gpus)
        if options.get("jobs") is not None:
            slurm.setdefault("array_parallelism", jobs)
    elif any(
        options.get(f"slurm_{k}") is not None
        for k in ("partition", "time", "gpus_per_task", "cpus_per_task", "array_parallelism")
    ):
        raise ParameterError("--slurm-* options need --executor slurm")
    return Settings(jobs=jobs, executor=executor, gpus_per_job=gpus, slurm=slurm)


def slurm_minutes(value: Any) -> int:
    """A SLURM time limit in whole minutes: ``90``, ``"90"``, ``"1:30:00"``, ``"2-12"``, ...
    (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    text = str(value).strip()
    days, dash, clock = text.rpartition("-")
    if dash and not days:  # "-5"
        clock = ""
    try:
        parts = [int(p) for p in clock.split(":")]
        whole_days = int(days) if days else 0
    except ValueError:
        parts = []
        whole_days = 0
    if not parts or len(parts) > 3 or any(p < 0 for p in parts) or whole_days < 0:
        raise ParameterError(
            f"--slurm-time {value!r}: expected minutes or a SLURM time (HH:MM:SS, D-HH:MM)"
        )
    if days:
        hours, minutes, seconds = [*parts, 0, 0][:3]
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    else:
        hours, (minutes, seconds) = 0, [*parts, 0][:2]
    total = whole_days * 1440 + hours * 60 + minutes + (1 if seconds else 0)
    if total < 1:
        raise ParameterError(f"--slurm-time {value!r}: must be at least a minute")
    return total


# ---------------------------------------------------------------- sweep.json


class SweepRecord:
    """``sweep.json``: the plan, how far it got, replaced whole (atomically) at each change."""

    def __init__(self, folder: Path, data: dict[str, Any]) -> None:
        self.folder = folder
        self.data = data

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @property
    def runs(self) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = self.data["runs"]
        return runs

    @classmethod
    def create(cls, parent: Path, data: dict[str, Any]) -> SweepRecord:
        """A new sweep folder under *parent* (``<output_dir>/<EXP>/sweeps``), never reused."""
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"cannot create sweep folder {parent}: {e.strerror}") from None
        for _ in range(1000):
            sweep_id = rundir.new_run_id()
            try:
                (parent / sweep_id).mkdir()
            except FileExistsError:
                continue
            except OSError as e:
                raise RunDirError(f"cannot create sweep folder in {parent}: {e.strerror}") from None
            record = cls(parent / sweep_id, {"id": sweep_id, **data})
            record.save()
            return record
        raise RunDirError(f"could not find a free sweep id in {parent}")

    @classmethod
    def load(cls, folder: Path) -> SweepRecord:
        path = Path(folder).resolve() / SWEEP_JSON
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunDirError(f"--resume {folder}: not a sweep folder (no {SWEEP_JSON})") from None
        except (OSError, ValueError) as e:
            raise RunDirError(f"{path}: unreadable ({e})") from None
        if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
            raise RunDirError(f"{path}: not a sweep record")
        return cls(path.parent, data)

    def save(self) -> None:
        """Write sweep.json whole (atomically): one line a planned run, so a 1,000-run plan
        stays small and greppable."""
        head = json.dumps(
            {k: v for k, v in self.data.items() if k != "runs"}, indent=1, default=str
        )
        runs = ",\n".join("  " + json.dumps(run, default=str) for run in self.runs)
        text = head[:-2] + ',\n "runs": [\n' + runs + "\n ]\n}\n"
        rundir.write_atomic(self.folder / SWEEP_JSON, text.encode("utf-8"))

    def counts(self) -> dict[str, int]:
        counts = {"queued": 0, "running": 0, "completed": 0, "failed": 0, "interrupted": 0}
        for run in self.runs:
            counts[run["status"]] = counts.get(run["status"], 0) + 1
        return counts


# ---------------------------------------------------------------- executors


class Handle(Protocol):
    """A launched run, as the sweep loop sees it."""

    index: int

    def done(self) -> bool: ...
    def result(self) -> JobResult: ...
    def stop(self, sig: int) -> None: ...
    def kill(self) -> None: ...


@dataclass
class _LocalHandle:
    index: int
    slot: int
    job: ProcessJob

    def done(self) -> bool:
        if self.job.poll() is None:
            return False
        self.job.reap_group()
        return True

    def result(self) -> JobResult:
        return self.job.result()

    def stop(self, sig: int) -> None:
        self.job.send(sig)

    def kill(self) -> None:
        self.job.kill()


class LocalExecutor:
    """Runs on this machine: one child process a run, at most ``jobs`` at a time, each job
    slot with its own GPUs (``--gpus-per-job``)."""

    starts_runs = True  # the sweep starts each run (its id is known at once)

    def __init__(self, jobs: int, gpus_per_job: int | None) -> None:
        self.jobs = jobs
        self.gpus = gpu_slots(visible_gpus(), jobs, gpus_per_job) if gpus_per_job else None
        self.busy: set[int] = set()

    def free(self) -> int:
        return self.jobs - len(self.busy)

    def launch(self, items: Sequence[tuple[int, RunJob]]) -> list[Handle]:
        handles: list[Handle] = []
        for index, job in items:
            slot = min(set(range(self.jobs)) - self.busy)
            env = {"CUDA_VISIBLE_DEVICES": ",".join(self.gpus[slot])} if self.gpus else None
            job.parent_pid = os.getpid()
            handles.append(_LocalHandle(index, slot, ProcessJob(job, env=env)))
            self.busy.add(slot)
        return handles

    def release(self, handle: Handle) -> None:
        assert isinstance(handle, _LocalHandle)
        self.busy.discard(handle.slot)


@dataclass
class _SubmititHandle:
    index: int
    job: Any  # submitit.Job

    def done(self) -> bool:
        return bool(self.job.done())

    def result(self) -> JobResult:
        if not self.job.done():  # cancelled, and SLURM has not said so yet
            return JobResult(None, 143, "interrupted", "cancelled")
        try:
            result = self.job.result()
        except Exception as e:  # the job itself failed: its last line says why
            lines = [line for line in str(e).strip().splitlines() if line.strip()]
            return JobResult(None, 1, "failed", lines[-1] if lines else type(e).__name__)
        assert isinstance(result, JobResult)
        return result

    def stop(self, sig: int) -> None:
        with contextlib.suppress(Exception):
            self.job.cancel(check=False)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def _submitit() -> Any:
    """The submitit module, or one line saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise PystematicError(
            "--executor slurm needs submitit: pip install 'pystematic[slurm]'"
        ) from None
    return submitit


class SubmititExecutor:
    """``--executor slurm``: each run a SLURM job (one job array per batch) through submitit;
    SLURM schedules them (``array_parallelism`` at a time); each job starts its run on its
    node, so a queued job has no run dir yet."""

    starts_runs = False

    def __init__(self, folder: Path, slurm: Mapping[str, Any], name: str) -> None:
        submitit = _submitit()
        cluster = os.environ.get(SUBMITIT_CLUSTER_ENV, "slurm")
        self.executor = submitit.AutoExecutor(folder=folder / "submitit", cluster=cluster)
        parameters = {SLURM_KEYS[k]: v for k, v in slurm.items() if v is not None}
        parameters.setdefault("name", name)
        try:
            self.executor.update_parameters(**parameters)
        except (NameError, ValueError, AssertionError) as e:
            raise ParameterError(f"[sweep.slurm]: {str(e).splitlines()[0]}") from None

    def free(self) -> int:
        return sys.maxsize  # SLURM throttles (array_parallelism)

    def launch(self, items: Sequence[tuple[int, RunJob]]) -> list[Handle]:
        from .jobs import run_job

        with self.executor.batch():
            jobs = [self.executor.submit(run_job, job) for _, job in items]
        return [_SubmititHandle(index, job) for (index, _), job in zip(items, jobs, strict=True)]

    def release(self, handle: Handle) -> None:
        pass


# ---------------------------------------------------------------- progress


class Progress:
    """One plain line per finished run, on stderr (what goes to logs and pipes)."""

    def __init__(self, record: SweepRecord) -> None:
        self.record = record
        self.total = len(record.runs)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def started(self, run: dict[str, Any]) -> None:
        pass

    def finished(self, run: dict[str, Any]) -> None:
        self.print(self.line(run))

    def print(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def line(self, run: dict[str, Any]) -> str:
        done = sum(1 for r in self.record.runs if r["status"] not in ("queued", "running"))
        params = " ".join(
            f"{k}={_short(v)}" for k, v in run["params"].items() if k != "random_seed"
        )
        text = f"[{done}/{self.total}] {run['status']} {run.get('run_id') or '-'} {params}".rstrip()
        if run["status"] != "completed" and run.get("error"):
            text += f": {run['error']}"
            if run.get("run_dir"):
                text += f" ({Path(run['run_dir']) / 'output.log'})"
        return text


class LiveProgress(Progress):
    """On a terminal: a live view of queued / running / done / failed and the running runs,
    with a line printed above it for each run that ends."""

    def __enter__(self) -> LiveProgress:
        from rich.console import Console
        from rich.live import Live

        self.began = time.monotonic()
        self.live = Live(self, console=Console(stderr=True), refresh_per_second=4, transient=True)
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.live.__exit__(None, None, None)

    def print(self, text: str) -> None:
        from rich.markup import escape

        self.live.console.print(escape(text), highlight=False)

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.text import Text

        counts = self.record.counts()
        summary = Text.assemble(
            (f"sweep {self.record.id}: ", "bold"),
            (f"{counts['queued']} queued", "dim"),
            " · ",
            (f"{counts['running']} running", "cyan"),
            " · ",
            (f"{counts['completed']} done", "green"),
            " · ",
            (f"{counts['failed']} failed", "red" if counts["failed"] else "dim"),
            f" · {time.monotonic() - self.began:.0f} s",
        )
        running = [r for r in self.record.runs if r["status"] == "running"][:10]
        lines = [
            Text(
                f"  running {r.get('run_id') or '(submitted)'} "
                + " ".join(
                    f"{k}={_short(v)}" for k, v in r["params"].items() if k != "random_seed"
                ),
                style="cyan",
            )
            for r in running
        ]
        return Group(summary, *lines)


def _finite(value: Any) -> Any:
    """NaN and infinities become null: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# ---------------------------------------------------------------- running a sweep


class _Stop(Exception):
    pass


class _GitLater:
    """Stands in for git when the sweep starts a run: the run's process asks git itself."""

    def result(self, timeout: float = 0.0) -> Any:
        from .metadata import GitInfo

        return GitInfo(commit=None, branch=None, dirty=None, diff=None)


@dataclass
class Sweep:
    """A sweep ready to run: its record, the experiment, the values every run shares."""

    record: SweepRecord
    info: ExperimentInfo
    project: Project
    fixed: dict[str, Any]
    settings: Settings
    stopped_by: int | None = None  # the signal that stopped the sweep
    packages: Any = None  # the package listing, asked once
    _hurry: bool = False

    # ------------------------------------------------------------ one run

    def _resolve(self, run: Mapping[str, Any]) -> Any:
        from .params import resolve_parameters

        values = {**self.fixed, **run["params"]}
        if run.get("resume_dir"):
            values["resume"] = run["resume_dir"]
        params = [*self.info.parameters, *BUILTIN_PARAMETERS]
        return resolve_parameters(self.info.id, params, self.info.defaults, self.project, values)

    def job(self, run: dict[str, Any], starts_run: bool) -> RunJob:
        """The job of one run; with *starts_run* its run dir is made now (its id goes into
        sweep.json)."""
        from .start import Probes, start_run

        resolved = self._resolve(run)
        values, snapshot = resolved.values, resolved.snapshot()
        argv = run_argv(self.info, {**self.fixed, **run["params"]}, run.get("resume_dir"))
        fields = {"sweep": self.record.id, "sweep_index": run["index"]}
        started = None
        if starts_run:
            # git is asked by each run's own process, as it imports the code (jobs.run_job):
            # code edited during a sweep is what later runs import, and their record says so.
            if self.packages is None:  # asked once (Probes.start would start git too)
                from .discovery import cache_dir
                from .metadata import PackagesProbe

                self.packages = PackagesProbe(cache_dir(self.project) / "packages.json")
            probes = Probes(git=cast(Any, _GitLater()), packages=self.packages)
            started = start_run(
                self.info, self.project, values, snapshot, argv, probes=probes, fields=fields
            )
            run["run_id"], run["run_dir"] = started.run_dir.name, str(started.run_dir)
        return RunJob(
            experiment_id=self.info.id,
            project_root=str(self.project.root),
            file=self.info.file,
            values=dict(values),
            snapshot=dict(snapshot),
            argv=argv,
            started=started,
            fields=fields,
            ask_git=starts_run,
        )

    # ------------------------------------------------------------ the loop

    def run(self, todo: Sequence[int], progress: Progress) -> int:
        """Run the planned runs numbered *todo*; the exit code: 0, 1 (a run failed) or
        128 + the signal that stopped the sweep."""
        executor: LocalExecutor | SubmititExecutor
        if self.settings.executor == "slurm":
            executor = SubmititExecutor(
                self.record.folder, self.settings.slurm, f"pystematic-{self.info.id}"
            )
        else:
            executor = LocalExecutor(self.settings.jobs, self.settings.gpus_per_job)
        pending = deque(todo)
        running: list[Handle] = []
        runs = self.record.runs
        self.record.data.update(
            status="running",
            pid=os.getpid(),
            host=rundir.hostname(),
            heartbeat=rundir.now_iso(),
            end=None,
        )
        self.record.save()
        beat = time.monotonic()
        with _signals(self), progress:
            try:
                while pending or running:
                    if self.stopped_by is not None:
                        raise _Stop
                    batch: list[tuple[int, RunJob]] = []
                    while pending and len(batch) < executor.free():
                        index = pending.popleft()
                        try:
                            batch.append((index, self.job(runs[index], executor.starts_runs)))
                        except PystematicError as e:
                            runs[index].update(status="failed", error=e.format_message())
                            progress.finished(runs[index])
                            self.record.save()
                    if batch:
                        launched = executor.launch(batch)
                        for handle in launched:
                            runs[handle.index].update(status="running", error=None)
                            progress.started(runs[handle.index])
                        running.extend(launched)
                        self.record.save()
                    changed = False
                    for handle in [h for h in running if h.done()]:
                        running.remove(handle)
                        executor.release(handle)
                        self._finish(handle, progress)
                        changed = True
                    if changed:
                        self.record.save()
                    elif not batch:
                        if time.monotonic() - beat > HEARTBEAT_S:
                            beat = time.monotonic()
                            self.record.data["heartbeat"] = rundir.now_iso()
                            self.record.save()
                        time.sleep(POLL_S)
            except (_Stop, KeyboardInterrupt):
                self.stopped_by = self.stopped_by or signal.SIGINT
                self._stop(running, executor, progress)
            except BaseException:
                # A bug or a lost disk: stop the runs (they record it), then say what it was.
                self.stopped_by = signal.SIGTERM
                self._stop(running, executor, progress)
                self.record.data.update(status="interrupted", end=rundir.now_iso())
                with contextlib.suppress(OSError):
                    self.record.save()
                raise
        failed = [r for r in runs if r["status"] == "failed"]
        if self.stopped_by is not None:
            status = "interrupted"
        else:
            status = "failed" if failed else "completed"
        self.record.data.update(status=status, end=rundir.now_iso(), heartbeat=rundir.now_iso())
        self.record.save()
        if self.stopped_by is not None:
            return SIGNAL_EXIT.get(self.stopped_by, 128 + int(self.stopped_by))
        return 1 if failed else 0

    def _finish(self, handle: Handle, progress: Progress) -> None:
        run = self.record.runs[handle.index]
        result = handle.result()
        if result.run_dir is not None:
            run["run_dir"] = result.run_dir
            run["run_id"] = Path(result.run_dir).name
        run["status"] = (
            result.status if result.status in ("completed", "failed", "interrupted") else "failed"
        )
        run["error"] = result.error if run["status"] != "completed" else None
        run.pop("resume_dir", None)
        progress.finished(run)

    def _stop(self, running: list[Handle], executor: Any, progress: Progress) -> None:
        """Forward the signal to every running run, wait for them a while, kill the rest."""
        sig = self.stopped_by or signal.SIGINT
        for handle in running:
            handle.stop(sig)
        deadline = time.monotonic() + STOP_GRACE_S
        while running and time.monotonic() < deadline and not self._hurry:
            for handle in [h for h in running if h.done()]:
                running.remove(handle)
                self._finish(handle, progress)
            time.sleep(POLL_S)
        for handle in running:
            handle.kill()
            self._finish(handle, progress)
        running.clear()
        for run in self.record.runs:
            if run["status"] == "running":  # submitted but never heard of again
                run["status"] = "interrupted"


@contextlib.contextmanager
def _signals(sweep: Sweep) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP stop the sweep cleanly (a second one: at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if sweep.stopped_by is None:
            sweep.stopped_by = signum
        else:
            sweep._hurry = True

    saved = {sig: signal.signal(sig, handler) for sig in SIGNAL_EXIT}
    try:
        yield
    finally:
        for sig, previous in saved.items():
            signal.signal(sig, previous)


def run_argv(info: ExperimentInfo, values: Mapping[str, Any], resume: str | None) -> list[str]:
    """The ``pystematic run`` command line of one run (kept in its run.json)."""
    by_name = {p.name: p for p in [*info.parameters, *BUILTIN_PARAMETERS]}
    argv = ["run", *(cli_name(g[0]) for g in info.groups), cli_name(info.name)]
    for name, value in values.items():
        param = by_name.get(name)
        if param is None or value is None:
            continue
        if param.is_flag:
            argv.append(
                param.option
                if value in (True, "true")
                or str(value).lower() in ("1", "true", "yes", "on", "y", "t")
                else f"--no-{cli_name(name)}"
            )
            continue
        for item in value if isinstance(value, list) else [value]:
            argv += [param.option, _short_exact(item)]
    if resume:
        argv += ["--resume", str(resume)]
    return argv


def _short_exact(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


# ---------------------------------------------------------------- the commands


@dataclass
class SweepRequest:
    """A new sweep as the command line (or Python) asks for it, checked by :func:`plan`."""

    grid: list[str] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    trials: int | None = None
    repeat: int = 1
    points: list[dict[str, Any]] | None = None  # run_parameter_sweep: the points as given
    sweep_seed: Any = None  # --random-seed, as given


def plan(
    info: ExperimentInfo,
    project: Project,
    fixed: Mapping[str, Any],
    request: SweepRequest,
    argv: Sequence[str],
    settings: Settings,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every value checked and the runs planned; nothing is created. Returns the sweep.json
    data (without id) and its run entries."""
    params = {p.name: p for p in [*info.parameters, *BUILTIN_PARAMETERS]}
    fixed = {k: v for k, v in fixed.items() if k not in ("random_seed", "resume")}
    if request.repeat < 1:
        raise ParameterError(f"--repeat {request.repeat}: need at least 1")
    grid: dict[str, list[Any]] = {}
    for spec in request.grid:
        name, values = parse_grid(spec, params)
        if name in grid:
            raise ParameterError(f"--grid {spec}: --{cli_name(name)} is swept twice")
        grid[name] = values
    samples: list[Distribution] = []
    for spec in request.samples:
        dist = parse_sample(spec, params)
        if dist.name in grid or any(d.name == dist.name for d in samples):
            raise ParameterError(f"--sample {spec}: --{cli_name(dist.name)} is swept twice")
        samples.append(dist)
    if request.trials is not None and request.trials < 1:
        raise ParameterError(f"--trials {request.trials}: need at least 1")
    if samples and request.trials is None:
        raise ParameterError("--sample draws --trials N points: give --trials")
    if request.trials is not None and not samples:
        raise ParameterError("--trials needs --sample NAME=DIST")
    for name in [*grid, *(d.name for d in samples)]:
        if name in fixed:
            raise ParameterError(f"--{cli_name(name)} is both given and swept; give one")
    sweep_seed = convert(params["random_seed"], request.sweep_seed, "--random-seed")
    _check_seed(sweep_seed, "--random-seed")
    drawn = sweep_seed is None
    if sweep_seed is None:
        sweep_seed = seeding.draw_seed()
    if request.points is not None:
        points = []
        for i, point in enumerate(request.points):
            checked = {}
            for key, value in point.items():
                name = key.replace("-", "_")
                if name not in params:
                    names = sorted(n for n, p in params.items() if not p.builtin)
                    raise ParameterError(
                        f"point {i}: unknown parameter {key!r}" + did_you_mean(name, names)
                    )
                if params[name].builtin and name not in SWEEPABLE_BUILTINS:
                    raise ParameterError(f"point {i}: {key!r} cannot vary between the runs")
                if value is not None:
                    checked[name] = _checked(params[name], value, f"point {i}")
            points.append(checked)
    else:
        trials = draw_trials(samples, request.trials or 0, sweep_seed, params) if samples else []
        points = plan_points(grid, trials)
    runs = planned_runs(points, request.repeat, sweep_seed)
    data = {
        "experiment": info.id,
        "command": list(argv),
        "cwd": os.getcwd(),
        "project_root": str(project.root),
        "grid": grid,
        "samples": {d.name: d.text for d in samples},
        "trials": request.trials,
        "repeat": request.repeat,
        "fixed": {k: to_toml_value(v) for k, v in fixed.items()},
        "random_seed": sweep_seed,
        "random_seed_drawn": drawn,
        "settings": settings.to_json(),
        "status": "planned",
        "start": rundir.now_iso(),
        "end": None,
        "runs": runs,
    }
    return data, runs


def start_sweep(
    info: ExperimentInfo,
    project: Project,
    fixed: Mapping[str, Any],
    request: SweepRequest,
    argv: Sequence[str],
    options: Mapping[str, Any],
) -> Sweep:
    """Plan (every check first: bad input creates nothing), then make the sweep folder."""
    from .params import resolve_parameters
    from .start import check_backends, output_dir

    sweep_settings = settings(options, project)
    data, runs = plan(info, project, fixed, request, argv, sweep_settings)
    clean = {k: v for k, v in fixed.items() if k not in ("random_seed", "resume")}
    # The first run's values, resolved as a run would: what every run shares is checked now.
    params = [*info.parameters, *BUILTIN_PARAMETERS]
    first = (
        resolve_parameters(info.id, params, info.defaults, project, {**clean, **runs[0]["params"]})
        if runs
        else None
    )
    if first is not None:
        check_backends(first.values.get("recorder") or project.recorder)
    if sweep_settings.executor == "local" and sweep_settings.gpus_per_job:
        gpu_slots(visible_gpus(), sweep_settings.jobs, sweep_settings.gpus_per_job)
    if sweep_settings.executor == "slurm":
        _submitit()
    folder = output_dir(clean, project) / info.id / SWEEPS_DIR
    record = SweepRecord.create(folder, data)
    return Sweep(record, info, project, dict(clean), sweep_settings)


def execute(sweep: Sweep, todo: Sequence[int], *, live: bool | None = None) -> int:
    """Run *todo* with a progress view (live on a terminal unless *live* says otherwise)."""
    total = len(sweep.record.runs)
    where = sweep.settings.executor
    print(
        f"sweep {sweep.record.id}: {len(todo)} of {total} runs, "
        + (f"{sweep.settings.jobs} at a time" if where == "local" else "as SLURM jobs")
        + f" (sweep dir: {sweep.record.folder})",
        file=sys.stderr,
        flush=True,
    )
    use_live = sys.stderr.isatty() if live is None else live
    progress = LiveProgress(sweep.record) if use_live else Progress(sweep.record)
    return sweep.run(todo, progress)


def records(sweep: SweepRecord, sort: str | None = None) -> list[dict[str, Any]]:
    """The ``runs`` records of the sweep's runs (the latest attempt of each point), in plan
    order or sorted by *sort*; only their own run.json files are read."""
    from .runs import read_run, select_runs

    found = [read_run(run["run_dir"]) for run in sweep.runs if run.get("run_dir")]
    records = [record for record in found if record is not None]
    return select_runs(records, sort=sort) if sort else records


def report(sweep: Sweep, code: int, *, sort: str | None, as_json: bool) -> int:
    """The runs table (or ``--json`` records) and the closing lines; returns *code*."""
    from .runs_table import runs_table

    try:
        found = records(sweep.record, sort)
    except ParameterError as e:  # --sort names nothing the runs recorded
        print(f"warning: {e.format_message()}", file=sys.stderr)
        found, sort = records(sweep.record), None
    if as_json:
        print(json.dumps(_finite(found), indent=1, default=str))
    elif found:
        from rich.console import Console

        view = runs_table(found, sort=sort)
        if sys.stdout.isatty() or os.environ.get("COLUMNS"):
            console = Console()
        else:
            console = Console(width=max(view.natural_width, 80))
        console.print(view)
    counts = sweep.record.counts()
    failed = [r for r in sweep.record.runs if r["status"] == "failed"]
    summary = f"sweep {sweep.record.id}: {counts['completed']} completed, {counts['failed']} failed"
    if counts["interrupted"] or counts["queued"]:
        summary += f", {counts['interrupted']} interrupted, {counts['queued']} not started"
    print(summary + f" ({sweep.record.folder})", file=sys.stderr)
    if failed and code == 1:
        names = ", ".join(r.get("run_id") or f"#{r['index']}" for r in failed)
        print(
            f"error: {len(failed)} of {len(sweep.record.runs)} runs failed: {names}",
            file=sys.stderr,
        )
    if code in SIGNAL_EXIT.values():
        print(f"resume with: pystematic sweep --resume {sweep.record.folder}", file=sys.stderr)
    return code


def sweep_command(
    info: ExperimentInfo,
    project: Project,
    values: Mapping[str, Any],
    options: Mapping[str, Any],
    argv: Sequence[str],
    *,
    as_json: bool,
) -> int:
    """``pystematic sweep EXP ...``: *values* are the experiment's flags as given (they fix
    every run; ``--random-seed`` is the sweep seed), *options* the sweep's own."""
    if values.get("resume") is not None:
        given = [
            f"--{cli_name(k)}" for k in ("grid", "sample", "trials", "repeat") if options.get(k)
        ]
        if given or set(values) - {"resume"}:
            raise ParameterError(
                "--resume continues a sweep as it was planned: give no "
                + (given[0] if given else "parameter flags")
                + " with it"
            )
        return resume_command(
            Path(values["resume"]), options, sort=options.get("sort"), as_json=as_json
        )
    request = SweepRequest(
        grid=list(options.get("grid") or []),
        samples=list(options.get("sample") or []),
        trials=options.get("trials"),
        repeat=1 if options.get("repeat") is None else int(options["repeat"]),
        sweep_seed=values.get("random_seed"),
    )
    sweep = start_sweep(info, project, values, request, argv, options)
    code = execute(sweep, range(len(sweep.record.runs)))
    return report(sweep, code, sort=options.get("sort"), as_json=as_json)


def resume_command(
    folder: Path, options: Mapping[str, Any], *, sort: str | None, as_json: bool
) -> int:
    """``pystematic sweep --resume SWEEP_DIR``: run what did not complete."""
    sweep, todo = resume(folder, options)
    code = execute(sweep, todo)
    return report(sweep, code, sort=sort, as_json=as_json)


# ---------------------------------------------------------------- resuming


def resume(folder: Path, options: Mapping[str, Any]) -> tuple[Sweep, list[int]]:
    """Reopen a sweep: what did not complete is to run again, completed runs never.

    Interrupted runs (and runs that died) with a checkpoint continue in their own run dir
    with ``--resume``; the others start again in a new run dir (the old one is kept and
    named in ``previous_run_ids``). A sweep or a run that is still going is refused.
    """
    from .checkpoint import latest
    from .discovery import discover, discover_for_run
    from .errors import UnknownExperimentError
    from .project import load_project

    record = SweepRecord.load(folder)
    data = record.data
    alive = {"status": "running", **{k: data.get(k) for k in ("pid", "host", "heartbeat", "start")}}
    if (
        data.get("status") == "running"
        and rundir.is_alive(alive)
        and data.get("pid") != os.getpid()
    ):
        raise RunDirError(
            f"--resume {record.folder}: that sweep is still running (pid {data.get('pid')})"
        )
    project = load_project(explicit_root=Path(data["project_root"]))
    found = discover(project)
    info = found.experiments.get(data["experiment"])
    if info is not None and (info.computed_defaults or any(p.is_custom for p in info.parameters)):
        info = discover_for_run(project, info.id).experiments.get(info.id)
    if info is None:
        raise UnknownExperimentError(
            f"--resume {record.folder}: experiment {data['experiment']!r} is gone"
            + found.failures_note()
        )
    fixed = dict(data.get("fixed") or {})
    saved = dict(data.get("settings") or {})
    jobs = options.get("jobs") or saved.get("jobs") or 1
    if jobs < 1:
        raise ParameterError(f"--jobs {jobs}: need at least 1 run at a time")
    sweep_settings = Settings(
        jobs=jobs,
        executor=saved.get("executor") or "local",
        gpus_per_job=saved.get("gpus_per_job"),
        slurm=dict(saved.get("slurm") or {}),
    )
    if sweep_settings.executor == "local" and sweep_settings.gpus_per_job:
        gpu_slots(visible_gpus(), sweep_settings.jobs, sweep_settings.gpus_per_job)
    from .start import output_dir

    on_disk = _runs_on_disk(output_dir(fixed, project), data["experiment"], record.id)
    todo = []
    for run in record.runs:
        run.pop("resume_dir", None)
        newest = on_disk.get(run["index"])
        if newest is not None and newest[0] != run.get("run_id"):
            # A run dir sweep.json never heard of: the sweep died before it could say so.
            if run.get("run_id"):
                run.setdefault("previous_run_ids", []).append(run["run_id"])
            run["run_id"], run["run_dir"] = newest
        run_dir = Path(run["run_dir"]) if run.get("run_dir") else None
        state = rundir.read_run_json(run_dir) if run_dir is not None and run_dir.is_dir() else {}
        status = state.get("status")
        if status == "running" and rundir.is_alive(state):
            raise RunDirError(
                f"--resume {record.folder}: run {run['run_id']} is still running "
                f"(pid {state.get('pid')})"
            )
        if status == "completed":
            run.update(status="completed", error=None)
            continue
        todo.append(run["index"])
        if run_dir is not None and status in ("interrupted", "running") and latest(run_dir):
            run["resume_dir"] = str(run_dir)  # continues where it stopped, in its own dir
        elif run_dir is not None:
            run.setdefault("previous_run_ids", []).append(run["run_id"])
            run["run_id"] = run["run_dir"] = None
        run.update(status="queued", error=None)
    sweep = Sweep(record, info, project, fixed, sweep_settings)
    if todo:
        sweep._resolve(record.runs[todo[0]])  # the config may have changed: check it now
    resumes = data.setdefault("resumes", [])
    resumes.append({"time": rundir.now_iso(), "runs": len(todo)})
    return sweep, todo


def _runs_on_disk(output_dir: Path, experiment: str, sweep_id: str) -> dict[int, tuple[str, str]]:
    """index -> (run id, run dir) of the newest run dir each planned run has (by start)."""
    found: dict[int, tuple[str, str, str]] = {}
    folder = output_dir / experiment
    if not folder.is_dir():
        return {}
    for child in folder.iterdir():
        path = child / rundir.RUN_JSON
        if not path.is_file():
            continue
        try:
            data = rundir.read_run_json(child)
        except PystematicError:
            continue
        index = data.get("sweep_index")
        if data.get("sweep") != sweep_id or not isinstance(index, int):
            continue
        start = str(data.get("start") or "")
        if index not in found or start > found[index][2]:
            found[index] = (child.name, str(child), start)
    return {i: (v[0], v[1]) for i, v in found.items()}


# ---------------------------------------------------------------- from Python


@dataclass
class SweepResult:
    """One run of :func:`run_parameter_sweep`: where it is, how it ended, its last metrics."""

    index: int
    params: dict[str, Any]
    run_dir: Path | None
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def run_id(self) -> str | None:
        return self.run_dir.name if self.run_dir is not None else None


def run_parameter_sweep(
    experiment: Any,
    list_of_params: Sequence[Mapping[str, Any]],
    max_num_processes: int = 1,
    num_gpus_per_process: int | None = None,
    *,
    random_seed: int | None = None,
) -> list[SweepResult]:
    """Run *experiment* once per parameter dict, at most *max_num_processes* at a time, each
    an ordinary run in its own process, as ``pystematic sweep`` does (a sweep folder, a
    seed a run derived from the sweep seed unless a dict sets ``random_seed``).

    Returns one :class:`SweepResult` a dict, in order; a failed run does not raise. Ctrl-C
    stops the runs and raises KeyboardInterrupt.
    """
    from .discovery import describe
    from .project import project_for_file

    info = describe(experiment)
    if info is None:
        raise ParameterError(f"run_parameter_sweep takes an experiment, got {experiment!r}")
    check_importable(info)
    project = project_for_file(info.file)
    request = SweepRequest(points=[dict(p) for p in list_of_params], sweep_seed=random_seed)
    if not request.points:
        raise ParameterError("run_parameter_sweep: no parameter dicts given")
    options = {"jobs": max_num_processes, "gpus_per_job": num_gpus_per_process, "executor": "local"}
    argv = ["run_parameter_sweep", info.id]
    sweep = start_sweep(info, project, {}, request, argv, options)
    execute(sweep, range(len(sweep.record.runs)), live=False)
    if sweep.stopped_by is not None:
        print(
            f"sweep stopped: resume with pystematic sweep --resume {sweep.record.folder}",
            file=sys.stderr,
        )
        if sweep.stopped_by == signal.SIGINT:
            raise KeyboardInterrupt
        signal.raise_signal(sweep.stopped_by)
    results = []
    for run in sweep.record.runs:
        run_dir = Path(run["run_dir"]) if run.get("run_dir") else None
        metrics = {}
        if run_dir is not None:
            with contextlib.suppress(PystematicError):
                metrics = dict(rundir.read_run_json(run_dir).get("metrics") or {})
        results.append(
            SweepResult(
                run["index"], dict(run["params"]), run_dir, run["status"], metrics, run.get("error")
            )
        )
    return results
