"""Running one rank of an experiment: join the group, open the run's resources, call main, record.

:func:`run_experiment` is what ``pystematic run``, ``exp.run()`` and every launched
rank call. It joins a process group started by torchrun, SLURM or ``pystematic
distributed``; starts the run (``start.py``) unless a launcher already did; then a
:class:`RunSession` holds the run's resources -- output capture, signal handlers,
logging, seeding, recorder, context, heartbeat -- on one ``ExitStack``, so each is
released exactly once whatever happens, and run.json always ends with the right status.
"""

from __future__ import annotations

import contextlib
import errno
import faulthandler
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from . import capture, collectives, distributed, globalstate, interrupts, rundir, seeding
from . import context as context_module
from .discovery import ExperimentInfo
from .errors import PystematicError
from .params import Params
from .project import Project
from .start import Probes, StartedRun, restart_run, start_run

log = logging.getLogger("pystematic")

EXIT_OK, EXIT_FAILED, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 130, 143
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
#: How long children that main left running get between SIGTERM and SIGKILL.
CHILD_GRACE_S = 2.0


@dataclass
class RunOutcome:
    exit_code: int
    value: Any = None
    error: BaseException | None = None


def run_experiment(
    info: ExperimentInfo,
    project: Project,
    values: Mapping[str, Any],
    snapshot: Mapping[str, Any],
    argv: Sequence[str],
    *,
    started: StartedRun | None = None,
    backend: str | None = None,
    probes: Probes | None = None,
    fields: Mapping[str, Any] | None = None,
    ends_process: bool = False,
) -> RunOutcome:
    """Run one rank of an experiment and record it; never raises for the experiment's errors.

    ``started`` is given when a launcher already made the run dir. User errors found
    before the run starts (bad values, a resume that cannot be) raise PystematicError.
    ``ends_process``: the process exits after this run (see ``globalstate.frozen_heap``).
    """
    running = context_module.current()
    if running is not None:
        raise PystematicError(
            f"cannot start experiment {info.id!r} inside the running experiment "
            f"{running.output_dir.parent.name!r}: one experiment runs at a time in a process"
        )
    env = distributed.detect_environment()
    loop_limit = loop_limit_from_environment()
    with ExitStack() as group:
        group.enter_context(globalstate.frozen_heap(ends_process=ends_process))
        rank, world_size, local_rank = (
            (env.rank, env.world_size, env.local_rank) if env else (0, 1, 0)
        )
        store = None
        if env is not None:
            backend = backend or distributed.select_backend(_cuda_available())
            store = _join_group(env, backend, group)
        restarts = distributed.torchelastic_restart_count() if env is not None else 0
        if started is None or restarts:
            # start_run records a stop signal that arrives while it works (interrupted)
            started = _start_on_rank0(
                info,
                project,
                values,
                snapshot,
                argv,
                env,
                world_size,
                backend,
                probes,
                fields,
                _Launch(started, store, restarts),
            )
            announce = rank == 0
        else:
            announce = False
        session: RunSession | None = None
        try:
            session = RunSession(
                info,
                project,
                started,
                argv=list(argv),
                rank=rank,
                local_rank=local_rank,
                world_size=world_size,
                device=_device(env, backend),
                loop_limit=loop_limit,
            )
            outcome = session.run(announce=announce)
        except BaseException as e:
            stopped = interrupts.exit_code(e)
            if stopped is None or (session is not None and session.recording):
                raise
            # A stop signal between the start of the run and its session: still recorded.
            if rank == 0:
                end = {"status": "interrupted", "error": interrupts.describe(e)}
                rundir.finish_record(started.run_dir, end)
            return RunOutcome(stopped, error=e)
        if env is not None and outcome.exit_code != EXIT_OK:
            group.pop_all()  # a failed rank leaves the group to the launcher's teardown
        return outcome


def loop_limit_from_environment() -> int | None:
    """The iteration limit a parent command (``reproduce --steps``) handed down, read once."""
    text = os.environ.pop(context_module.LOOP_LIMIT_ENV, None)
    if text is None:
        return None
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if limit < 1:
        raise PystematicError(
            f"{context_module.LOOP_LIMIT_ENV} must be a positive integer, got {text!r}"
        )
    return limit


def _join_group(env: distributed.DistEnv, backend: str, stack: ExitStack) -> Any:
    """Join the group (unless the process already did); the launcher's store, if any."""
    import torch.distributed as dist

    if dist.is_initialized():
        return None
    distributed.export_environment(env)
    store = distributed.init_process_group(env, backend)
    stack.callback(dist.destroy_process_group)
    return store


@dataclass
class _Launch:
    """How this rank was launched: the run a launcher started for it (``pystematic
    distributed``), the launcher's store and how often the agent restarted the ranks."""

    started: StartedRun | None
    store: Any
    restarts: int


