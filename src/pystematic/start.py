"""Starting a run: checked parameters -> master seed -> run dir -> parameters.toml + run.json.

One function, :func:`start_run`, that ``run``, ``distributed``, ``sweep`` and
``exp.run()`` share. Everything that can be wrong with the input is found before
the run dir exists; a ``--resume`` is checked (a checkpoint to continue from, a
run that is not alive) before the old run's record is touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import checkpoint, distributed, interrupts, rundir, seeding
from .discovery import ExperimentInfo, cache_dir
from .errors import ParameterError, RunDirError
from .metadata import GitProbe, PackagesProbe, environment_info, write_git_diff
from .project import Project
from .recording import check_backends

#: Extra run.json fields for the run this process starts (a JSON object), set by the
#: commands that start runs in child processes (``sweep``: ``{"sweep": ID}``,
#: ``reproduce``: ``{"reproduces": ID}``). Read once and removed, so runs started by
#: the run itself do not inherit it.
RUN_FIELDS_ENV = "PYSTEMATIC_RUN_FIELDS"


def fields_from_environment() -> dict[str, Any]:
    """The run.json fields a parent command handed down in :data:`RUN_FIELDS_ENV`."""
    import json

    text = os.environ.pop(RUN_FIELDS_ENV, None)
    if not text:
        return {}
    try:
        fields = json.loads(text)
    except ValueError:
        fields = None
    if not isinstance(fields, dict):
        raise ParameterError(f"{RUN_FIELDS_ENV} must hold a JSON object, got {text!r}")
    return fields


@dataclass
class Probes:
    """git and the package listing, asked in the background before user code is imported,
    so their answers are ready when the run starts (in the shadow of ``import torch``)."""

    git: GitProbe
    packages: PackagesProbe

    @classmethod
    def start(cls, project: Project) -> Probes:
        return cls(
            git=GitProbe(project.root, exclude=(project.output_dir,)),
            packages=PackagesProbe(cache_dir(project) / "packages.json"),
        )


@dataclass
class StartedRun:
    """A run whose folder and record exist: what its ranks need to run it."""

    run_dir: Path
    values: dict[str, Any]  # the resolved parameters, random_seed drawn
    snapshot: dict[str, Any]  # what parameters.toml holds
    resumed: bool = False
    fields: dict[str, Any] = field(default_factory=dict)
    #: Restarted before its first checkpoint: it begins again, in its own folder.
    start_over: bool = False
    #: What a restart did, for the console ("restart 1 (torchelastic): ..."); "" otherwise.
    restart_note: str = ""

    @property
    def seed(self) -> int:
        return int(self.values["random_seed"])


def output_dir(values: Mapping[str, Any], project: Project) -> Path:
    """``--output-dir`` (already absolute) or the config's folder."""
    return Path(values["output_dir"]) if values.get("output_dir") else project.output_dir


def resume_target(path: Path) -> Path:
    """The run dir ``--resume`` continues; it must hold a checkpoint to continue from."""
    folder = rundir.resume_dir(path)
    given = Path(path).resolve()
    if given.is_file():
        if not checkpoint.looks_complete(given):
            raise RunDirError(f"--resume {given}: not a complete checkpoint")
    elif checkpoint.latest(folder) is None:
        raise RunDirError(f"--resume {folder}: the run saved no checkpoint to continue from")
    return folder


def start_run(
    info: ExperimentInfo,
    project: Project,
    values: Mapping[str, Any],
    snapshot: Mapping[str, Any],
    argv: Sequence[str],
    *,
    world_size: int = 1,
    backend: str | None = None,
    probes: Probes | None = None,
    fields: Mapping[str, Any] | None = None,
) -> StartedRun:
    """Check, seed, and make (or, for ``--resume``, reopen) the run dir with its record.

    ``values`` are the resolved parameters, ``snapshot`` what parameters.toml is to hold
    (``Resolved.values`` and ``Resolved.snapshot()``).
    """
    values = dict(values)
    snapshot = dict(snapshot)
    check_backends(values.get("recorder") or project.recorder)  # extras installed too
    if values.get("random_seed") is None:
        values["random_seed"] = snapshot["random_seed"] = seeding.draw_seed()
    if values.get("resume") is None:
        requeued = requeued_run(output_dir(values, project) / info.id, argv)
        if requeued is not None:
            return restart_run(
                info,
                project,
                requeued,
                values,
                argv,
                cause="slurm",
                count=distributed.slurm_restart_count(),
                take_over=True,
            )
    extra = {**fields_from_environment(), **(fields or {})}
    if values.get("resume") is not None:
        resumed = resume_target(Path(values["resume"]))
        try:
            rundir.note_resume(resumed, snapshot, list(argv))
        except OSError as e:
            raise RunDirError(
                f"--resume {resumed}: cannot write to it: {e.strerror or e}"
            ) from None
        checkpoint.remove_leftovers(resumed)
        if extra:
            rundir.update_run_json(resumed, extra)
        return StartedRun(resumed, values, snapshot, resumed=True, fields=extra)
    probes = probes or Probes.start(project)
    git = probes.git.result()
    run_dir: Path | None = None
    try:
        # A stop signal waits until run.json exists: no run dir is ever without one.
        with interrupts.held():
            run_dir = _new_run_dir(
                info, values, project, snapshot, argv, world_size, backend, git, extra
            )
        probes.packages.write(run_dir / "packages.txt")
        write_git_diff(git, run_dir)
    except OSError as e:
        # The disk filled up (or the folder went away) while the run was being set up:
        # nothing of a run is in the folder yet, so it goes.
        assert run_dir is not None
        shutil.rmtree(run_dir, ignore_errors=True)
        raise RunDirError(f"cannot write the run folder {run_dir}: {e.strerror or e}") from None
    except BaseException as e:
        # Stopped while it was being set up: a run that was interrupted.
        if run_dir is not None and interrupts.exit_code(e) is not None:
            end = {"status": "interrupted", "error": interrupts.describe(e)}
            rundir.finish_record(run_dir, end)
        raise
    return StartedRun(run_dir, values, snapshot, fields=extra)


