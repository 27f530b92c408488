"""Running an experiment: resolve params → make run dir → seed → run → record.

``execute`` runs one rank (the only one for ``pystematic run``). It creates the
run folder unless a launcher already did, joins a process group started by
torchrun, SLURM or ``pystematic distributed``, and always leaves run.json with
the right status, the metrics flushed and the output log closed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from . import distributed, globalstate, rundir, seeding
from .context import Context, set_current
from .errors import ParameterError, PystematicError, RunDirError
from .experiment import Experiment
from .metadata import GitProbe, PackagesProbe, environment_info, write_git_diff
from .params import Layer, Params, Resolved, Source, resolve
from .project import Project, read_toml

log = logging.getLogger("pystematic")

EXIT_OK, EXIT_FAILED, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 130, 143
_probes: tuple[GitProbe, PackagesProbe] | None = None


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives, so ``finally`` blocks run."""


def start_probes(project: Project) -> tuple[GitProbe, PackagesProbe]:
    """Start git and the package listing in the background, before user modules (and
    torch) are imported, so they finish in the shadow of those imports."""
    global _probes
    if _probes is None:
        _probes = (GitProbe(project.root, exclude=(project.output_dir,)), PackagesProbe())
    return _probes


# ---------------------------------------------------------------- parameters


def _params_file_layer(path: Path, experiment_id: str) -> Layer:
    if not path.is_file():
        raise ParameterError(f"params file not found: {path}")
    try:
        values = read_toml(path)
    except PystematicError as e:
        raise ParameterError(e.message) from None
    sibling = path.parent / rundir.RUN_JSON
    if sibling.is_file():
        try:
            other = rundir.read_run_json(path.parent).get("experiment")
        except RunDirError:
            other = None
        if other and other != experiment_id:
            raise ParameterError(
                f"params file {path} belongs to a run of {other!r}, not {experiment_id!r}"
            )
    return Layer(Source.PARAMS_FILE, "params-file", values, strict=True, where=str(path))


def resume_dir(path: Path) -> Path:
    """The run folder of ``--resume``, given a run folder or a checkpoint inside one."""
    path = path.resolve()
    folder = path if path.is_dir() else path.parent.parent
    if not (folder / rundir.RUN_JSON).is_file():
        raise ParameterError(f"--resume {path}: not a run folder or a checkpoint in one")
    return folder


def resolve_parameters(
    experiment_id: str,
    parameters: list[Any],
    experiment_defaults: Mapping[str, Any],
    project: Project,
    cli_values: Mapping[str, Any],
) -> Resolved:
    """Every source in the design's precedence order, checked once."""
    table = project.experiments.get(experiment_id, {})
    layers = [
        Layer(Source.EXPERIMENT, "experiment", experiment_defaults, strict=True),
        Layer(
            Source.DEFAULTS,
            "[defaults]",
            {**({"recorder": list(project.recorder)}), **project.defaults},
            strict=False,
        ),
        Layer(Source.EXPERIMENTS_TABLE, f"[experiments.{experiment_id}]", table, strict=True),
        Layer(Source.CLI, "cli", cli_values, strict=True),
    ]
    params_file = cli_values.get("params_file")
    if params_file is not None:
        layers.append(_params_file_layer(Path(params_file), experiment_id))
    resume = cli_values.get("resume")
    if resume is not None:
        folder = resume_dir(Path(resume))
        layers.append(_params_file_layer(folder / rundir.PARAMETERS_TOML, experiment_id))
    resolved = resolve(parameters, layers)
    # The recorder default comes from the config, not from the decorator.
    if resolved.sources.get("recorder") == "[defaults]" and "recorder" not in project.defaults:
        resolved.sources["recorder"] = "config"
    return resolved


# ---------------------------------------------------------------- running


@dataclass
class RunOutcome:
    exit_code: int
    value: Any = None
    error: BaseException | None = None


