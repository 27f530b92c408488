"""Runs in other processes: the job a child process runs, and how it is started and stopped.

A sweep (and ``exp.run_in_new_process``) starts each run in its own process with
:func:`start_run` first -- so the run dir, its record and its id exist before any process
does -- and hands the started run to a child that imports only the experiment's module and
runs it with ``runner.run_experiment(..., started=...)``, as ``launch.rank_entry`` does for
the ranks of a distributed run. :class:`ProcessJob` is such a child on this machine (its own
process group, so a signal reaches it and whatever it started, and nothing is left behind);
under SLURM, submitit pickles :func:`run_job` and the job starts the run on its node.

Importing this module is cheap (the runner and torch load in the child).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import rundir
from .discovery import ExperimentInfo
from .errors import DistributedError, PystematicError
from .project import Project
from .start import StartedRun

#: What a child process runs: the pickled :class:`RunJob` comes on its stdin.
CHILD_CODE = "from pystematic.jobs import job_main; job_main()"
#: How long runs get, after the signal that stops them, before they are killed.
STOP_GRACE_S = 10.0


@dataclass
class RunJob:
    """What a child needs to run one run (picklable: it crosses a process boundary)."""

    experiment_id: str
    project_root: str
    file: str  # the experiment's source file: the only module the child imports
    values: dict[str, Any]
    snapshot: dict[str, Any]
    argv: list[str]
    started: StartedRun | None  # None: the job starts the run itself (on a SLURM node)
    fields: dict[str, Any] = field(default_factory=dict)  # run.json fields for that start
    parent_pid: int | None = None  # the child stops (SIGTERM) when this process dies
    ask_git: bool = False  # the started run's git facts are the child's to record


@dataclass
class JobResult:
    """How one job ended: its run dir, the child's exit code and the run's final status."""

    run_dir: str | None
    exit_code: int
    status: str
    error: str | None = None


# ---------------------------------------------------------------- the child's side


def run_job(job: RunJob) -> JobResult:
    """Run *job* in this process: import the experiment's module, start the run unless it was
    started already, run it. Errors of the experiment end in the result, not raised."""
    from .discovery import import_project
    from .metadata import GitProbe, environment_info, write_git_diff
    from .project import load_project
    from .runner import run_experiment
    from .start import output_dir, start_run

    project = load_project(explicit_root=Path(job.project_root))
    git = None
    if job.ask_git and job.started is not None:
        # Asked now, while the experiment's module (and torch) import: the code this run
        # imports is the code its record names.
        git = GitProbe(project.root, exclude=(output_dir(job.values, project),))
    found = import_project(project, [Path(job.file)])
    info = found.experiments.get(job.experiment_id)
    started = job.started
    if info is None or info.main is None:
        failure = found.failures[0] if found.failures else None
        message = f"cannot import experiment {job.experiment_id!r} from {job.file}" + (
            f": {failure.message}" if failure else ""
        )
        if started is None:
            raise PystematicError(message)
        rundir.finish_record(
            started.run_dir,
            {
                "status": "failed",
                "error": message,
                "traceback": failure.traceback if failure else None,
                "duration": 0.0,
            },
        )
        with contextlib.suppress(OSError), open(started.run_dir / "output.log", "a") as log:
            log.write((failure.traceback if failure else "") + f"error: {message}\n")
        return JobResult(str(started.run_dir), 1, "failed", message)
    if started is None:
        started = start_run(info, project, job.values, job.snapshot, job.argv, fields=job.fields)
    else:
        # The parent made the record; this process runs the run, and torch is imported now.
        facts: dict[str, Any] = {"pid": os.getpid(), **environment_info()}
        if git is not None:
            state = git.result()
            facts.update(git_commit=state.commit, git_branch=state.branch, git_dirty=state.dirty)
            write_git_diff(state, started.run_dir)
        rundir.update_run_json(started.run_dir, facts)
    outcome = run_experiment(
        info,
        project,
        started.values,
        started.snapshot,
        job.argv,
        started=started,
        ends_process=True,
    )
    data = rundir.read_run_json(started.run_dir)
    error = data.get("error")
    return JobResult(
        str(started.run_dir),
        outcome.exit_code,
        str(data.get("status")),
        str(error) if error is not None else None,
    )


def job_main() -> None:
    """Entry point of a child process (:data:`CHILD_CODE`): the job comes pickled on stdin."""
    data = sys.stdin.buffer.read()
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
    job: RunJob = pickle.loads(data)
    if job.parent_pid is not None:
        _stop_with_parent(job.parent_pid)
    try:
        code = run_job(job).exit_code
    except PystematicError as e:
        print(f"error: {e.format_message()}", file=sys.stderr)
        code = e.exit_code
    sys.stdout.flush()
    sys.stderr.flush()
    if any(t.daemon is False and t is not threading.main_thread() for t in threading.enumerate()):
        os._exit(code)  # threads main left behind do not keep the process alive
    sys.exit(code)


def _stop_with_parent(parent_pid: int) -> None:
    """SIGTERM this process when the parent dies (Linux), so a killed sweep leaves no run."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before that took effect
        raise SystemExit(143)


