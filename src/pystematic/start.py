"""Starting a run: checked parameters -> master seed -> run dir -> parameters.toml + run.json.

One function, :func:`start_run`, that ``run``, ``distributed``, ``sweep`` and
``exp.run()`` share. Everything that can be wrong with the input is found before
the run dir exists; a ``--resume`` is checked (a checkpoint to continue from, a
run that is not alive) before the old run's record is touched.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import checkpoint, rundir, seeding
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
    extra = {**fields_from_environment(), **(fields or {})}
    if values.get("resume") is not None:
        run_dir = resume_target(Path(values["resume"]))
        rundir.note_resume(run_dir, snapshot, list(argv))
        checkpoint.remove_leftovers(run_dir)
        if extra:
            rundir.update_run_json(run_dir, extra)
        return StartedRun(run_dir, values, snapshot, resumed=True, fields=extra)
    probes = probes or Probes.start(project)
    run_dir = rundir.create_run_dir(output_dir(values, project), info.id)
    try:
        rundir.write_parameters(run_dir, snapshot)
        git = probes.git.result()
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
                "git_commit": git.commit,
                "git_branch": git.branch,
                "git_dirty": git.dirty,
                "tags": list(values.get("tag") or []),
                "params": dict(snapshot),
                **extra,
            },
        )
        probes.packages.write(run_dir / "packages.txt")
        write_git_diff(git, run_dir)
    except OSError as e:
        # The disk filled up (or the folder went away) while the run was being set up:
        # nothing of a run is in the folder yet, so it goes.
        shutil.rmtree(run_dir, ignore_errors=True)
        raise RunDirError(f"cannot write the run folder {run_dir}: {e.strerror or e}") from None
    return StartedRun(run_dir, values, snapshot, fields=extra)