@dataclass
class RankJob:
    """What a launched rank needs to run its part (picklable: spawn start method)."""

    experiment_id: str
    project_root: str
    file: str  # the experiment's source file: the only module a rank imports
    values: dict[str, Any]
    snapshot: dict[str, Any]
    argv: list[str]
    run_dir: str | None
    backend: str


def _install_sigterm() -> Any:
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    return signal.signal(signal.SIGTERM, handler)


def _ignore_sigint() -> Any:
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, signal.SIG_IGN)


def _heartbeat(run_dir: Path, ctx: Context, stop: threading.Event) -> None:
    while not stop.wait(rundir.HEARTBEAT_SECONDS):
        with contextlib.suppress(OSError):
            rundir.update_run_json(
                run_dir, {"heartbeat": rundir.now_iso(), "metrics": ctx.recorder.last_scalars}
            )


def _start_record(
    exp: Experiment,
    run_dir: Path,
    project: Project,
    snapshot: Mapping[str, Any],
    argv: list[str],
    values: Mapping[str, Any],
    world_size: int,
    backend: str | None,
) -> None:
    """Everything written at the start of a run: snapshot, run.json, packages, git."""
    rundir.write_parameters(run_dir, snapshot)
    global _probes
    git_probe, packages_probe = start_probes(project)
    _probes = None  # each run lists what is true when it starts
    git = git_probe.result()
    now = rundir.now_iso()
    info = environment_info()
    rundir.update_run_json(
        run_dir,
        {
            "id": run_dir.name,
            "experiment": exp.id,
            "module": exp.module,
            "file": str(exp.file),
            "argv": argv,
            "status": "running",
            "start": now,
            "end": None,
            "duration": None,
            "error": None,
            "traceback": None,
            "failed_rank": None,
            "pid": os.getpid(),
            "heartbeat": now,
            **info,
            "world_size": world_size,
            "backend": backend,
            "git_commit": git.commit,
            "git_branch": git.branch,
            "git_dirty": git.dirty,
            "resumes": [],
            "tags": list(values.get("tag") or []),
            "params": dict(snapshot),
            "metrics": {},
        },
    )
    packages_probe.write(run_dir / "packages.txt")
    write_git_diff(git, run_dir)


def _note_resume(run_dir: Path, snapshot: Mapping[str, Any], argv: list[str]) -> None:
    """Keep the old parameters file and list the resume in run.json."""
    data = rundir.read_run_json(run_dir)
    heartbeat = data.get("heartbeat")
    if data.get("status") == "running" and heartbeat:
        from datetime import datetime, timezone

        age = (datetime.now(timezone.utc) - datetime.fromisoformat(heartbeat)).total_seconds()
        if age < 3 * rundir.HEARTBEAT_SECONDS:
            raise RunDirError(
                f"--resume {run_dir}: that run is still running (heartbeat {age:.0f}s ago)"
            )
    n = 1
    while (run_dir / f"parameters.{n}.toml").exists():
        n += 1
    os.replace(run_dir / rundir.PARAMETERS_TOML, run_dir / f"parameters.{n}.toml")
    rundir.write_parameters(run_dir, snapshot)
    now = rundir.now_iso()
    rundir.update_run_json(
        run_dir,
        {
            "status": "running",
            "end": None,
            "error": None,
            "traceback": None,
            "failed_rank": None,
            "pid": os.getpid(),
            "heartbeat": now,
            "resumes": [*data.get("resumes", []), {"time": now, "argv": argv}],
            "params": dict(snapshot),
        },
        restart=True,
    )