# ---------------------------------------------------------------- the parent's side


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a child run, with *extra* on top."""
    from .start import RUN_FIELDS_ENV

    env = dict(os.environ)
    env.pop(RUN_FIELDS_ENV, None)  # the fields are the job's own
    env.update(extra or {})
    return env


class ProcessJob:
    """A run in a child process on this machine.

    ``new_group``: the child leads its own process group (a sweep's runs: the terminal's
    Ctrl-C reaches the sweep alone, which stops them; a signal to the group reaches
    everything the run started). ``quiet``: the child's stdout and stderr are dropped
    (each run keeps its own output.log); otherwise it writes where this process does.
    """

    def __init__(
        self,
        job: RunJob,
        *,
        env: Mapping[str, str] | None = None,
        new_group: bool = True,
        quiet: bool = True,
    ) -> None:
        self.job = job
        self.run_dir = job.started.run_dir if job.started is not None else None
        self.new_group = new_group
        self.stopped_by: int | None = None  # the signal this process sent to stop it
        out = subprocess.DEVNULL if quiet else None
        group: dict[str, Any] = {}
        if new_group:
            # A process group of its own, in this session: not a new session, which would
            # also make it a scheduling group of its own (Linux autogroup) and so give a
            # sweep's runs more CPU than other processes started from the same shell.
            if sys.version_info >= (3, 11):
                group["process_group"] = 0
            else:  # pragma: no cover - Python 3.10
                group["preexec_fn"] = os.setpgrp
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD_CODE],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=out,
            env=child_environment(env),
            **group,
        )
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(pickle.dumps(job))
            self.proc.stdin.close()
        except BrokenPipeError:  # the child is gone already; poll() says how
            pass

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout)

    def send(self, sig: int) -> None:
        """Send *sig* to the run (and, in its own group, to what it started)."""
        self.stopped_by = self.stopped_by or sig
        with contextlib.suppress(OSError):
            if self.new_group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL the run and its process group; then reap it."""
        self.stopped_by = self.stopped_by or signal.SIGKILL
        with contextlib.suppress(OSError):
            if self.new_group:
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.kill()
        self.proc.wait()
        self.reap_group()

    def reap_group(self) -> None:
        """Kill what the run left in its process group after it ended (nothing stays)."""
        if self.new_group:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def result(self) -> JobResult:
        """How the ended child's run ended; a run that could not say so itself is recorded
        here (killed by a signal, or stopped by this process)."""
        code = self.proc.returncode
        assert code is not None, "result() of a running job"
        if self.run_dir is None:
            return JobResult(None, code, "failed", _exit_reason(code))
        try:
            data = rundir.read_run_json(self.run_dir)
        except PystematicError:
            data = {}
        status = data.get("status")
        if status == "running":  # it never wrote its final record
            status = "interrupted" if self.stopped_by is not None else "failed"
            reason = _exit_reason(code)
            with contextlib.suppress(OSError):
                rundir.finish_record(self.run_dir, {"status": status, "error": reason})
            return JobResult(str(self.run_dir), code, status, reason)
        error = data.get("error")
        return JobResult(
            str(self.run_dir),
            code,
            str(status or "failed"),
            str(error) if error is not None else None,
        )


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class RunProcess:
    """A run in a child process, from ``exp.run_in_new_process(params)``: its run dir exists
    already; ``join()``, ``exitcode``, ``is_alive()``, ``terminate()`` as with
    ``multiprocessing.Process``. The child writes where this process does, and stays in its
    process group (Ctrl-C in the terminal reaches it)."""

    def __init__(self, job: ProcessJob) -> None:
        self._job = job
        assert job.run_dir is not None
        self.run_dir: Path = job.run_dir

    @property
    def pid(self) -> int:
        return self._job.pid

    @property
    def exitcode(self) -> int | None:
        """The child's exit code (0 completed, 1 failed, 130/143 interrupted); None while it
        runs."""
        return self._job.poll()

    def join(self, timeout: float | None = None) -> None:
        """Wait until the run ends, or *timeout* seconds."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._job.wait(timeout)

    def is_alive(self) -> bool:
        return self._job.poll() is None

    def terminate(self) -> None:
        """SIGTERM: the run stops and is recorded ``interrupted``."""
        self._job.send(signal.SIGTERM)

    def kill(self) -> None:
        self._job.kill()

    def __repr__(self) -> str:
        return f"<RunProcess pid={self.pid} exitcode={self.exitcode} run_dir={self.run_dir}>"


def check_importable(info: ExperimentInfo) -> None:
    """Another process runs an experiment by importing its source file: it needs one."""
    if not info.file or not Path(info.file).is_file():
        raise PystematicError(
            f"experiment {info.id!r} has no source file (a notebook cell?), so another "
            "process cannot import it: define it in a module"
        )


def start_in_new_process(
    info: ExperimentInfo, project: Project, given: Mapping[str, Any]
) -> RunProcess:
    """Resolve *given* as ``exp.run`` does, start the run here, run it in a child process."""
    from .params import BUILTIN_PARAMETERS, resolve_parameters
    from .start import start_run

    check_importable(info)
    parameters = [*info.parameters, *BUILTIN_PARAMETERS]
    resolved = resolve_parameters(info.id, parameters, info.defaults, project, dict(given))
    started = start_run(info, project, resolved.values, resolved.snapshot(), [info.id])
    job = RunJob(
        experiment_id=info.id,
        project_root=str(project.root),
        file=info.file,
        values=dict(started.values),
        snapshot=dict(started.snapshot),
        argv=[info.id],
        started=started,
    )
    return RunProcess(ProcessJob(job, new_group=False, quiet=False))


# ---------------------------------------------------------------- GPUs


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else torch's count."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [d.strip() for d in given.split(",") if d.strip() and d.strip() != "-1"]
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [str(i) for i in range(count)]


def gpu_slots(visible: Sequence[str], jobs: int, per_job: int) -> list[list[str]]:
    """The GPUs of each of *jobs* job slots: *per_job* each, round-robin over *visible*.

    ``--jobs 4 --gpus-per-job 1`` on 4 GPUs gives one GPU a slot; more slots than GPUs
    share them in turn. Fewer GPUs than one slot needs is an error.
    """
    if per_job < 1:
        raise DistributedError(f"--gpus-per-job {per_job}: need at least 1")
    if len(visible) < per_job:
        plural = "" if per_job == 1 else "s"
        raise DistributedError(
            f"--gpus-per-job {per_job} needs {per_job} GPU{plural} but this machine has "
            f"{len(visible)}" + ("" if visible else " visible")
        )
    return [
        [visible[(slot * per_job + k) % len(visible)] for k in range(per_job)]
        for slot in range(jobs)
    ]