def _new_run_dir(
    info: ExperimentInfo,
    values: Mapping[str, Any],
    project: Project,
    snapshot: Mapping[str, Any],
    argv: Sequence[str],
    world_size: int,
    backend: str | None,
    git: Any,
    extra: Mapping[str, Any],
) -> Path:
    """The run folder with parameters.toml and run.json, or none at all (OSError)."""
    run_dir = rundir.create_run_dir(output_dir(values, project), info.id)
    try:
        rundir.write_parameters(run_dir, snapshot)
        rundir.start_record(
            run_dir,
            {
                "experiment": info.id,
                "module": info.module,
                "file": info.file,
                "argv": list(argv),
                **environment_info(),
                "world_size": world_size,
                "backend": backend,
                "slurm_job_id": distributed.slurm_job_id(),
                "git_commit": git.commit,
                "git_branch": git.branch,
                "git_dirty": git.dirty,
                "tags": list(values.get("tag") or []),
                "params": dict(snapshot),
                **extra,
            },
        )
    except OSError as e:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise RunDirError(f"cannot write the run folder {run_dir}: {e.strerror or e}") from None
    return run_dir


# --------------------------------------------------------------------------- restarts


def restart_run(
    info: ExperimentInfo,
    project: Project,
    run_dir: Path,
    values: Mapping[str, Any],
    argv: Sequence[str],
    *,
    cause: str,
    count: int,
    take_over: bool,
) -> StartedRun:
    """Start *run_dir* again after its processes were restarted (``cause``: ``torchelastic``
    for ``--max-restarts``, ``slurm`` for a requeued job).

    The run continues from its latest checkpoint, as under ``--resume`` (``main``'s
    ``context.load_checkpoint()`` restores it). With no checkpoint yet it starts over in
    the same folder: what it recorded (metrics.jsonl, tensorboard, seeds.log) is dropped.
    Its parameters are the ones it recorded (a restart runs the same command; a seed or
    callable default drawn the first time is not drawn again). ``take_over``: this
    process now owns run.json (not a launcher that is still running).
    """
    values, snapshot = _recorded_parameters(info, project, run_dir, values)
    checkpoint.remove_leftovers(run_dir)
    latest = checkpoint.latest(run_dir)
    extra = fields_from_environment()
    number = rundir.note_restart(
        run_dir,
        list(argv),
        cause=cause,
        count=count,
        checkpoint=latest.name if latest is not None else None,
        take_over=take_over,
    )
    if extra:
        rundir.update_run_json(run_dir, extra)
    what = f"restart {count} ({cause}, resume {number})"
    if latest is None:
        with contextlib.suppress(FileNotFoundError):
            (run_dir / "seeds.log").unlink()
        note = f"{what}: no checkpoint yet, starting over in {run_dir}"
        return StartedRun(
            run_dir, values, snapshot, fields=extra, start_over=True, restart_note=note
        )
    values["resume"] = run_dir
    note = f"{what}: continuing {run_dir} from {latest.name}"
    return StartedRun(run_dir, values, snapshot, resumed=True, fields=extra, restart_note=note)


def _recorded_parameters(
    info: ExperimentInfo, project: Project, run_dir: Path, values: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(values, snapshot) from the run's parameters.toml, at ``--params-file`` precedence;
    the built-ins it does not hold (output folder, recorder, tags, ...) as given now."""
    from .params import BUILTIN_PARAMETERS, SNAPSHOT_BUILTINS, resolve_parameters

    carried = {
        p.name: values[p.name]
        for p in BUILTIN_PARAMETERS
        if p.name not in (*SNAPSHOT_BUILTINS, "params_file", "resume")
        and values.get(p.name) not in (None, [], ())
    }
    resolved = resolve_parameters(
        info.id,
        [*info.parameters, *BUILTIN_PARAMETERS],
        info.defaults,
        project,
        {**carried, "params_file": run_dir / rundir.PARAMETERS_TOML},
    )
    return dict(resolved.values), resolved.snapshot()


def requeued_run(experiment_dir: Path, argv: Sequence[str]) -> Path | None:
    """The run this command started before SLURM requeued its job, or None.

    Only in a requeued job (``SLURM_RESTART_COUNT`` > 0): the newest run in
    ``experiment_dir`` (``<output_dir>/<experiment>``) that recorded the same
    ``slurm_job_id`` (a job keeps its id when requeued) and the same command line, and did
    not complete. A job that runs one command line several times continues the newest
    unfinished run of it.
    """
    job = distributed.slurm_job_id()
    if job is None or distributed.slurm_restart_count() < 1:
        return None
    best: tuple[str, str] | None = None
    for record in experiment_dir.glob(f"*/{rundir.RUN_JSON}"):
        try:
            data = rundir.read_run_json(record.parent)
        except RunDirError:
            continue
        if (
            str(data.get("slurm_job_id")) == job
            and data.get("argv") == list(argv)
            and data.get("status") != "completed"
        ):
            candidate = (str(data.get("start") or ""), record.parent.name)
            best = candidate if best is None or candidate > best else best
    return None if best is None else experiment_dir / best[1]