def _device(env: distributed.DistEnv | None, backend: str | None) -> Any:
    import torch

    if backend == "nccl" and env is not None:
        return torch.device("cuda", distributed.cuda_device_index(env.local_rank))
    if env is None and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def execute(
    exp: Experiment,
    values: dict[str, Any],
    snapshot: dict[str, Any],
    project: Project,
    argv: list[str],
    *,
    run_dir: Path | None = None,
    backend: str | None = None,
) -> RunOutcome:
    """Run one rank of an experiment and record it; never raises for the experiment's errors."""
    env = distributed.detect_environment()
    rank, world_size = (env.rank, env.world_size) if env else (0, 1)
    joined = False
    if env is not None:
        import torch.distributed as dist

        backend = backend or distributed.select_backend(_cuda_available())
        if not dist.is_initialized():
            distributed.export_environment(env)
            distributed.init_process_group(env, backend)
            joined = True

    def shared(value: Any) -> Any:
        if env is None:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    values = dict(values)
    resuming = values.get("resume") is not None
    if values.get("random_seed") is None:
        values["random_seed"] = shared(seeding.draw_seed() if rank == 0 else None)
        snapshot = {**snapshot, "random_seed": values["random_seed"]}
    seed = int(values["random_seed"])
    if run_dir is None:
        if resuming:
            run_dir = resume_dir(Path(values["resume"]))
        else:
            output_dir = _output_dir(values, project)
            run_dir = shared(rundir.create_run_dir(output_dir, exp.id) if rank == 0 else None)
        assert run_dir is not None
        if rank == 0:
            if resuming:
                _note_resume(run_dir, snapshot, argv)
            else:
                _start_record(exp, run_dir, project, snapshot, argv, values, world_size, backend)
            print(f"run dir: {run_dir}", file=sys.stderr, flush=True)
        if env is not None:
            shared(None)  # everyone waits until rank 0 has written the start of the record

    from .capture import OutputCapture
    from .recording import Recorder

    log_name = "output.log" if world_size == 1 else f"output.rank{rank}.log"
    capture = OutputCapture(run_dir / log_name)
    capture.start()
    # [console] The run's logging; logging, torch flags and signal handlers restored after.
    run_globals = contextlib.ExitStack()
    run_globals.enter_context(globalstate.run_globals(debug=bool(values.get("debug"))))
    previous_sigterm = _install_sigterm()
    recorder: Recorder | None = None
    stop_heartbeat = threading.Event()
    heartbeat: threading.Thread | None = None
    began = time.time()
    outcome = RunOutcome(EXIT_OK)
    end: dict[str, Any] = {"status": "completed"}
    try:
        # Setup failures count as the run's failure too: run.json must never stay "running".
        seeding.set_current_rank(rank)
        seeding.seed_all(seed)
        seeding.set_deterministic(bool(values.get("deterministic")))
        recorder = Recorder(
            run_dir,
            backends=list(values.get("recorder") or project.recorder),
            rank=rank,
            world_size=world_size,
        )
        ctx = Context(
            params=Params(values),
            output_dir=run_dir,
            seed=seed,
            recorder=recorder,
            rank=rank,
            local_rank=env.local_rank if env else 0,
            world_size=world_size,
            device=_device(env, backend),
            resume_from=Path(values["resume"]) if resuming else None,
        )
        set_current(ctx)
        if rank == 0:
            heartbeat = threading.Thread(
                target=_heartbeat, args=(run_dir, ctx, stop_heartbeat), daemon=True
            )
            heartbeat.start()
        outcome.value = exp.main(ctx.params, ctx)
        problem = ctx.seed_problems()
        if problem:
            log.warning(problem)
    except KeyboardInterrupt as e:
        outcome.exit_code, outcome.error = EXIT_SIGINT, e
        end = {"status": "interrupted", "error": "KeyboardInterrupt"}
    except Terminated as e:
        outcome.exit_code, outcome.error = EXIT_SIGTERM, e
        end = {"status": "interrupted", "error": "SIGTERM"}
    except Exception as e:
        outcome.exit_code, outcome.error = EXIT_FAILED, e
        tb = traceback.format_exc()
        end = {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": tb}
        if world_size > 1:
            end["failed_rank"] = rank
        sys.stderr.write(tb)
        if values.get("pdb"):
            import pdb

            pdb.post_mortem(e.__traceback__)
    finally:
        # A second Ctrl-C (the terminal and torch's agent both forward it) must not
        # cut the final record short.
        previous_sigint = _ignore_sigint()
        stop_heartbeat.set()
        if heartbeat is not None:
            # A beat already under way must not write older metrics after the final record.
            heartbeat.join()
        try:
            if recorder is not None:
                if rank == 0 and end["status"] == "completed" and recorder.last_scalars:
                    recorder.hparams(snapshot)
                recorder.close()
        finally:
            set_current(None)
            if rank == 0 or end["status"] != "completed":
                rundir.update_run_json(
                    run_dir,
                    {
                        **end,
                        "end": rundir.now_iso(),
                        "duration": round(time.time() - began, 3),
                        "heartbeat": rundir.now_iso(),
                        "metrics": recorder.last_scalars if recorder is not None else {},
                    },
                )
            if previous_sigterm is not None:
                signal.signal(signal.SIGTERM, previous_sigterm)
            if previous_sigint is not None:
                signal.signal(signal.SIGINT, previous_sigint)
            run_globals.close()  # [console]
            capture.stop()
            if joined and end["status"] == "completed":
                import torch.distributed as dist

                dist.destroy_process_group()
    return outcome


def _output_dir(values: Mapping[str, Any], project: Project) -> Path:
    """``--output-dir`` (already absolute) or the config's folder."""
    return Path(values["output_dir"]) if values.get("output_dir") else project.output_dir


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def run_from_python(exp: Experiment, overrides: dict[str, Any]) -> Any:
    """``experiment.run({...})``: the CLI's path without the CLI; raises what main raised."""
    project = _project_for(exp)
    resolved = resolve_parameters(exp.id, exp.all_parameters, exp.defaults, project, overrides)
    outcome = execute(exp, resolved.values, resolved.snapshot(), project, [exp.id])
    if outcome.error is not None:
        raise outcome.error
    return outcome.value


def _project_for(exp: Experiment) -> Project:
    from .project import load_project

    # [console] Defined in a notebook, IPython or `python -c`: no source file of a project,
    # so the project is found from the working folder, as the CLI finds it.
    if exp.file is None or not exp.file.is_file() or _interactive_main(exp):
        return load_project()
    return load_project(script=exp.file)


def _interactive_main(exp: Experiment) -> bool:  # [console]
    """Defined in the ``__main__`` of an interactive session (a Jupyter cell's temp file)."""
    main = sys.modules.get("__main__")
    return exp.module == "__main__" and not getattr(main, "__file__", None)


def rank_entry(job: RankJob) -> None:
    """Entry point of each rank launched by ``pystematic distributed`` (module level: picklable)."""
    import multiprocessing

    from .discovery import import_project

    # A spawned rank inherits "spawn" as its default start method; give it the platform's
    # default back, so DataLoader workers start as under torchrun or `pystematic run` (fork on
    # Linux: no re-import of torch per worker and epoch, and no picklable-dataset requirement).
    multiprocessing.set_start_method(None, force=True)
    from .project import load_project

    project = load_project(explicit_root=Path(job.project_root))
    found = import_project(project, [Path(job.file)])
    info = found.experiments.get(job.experiment_id)
    if info is None or info.experiment is None:
        raise PystematicError(f"rank could not import experiment {job.experiment_id!r}")
    outcome = execute(
        info.experiment,
        job.values,
        job.snapshot,
        project,
        job.argv,
        run_dir=Path(job.run_dir) if job.run_dir else None,
        backend=job.backend,
    )
    if isinstance(outcome.error, (KeyboardInterrupt, Terminated)):
        # Stopped, not failed: exit quietly (the launcher stops all ranks when one fails).
        raise SystemExit(outcome.exit_code)
    if outcome.error is not None:
        raise outcome.error


def launch_distributed(
    exp: Experiment,
    resolved: Resolved,
    project: Project,
    argv: list[str],
    launch: Mapping[str, Any],
) -> int:
    """``pystematic distributed``: validate, seed and make the run dir here, then launch ranks."""
    from .errors import DistributedError

    gpus, nproc = launch.get("gpus"), launch.get("nproc")
    if (gpus is None) == (nproc is None):
        raise DistributedError("give exactly one of --gpus N or --nproc N")
    use_gpus = gpus is not None
    per_node = int(gpus if use_gpus else nproc)  # type: ignore[arg-type]
    if use_gpus:
        distributed.check_gpus(per_node)
    nnodes = int(launch.get("nnodes") or 1)
    backend = "nccl" if use_gpus else "gloo"
    values, snapshot = dict(resolved.values), resolved.snapshot()
    output_dir = _output_dir(values, project)
    if nnodes > 1:
        # Several nodes share one rendezvous id, the same on every node.
        launch = {**launch, "rdzv_id": launch.get("rdzv_id") or "pystematic"}
    spec = distributed.LaunchSpec(
        nproc_per_node=per_node,
        use_gpus=use_gpus,
        run_id="pending",  # run_id and log_dir are set once the run dir exists
        log_dir=output_dir,
        nnodes=nnodes,
        node_rank=launch.get("node_rank"),
        master_addr=launch.get("master_addr"),
        master_port=launch.get("master_port"),
        rdzv_endpoint=launch.get("rdzv_endpoint"),
        rdzv_id=launch.get("rdzv_id"),
        max_restarts=int(launch.get("max_restarts") or 0),
    )
    distributed.check_spec(spec)  # bad launch options must not leave a run dir behind
    run_dir: Path | None = None
    if nnodes == 1:
        # One node: everything is decided before any process starts.
        if values.get("random_seed") is None:
            values["random_seed"] = snapshot["random_seed"] = seeding.draw_seed()
        if values.get("resume") is not None:
            run_dir = resume_dir(Path(values["resume"]))
            _note_resume(run_dir, snapshot, argv)
        else:
            run_dir = rundir.create_run_dir(output_dir, exp.id)
            _start_record(exp, run_dir, project, snapshot, argv, values, per_node, backend)
        print(f"run dir: {run_dir}", file=sys.stderr, flush=True)
        log_dir = run_dir / "torchelastic"
        run_id = launch.get("rdzv_id") or run_dir.name
    else:
        # Several nodes: rank 0 makes the run dir and draws the seed, as under torchrun.
        run_id = launch["rdzv_id"]
        log_dir = output_dir / exp.id / ".torchelastic" / run_id
    job = RankJob(
        experiment_id=exp.id,
        project_root=str(project.root),
        file=str(exp.file),
        values=values,
        snapshot=snapshot,
        argv=argv,
        run_dir=str(run_dir) if run_dir else None,
        backend=backend,
    )
    spec = dataclasses.replace(spec, run_id=str(run_id), log_dir=log_dir)

    def finish(fields: dict[str, Any]) -> None:
        if run_dir is not None:
            rundir.update_run_json(run_dir, {**fields, "end": rundir.now_iso()})

    try:
        distributed.launch(spec, rank_entry, (job,))
    except distributed.RankFailedError as e:
        finish(
            {
                "status": "failed",
                "failed_rank": e.rank,
                "error": e.error_message,
                "traceback": e.traceback,
            }
        )
        print(f"error: rank {e.rank} failed: {e.error_message}", file=sys.stderr)
        if e.traceback:
            print(e.traceback.rstrip(), file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        finish({"status": "interrupted", "error": "KeyboardInterrupt"})
        return EXIT_SIGINT
    except distributed.LaunchInterrupted as e:
        finish({"status": "interrupted", "error": e.message})
        return e.exit_code
    return EXIT_OK