def _start_on_rank0(
    info: ExperimentInfo,
    project: Project,
    values: Mapping[str, Any],
    snapshot: Mapping[str, Any],
    argv: Sequence[str],
    env: distributed.DistEnv | None,
    world_size: int,
    backend: str | None,
    probes: Probes | None,
    fields: Mapping[str, Any] | None,
    launch: _Launch,
) -> StartedRun:
    """Start the run (or start it again after a restart); in a group rank 0 does it and
    every rank gets the result (or the error)."""

    def start() -> StartedRun:
        if launch.restarts:
            # The agent restarted the ranks: the run of the first attempt goes on.
            run_dir = (
                launch.started.run_dir
                if launch.started is not None
                else distributed.remembered_run_dir(launch.store)
            )
            if run_dir is not None:
                return restart_run(
                    info,
                    project,
                    run_dir,
                    launch.started.values if launch.started is not None else values,
                    argv,
                    cause="torchelastic",
                    count=launch.restarts,
                    take_over=launch.started is None,
                )
        started = start_run(
            info,
            project,
            values,
            snapshot,
            argv,
            world_size=world_size,
            backend=backend,
            probes=probes,
            fields=fields,
        )
        distributed.remember_run_dir(launch.store, started.run_dir)
        return started

    if env is None:
        return start()
    outcome: StartedRun | PystematicError | None = None
    if env.rank == 0:
        try:
            outcome = start()
        except PystematicError as e:
            outcome = e
    outcome = collectives.broadcast_object(outcome)
    if isinstance(outcome, PystematicError):
        raise outcome
    assert outcome is not None
    return outcome


def _device(env: distributed.DistEnv | None, backend: str | None) -> Any:
    import torch

    if backend == "nccl" and env is not None:
        return torch.device("cuda", distributed.cuda_device_index(env.local_rank))
    if env is None and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


class RunSession:
    """One rank's run: its resources on an ExitStack, main called once, the outcome recorded.

    Teardown order (the stack is last in, first out): heartbeat, context, recorder
    (its final status goes to the backends, then it closes), torch flags, logging, the
    final run.json record, signal handlers, and last the output capture, so that
    everything said on the way out is in output.log.
    """

    def __init__(
        self,
        info: ExperimentInfo,
        project: Project,
        started: StartedRun,
        *,
        argv: list[str],
        rank: int,
        local_rank: int,
        world_size: int,
        device: Any,
        loop_limit: int | None = None,
    ) -> None:
        self.info = info
        self.project = project
        self.started = started
        self.argv = argv
        self.rank = rank
        self.local_rank = local_rank
        self.world_size = world_size
        self.device = device
        self.loop_limit = loop_limit
        self.end: dict[str, Any] = {"status": "completed"}
        self.outcome = RunOutcome(EXIT_OK)
        self.began = time.time()
        self.recorder: Any = None
        #: The final record is on its way: whatever happens now, run.json gets a status.
        self.recording = False

    def run(self, *, announce: bool = False) -> RunOutcome:
        """Run main and record how it ended; ``announce`` prints the run dir first."""
        quiet = _SigintIgnored()
        try:
            self._run(quiet, announce)
        except BaseException as e:
            if not self.recording:
                raise  # before the run began: run_experiment records it
            # Raised while the run's resources were released (a second stop signal, an
            # error in a cleanup): run.json has the status main ended with; the process
            # still ends with an error code.
            stopped = interrupts.exit_code(e)
            if stopped is None:
                print(f"error: while ending the run: {type(e).__name__}: {e}", file=sys.stderr)
            if self.outcome.exit_code == EXIT_OK:
                self.outcome.exit_code = stopped or EXIT_FAILED
        finally:
            quiet.stop()
        return self.outcome

    def _run(self, quiet: _SigintIgnored, announce: bool) -> None:
        sigchld = signal.getsignal(signal.SIGCHLD)
        with ExitStack() as stack:
            try:
                # First on the stack, so that from here on any way out (a signal
                # included) leaves run.json with the run's final status.
                stack.callback(self._write_final_record)
                self.recording = True
                if announce:
                    print(f"run dir: {self.started.run_dir}", file=sys.stderr, flush=True)
                    if self.started.restart_note:
                        print(self.started.restart_note, file=sys.stderr, flush=True)
                ctx = self._open(stack)
                self._call_main(ctx)
            except BaseException as e:
                self._classify(e)
            finally:
                # A second Ctrl-C (the terminal and torch's agent both forward it)
                # must not cut the final record short.
                quiet.start()
                # torch's DataLoader sets a SIGCHLD handler that raises when a worker dies
                # of a signal: with main over it can only cut the teardown short (a job's
                # SIGTERM kills the workers too).
                if sigchld is not None and threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGCHLD, sigchld)
                self._stop_children()

    # ------------------------------------------------------------ opening

    def _open(self, stack: ExitStack) -> context_module.Context:
        from .recording import Recorder
        from .watchdog import guard

        run_dir = self.started.run_dir
        values = self.started.values
        log_name = "output.log" if self.world_size == 1 else f"output.rank{self.rank}.log"
        output = capture.OutputCapture(run_dir / log_name)
        output.start()
        stack.callback(output.stop)
        stack.enter_context(_fault_reports())
        stack.enter_context(guard(self.world_size, flush=[output.stop]))  # a stuck rank ends
        # Logging, torch's flags and signal handlers go back as they were (a notebook).
        stack.enter_context(globalstate.run_globals(debug=bool(values.get("debug"))))
        stack.enter_context(interrupts.handling())
        seeding.set_current_rank(self.rank)
        seeding.seed_all(self.started.seed)
        seeding.set_deterministic(bool(values.get("deterministic")))
        self.recorder = Recorder(
            run_dir,
            backends=list(values.get("recorder") or self.project.recorder),
            rank=self.rank,
            world_size=self.world_size,
            settings={"mlflow": {**self.project.mlflow, "root": self.project.root}},
        )
        stack.callback(self._close_recorder)
        if self.started.start_over:
            self.recorder.truncate(0)  # restarted before any checkpoint: begin again
        self.recorder.start_run(
            self.started.snapshot,
            experiment=self.info.id,
            tags=values.get("tag") or (),
            git_commit=rundir.read_run_json(run_dir).get("git_commit") if self.rank == 0 else None,
            # A restart that starts over is still the same run (one MLflow run, one session).
            resumed=self.started.resumed or self.started.start_over,
        )
        ctx = context_module.Context(
            params=Params(values),
            output_dir=run_dir,
            seed=self.started.seed,
            recorder=self.recorder,
            rank=self.rank,
            local_rank=self.local_rank,
            world_size=self.world_size,
            device=self.device,
            resume_from=_resume_from(values) if self.started.resumed else None,
            loop_limit=self.loop_limit,
        )
        context_module.set_current(ctx)
        stack.callback(context_module.set_current, None)
        if self.rank == 0:
            heartbeat = rundir.Heartbeat(run_dir, lambda: self.recorder.last_scalars)
            stack.callback(heartbeat.stop)
        return ctx

    def _call_main(self, ctx: context_module.Context) -> None:
        assert self.info.main is not None, f"{self.info.id} was not imported"
        if self.info.takes_context:
            self.outcome.value = self.info.main(ctx.params, ctx)
        else:
            self.outcome.value = self.info.main(ctx.params)
        ctx.check_seeds()

    # ------------------------------------------------------------ outcome

    def _classify(self, e: BaseException) -> None:
        """The status, exit code and error a way out of main stands for."""
        self.outcome.error = e
        if isinstance(e, context_module.LoopLimitReached):
            # Asked for (reproduce --steps): the run is complete as far as it was to go.
            self.outcome.error = None
            note = f"stopped after {e.iterations} iterations of the outermost context.loop"
            self.end = {
                "status": "completed",
                "note": note,
                "stopped_after": {"iterations": e.iterations, "global_step": e.global_step},
            }
            if self.rank == 0:
                log.info("%s (step limit)", note)
            return
        stopped = interrupts.exit_code(e)
        signum = interrupts.received()
        if stopped is None and signum is not None and not isinstance(e, SystemExit):
            # A stop request that surfaced as another error (a killed DataLoader worker).
            stopped, e = interrupts.EXIT_CODES[signum], interrupts.stop_exception(signum)
        if stopped is not None:
            self.outcome.exit_code = stopped
            self.end = {"status": "interrupted", "error": interrupts.describe(e)}
            return
        if isinstance(e, SystemExit):
            code = e.code
            if code is None or code == 0:
                self.outcome.error = None
                return
            self.outcome.exit_code = code if isinstance(code, int) else EXIT_FAILED
            reason = f"status {code}" if isinstance(code, int) else repr(code)
            self._failed(f"main exited with {reason}", None)
            if not isinstance(code, int):
                print(code, file=sys.stderr)
            return
        self.outcome.exit_code = EXIT_FAILED
        tb = traceback.format_exc()
        self._failed(f"{type(e).__name__}: {e}", tb)
        if isinstance(e, OSError) and e.errno in _DISK_FULL:
            # One line, not a traceback from deep inside a writer (run.json keeps it).
            print(f"error: {e.strerror} (run dir {self.started.run_dir})", file=sys.stderr)
            return
        sys.stderr.write(tb)
        if self.started.values.get("pdb") and isinstance(e, Exception):
            import pdb

            pdb.post_mortem(e.__traceback__)

    def _failed(self, error: str, tb: str | None) -> None:
        self.end = {"status": "failed", "error": error, "traceback": tb}
        if self.world_size > 1:
            self.end["failed_rank"] = self.rank

    # ------------------------------------------------------------ closing

    def _close_recorder(self) -> None:
        """The run's status to the backends, then everything written and closed.

        A recorder that cannot write (a full disk) fails the run, unless it failed anyway
        (run.json keeps the user's own error then).
        """
        recorder = self.recorder
        try:
            recorder.end_run(self.end["status"])
        except Exception as e:
            print(f"error: recording failed: {type(e).__name__}: {e}", file=sys.stderr)
            if self.end["status"] != "failed":
                self.outcome.exit_code, self.outcome.error = EXIT_FAILED, e
                self._failed(f"{type(e).__name__}: {e}", None)
            recorder.end_run("failed")
        finally:
            recorder.close()

    def _write_final_record(self) -> None:
        if self.rank != 0 and self.end["status"] == "completed":
            return
        metrics = self.recorder.last_scalars if self.recorder is not None else {}
        duration = round(time.time() - self.began, 3)
        try:
            rundir.finish_record(
                self.started.run_dir, {**self.end, "duration": duration, "metrics": metrics}
            )
        except OSError as e:
            print(f"error: cannot write run.json: {e.strerror or e}", file=sys.stderr)
            self.outcome.exit_code = self.outcome.exit_code or EXIT_FAILED

    def _stop_children(self) -> None:
        """Child processes main left running get SIGTERM, then SIGKILL; a warning names them.
        Threads it left running are named too (the CLI ends the process without them)."""
        children = _leftover_children()
        if children:
            names = ", ".join(f"{pid} ({cmd})" for pid, cmd in children.items())
            log.warning("main left child processes running, stopping them: %s", names)
            _terminate(list(children))
        threads = [
            t.name
            for t in threading.enumerate()
            if not t.daemon and t is not threading.main_thread() and t.is_alive()
        ]
        if threads:
            log.warning("main left threads running, not waiting for them: %s", ", ".join(threads))


def _resume_from(values: Mapping[str, Any]) -> Any:
    from pathlib import Path

    return Path(values["resume"]).resolve()


class _SigintIgnored:
    """Ignores SIGINT between start() and stop() (in the main thread only)."""

    def __init__(self) -> None:
        self._previous: Any = None

    def start(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, signal.SIG_IGN)

    def stop(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


@contextlib.contextmanager
def _fault_reports() -> Iterator[None]:
    """The interpreter's own report of a fatal error (segfault, abort) goes to fd 2, so
    into output.log and onto the terminal, with every thread's stack."""
    was_enabled = faulthandler.is_enabled()
    faulthandler.enable(file=2, all_threads=True)
    try:
        yield
    finally:
        if not was_enabled:
            faulthandler.disable()


def _leftover_children() -> dict[int, str]:
    """Direct children of this process that main started and left running (Linux /proc).

    Daemonic multiprocessing children (DataLoader workers) end with the interpreter, and
    multiprocessing's own helpers (resource tracker, forkserver) and the output capture's
    reader are left alone.
    """
    import multiprocessing

    me = os.getpid()
    mine = {p.pid for p in multiprocessing.active_children() if p.daemon and p.pid is not None}
    mine |= _multiprocessing_helpers()
    mine |= capture.helper_pids()
    found: dict[int, str] = {}
    for entry in _proc_pids():
        stat = _read(f"/proc/{entry}/stat")
        if not stat:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == me and entry not in mine:
            if fields[0] == "Z":  # a zombie is gone already; reap it
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(entry, os.WNOHANG)
                continue
            cmd = _read(f"/proc/{entry}/cmdline").replace("\0", " ").strip()
            found[entry] = cmd or stat[stat.find("(") + 1 : stat.rfind(")")]
    return found


def _multiprocessing_helpers() -> set[int]:
    pids: set[int] = set()
    for module, attr in (
        ("multiprocessing.resource_tracker", "_resource_tracker"),
        ("multiprocessing.forkserver", "_forkserver"),
    ):
        helper = getattr(sys.modules.get(module), attr, None)
        pid = getattr(helper, "_pid", None) or getattr(helper, "_forkserver_pid", None)
        if isinstance(pid, int):
            pids.add(pid)
    return pids


def _proc_pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _terminate(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + CHILD_GRACE_S
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                alive.discard(pid)
        if alive:
            time.sleep(0.02)
    for pid in alive:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
