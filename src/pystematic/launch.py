"""Launching ranks through torch's elastic agent: ``pystematic distributed``.

:func:`launch` starts the ranks through
``torch.distributed.launcher.api.elastic_launch`` -- the object ``torchrun`` builds --
with torchrun's defaults spelled out (``LaunchConfig``'s own defaults differ: etcd
rendezvous, 3 restarts). :func:`launch_distributed` is the command: it starts the run
(parameters checked, seed drawn, run dir made) before any process exists, then
launches the ranks, each of which runs :func:`rank_entry`.

torch is imported inside the functions that need it; importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .discovery import ExperimentInfo
from .errors import DistributedError
from .project import Project
from .start import StartedRun, output_dir, start_run

if TYPE_CHECKING:
    from .runner import RunOutcome

# Signals torch's agent replaces with its own handler (torchrun's --signals-to-handle default).
_AGENT_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")
_SIGNALS_ENV = "TORCHELASTIC_SIGNALS_TO_HANDLE"


def check_gpus(requested: int) -> None:
    """Fail with one clear line when this machine has fewer GPUs than ``--gpus`` asks for."""
    if requested < 1:
        raise DistributedError(f"--gpus {requested}: need at least 1 GPU per node")
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have < requested:
        plural = "" if requested == 1 else "s"
        hint = " (this torch build has no CUDA support)" if torch.version.cuda is None else ""
        raise DistributedError(
            f"--gpus {requested} asked for {requested} GPU{plural} but this machine has "
            f"{have}{hint}; use --nproc N for CPU ranks"
        )


@dataclass(frozen=True)
class LaunchSpec:
    """What ``pystematic distributed`` asks of torch's elastic launcher (per node)."""

    nproc_per_node: int
    use_gpus: bool
    run_id: str
    log_dir: Path
    nnodes: int = 1
    node_rank: int | None = None
    master_addr: str | None = None
    master_port: int | None = None
    rdzv_endpoint: str | None = None
    rdzv_id: str | None = None
    max_restarts: int = 0


class RankFailedError(DistributedError):
    """A rank of a launched group failed: the root-cause rank, its error and traceback.

    ``message`` is that rank's own error (``"ValueError: boom"``, ``"killed by SIGKILL"``);
    ``str()`` and ``format_message()`` give the one line the CLI prints,
    ``"rank 1 failed: ValueError: boom"``.
    """

    exit_code = 1

    def __init__(
        self,
        rank: int,
        exitcode: int,
        message: str,
        traceback: str = "",
        local_rank: int | None = None,
        error_file: str | None = None,
    ) -> None:
        super().__init__(f"rank {rank} failed: {message}")
        self.message = message
        self.error_message = message  # alias of ``message``, kept for callers that use it
        self.rank = rank
        self.exitcode = exitcode
        self.traceback = traceback
        self.local_rank = local_rank
        self.error_file = error_file

    def format_message(self) -> str:
        return f"rank {self.rank} failed: {self.message}"


class LaunchInterrupted(DistributedError):
    """The launcher got a signal whose restored handler returned instead of stopping it."""

    def __init__(self, signum: int) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"launch stopped by {name}", exit_code=128 + signum)
        self.signum = signum


def check_spec(spec: LaunchSpec) -> None:
    """Raise DistributedError for launch options that cannot work (before anything is made)."""
    _rendezvous(spec)


def _rendezvous(spec: LaunchSpec) -> tuple[str, str, dict[str, Any], str]:
    """Validated (rdzv_backend, rdzv_endpoint, rdzv_configs, run_id) for these options."""
    if spec.nproc_per_node < 1:
        raise DistributedError(f"need at least 1 process per node, got {spec.nproc_per_node}")
    if spec.nnodes < 1:
        raise DistributedError(f"--nnodes {spec.nnodes}: need at least 1 node")
    if spec.max_restarts < 0:
        raise DistributedError(f"--max-restarts {spec.max_restarts} must be 0 or more")
    static = (
        spec.node_rank is not None or spec.master_addr is not None or spec.master_port is not None
    )
    rdzv_configs: dict[str, Any] = {}
    run_id = spec.run_id
    if static and spec.rdzv_endpoint is not None:
        raise DistributedError(
            "use either --rdzv-endpoint/--rdzv-id or --node-rank/--master-addr/--master-port"
        )
    if static:
        node_rank = 0 if spec.node_rank is None else spec.node_rank
        if spec.nnodes > 1 and (spec.node_rank is None or spec.master_addr is None):
            raise DistributedError(
                f"--nnodes {spec.nnodes} with a fixed master needs --node-rank and --master-addr"
            )
        if not 0 <= node_rank < spec.nnodes:
            raise DistributedError(f"--node-rank {node_rank} outside 0..{spec.nnodes - 1}")
        port = 29500 if spec.master_port is None else spec.master_port
        if not 0 < port < 65536:
            raise DistributedError(f"--master-port {port} outside 1..65535")
        backend = "static"
        endpoint = f"{spec.master_addr or '127.0.0.1'}:{port}"
        rdzv_configs["rank"] = node_rank
    elif spec.rdzv_endpoint is not None:
        if spec.nnodes > 1 and not spec.rdzv_id:
            raise DistributedError(
                f"--rdzv-endpoint with --nnodes {spec.nnodes} needs --rdzv-id "
                "(the same on every node)"
            )
        backend = "c10d"
        endpoint = spec.rdzv_endpoint
        run_id = spec.rdzv_id or spec.run_id
    elif spec.nnodes > 1:
        raise DistributedError(
            f"--nnodes {spec.nnodes} needs --rdzv-endpoint HOST:PORT --rdzv-id ID, or "
            "--node-rank/--master-addr/--master-port"
        )
    else:
        backend, endpoint = "c10d", "localhost:0"  # single node: a free port, like --standalone
    return backend, endpoint, rdzv_configs, run_id


def _launch_config(spec: LaunchSpec) -> Any:
    """The LaunchConfig torchrun would build for these options (validated)."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.launcher.api import LaunchConfig

    backend, endpoint, rdzv_configs, run_id = _rendezvous(spec)
    return LaunchConfig(
        min_nodes=spec.nnodes,
        max_nodes=spec.nnodes,
        nproc_per_node=spec.nproc_per_node,
        run_id=run_id,
        rdzv_backend=backend,
        rdzv_endpoint=endpoint,
        rdzv_configs=rdzv_configs,
        max_restarts=spec.max_restarts,
        monitor_interval=0.1,
        start_method="spawn",
        # No redirection: ranks write straight to the launcher's stdout/stderr (live, and a
        # TTY stays a TTY); per-rank output.log files are the runner's job. The agent still
        # writes each rank's error.json under log_dir.
        logs_specs=DefaultLogsSpecs(log_dir=str(spec.log_dir), redirects=Std.NONE, tee=Std.NONE),
    )


@contextlib.contextmanager
def _preserved_process_state(nproc_per_node: int) -> Iterator[None]:
    """Undo what the elastic agent leaves behind: signal handlers and its env variable.

    Also sets ``OMP_NUM_THREADS=1`` for the ranks when unset, as torchrun does.
    """
    import threading

    in_main = threading.current_thread() is threading.main_thread()
    saved_handlers = {}
    if in_main:
        for name in _AGENT_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                saved_handlers[sig] = signal.getsignal(sig)
    saved_env = {k: os.environ.get(k) for k in (_SIGNALS_ENV, "OMP_NUM_THREADS")}
    if saved_env["OMP_NUM_THREADS"] is None and nproc_per_node > 1:
        os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        for sig, handler in saved_handlers.items():
            if handler is not None:  # None: installed outside Python, cannot be put back
                signal.signal(sig, handler)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _DropFailureReport:
    """Logging filter for the agent's own "failed (exitcode: ...)" report.

    That report names the first rank the agent saw exit -- often a rank that died of a
    peer's failure -- with a multiprocessing traceback; RankFailedError carries the right
    rank and its own traceback instead.
    """

    def filter(self, record: Any) -> bool:
        return not str(record.msg).startswith("failed (exitcode")


@contextlib.contextmanager
def _quiet_failure_report() -> Iterator[None]:
    import logging

    logger = logging.getLogger("torch.distributed.elastic.multiprocessing.api")
    flt = _DropFailureReport()
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)


def launch(
    spec: LaunchSpec, entrypoint: Callable[..., Any], args: tuple[Any, ...]
) -> dict[int, Any]:
    """Run ``entrypoint(*args)`` on every local rank through torch's elastic agent.

    ``entrypoint`` must be a module-level function (ranks are started with ``spawn``, which
    pickles it by name; they get the launcher's ``sys.path``). Returns global rank -> return
    value for this node's ranks. A failing rank raises :class:`RankFailedError`; SIGINT or
    SIGTERM to the launcher stops the ranks (the agent forwards the signal) and is
    then raised as KeyboardInterrupt (SIGINT) or :class:`LaunchInterrupted` (any other).
    A second signal while the agent stops the ranks ends them with SIGKILL.
    """
    import torch.distributed
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousError
    from torch.distributed.launcher.api import elastic_launch

    if spec.use_gpus:
        check_gpus(spec.nproc_per_node)
    config = _launch_config(spec)
    network_error: type[Exception] = getattr(torch.distributed, "DistNetworkError", OSError)
    received: int | None = None
    children_before = set(_children())
    with _preserved_process_state(spec.nproc_per_node), _quiet_failure_report():
        try:
            result = elastic_launch(config, entrypoint)(*args)
        except ChildFailedError as exc:
            run_log_dirs = spec.log_dir / f"{glob.escape(config.run_id)}_*"
            raise _rank_failed(exc, run_log_dirs) from None
        except (network_error, RendezvousError) as exc:
            # The launcher's own rendezvous: a port in use, a master that never answers.
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DistributedError(
                f"rendezvous at {config.rdzv_endpoint} failed: {first_line}"
            ) from None
        except SignalException as exc:
            received = int(exc.sigval)
        finally:
            # A second signal cuts the agent's shutdown short (it waits up to 30 s for the
            # ranks it signalled): the ranks it left must not outlive the launcher.
            _kill_leftover_ranks(children_before)
    if received is not None:
        # Said as an exception, never by raising the signal again: the caller records the
        # run as interrupted and exits 128 + signal (a caller's SIGTERM handler may or may
        # not be installed; torch's was in place while the ranks ran).
        if received == signal.SIGINT:
            raise KeyboardInterrupt
        raise LaunchInterrupted(received)
    return dict(result)


def _children() -> list[int]:
    """This process's running child processes (Linux /proc; elsewhere none are found).

    Zombies are left alone: whoever started them reaps them (``subprocess`` would report a
    wrong exit status for a child reaped here).
    """
    from .runner import _proc_pids, _read

    me, found = os.getpid(), []
    for pid in _proc_pids():
        stat = _read(f"/proc/{pid}/stat")
        fields = stat[stat.rfind(")") + 2 :].split()  # comm may hold spaces and parentheses
        if len(fields) > 1 and fields[1] == str(me) and fields[0] != "Z":
            found.append(pid)
    return found


def _kill_leftover_ranks(before: set[int]) -> None:
    """SIGKILL the child processes the launch started and the agent left running
    (normally none: only after a second signal cut its shutdown short), and wait until
    they are gone (their ``multiprocessing`` objects reap them). ``multiprocessing``'s
    own helpers (the resource tracker spawning starts) are left alone."""
    import time

    from .runner import _multiprocessing_helpers

    pids = set(_children()) - before - _multiprocessing_helpers()
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while pids and time.monotonic() < deadline:
        pids &= set(_children())
        if pids:
            time.sleep(0.01)


def _rank_failed(exc: Any, run_log_dirs: Path) -> RankFailedError:
    """Turn torch's ChildFailedError into a RankFailedError about the root-cause rank.

    torch reports the first rank whose exit its monitor noticed; when a peer dies of that
    failure within the same 0.1 s poll, torch may name the peer (measured: 1 in 6 launches
    named rank 0's "Connection closed by peer" for rank 1's ValueError). A rank that dies of
    a peer's failure writes its error file later (about 0.25 s here), so among the error
    files this node's ranks wrote in that attempt the oldest names the rank that failed
    first. Other nodes' files are out of reach: on several nodes each launcher reports the
    first failure among its own ranks. ``run_log_dirs`` is the glob (``<log_dir>/<run_id>_*``)
    of this launch's log folders, for when torch's pick left no error file.
    """
    rank, failure = exc.get_first_failure()
    base = rank - failure.local_rank  # global rank of this node's local rank 0
    has_file = os.path.isfile(failure.error_file)
    best: tuple[int, int, str] | None = None  # (mtime_ns, local_rank, path)
    # A rank that exited without an error file (sys.exit, OOM kill, segfault) and was seen
    # first is the root cause, and its peers' errors came after -- except SIGABRT, which is
    # how ranks die of a peer's failure inside C++ (gloo teardown, NCCL's watchdog).
    if has_file or failure.exitcode == -signal.SIGABRT:
        for path in _attempt_dir_files(failure.error_file if has_file else None, run_log_dirs):
            stamp = (path.stat().st_mtime_ns, int(path.parent.name), str(path))
            best = stamp if best is None or stamp < best else best
    exitcode = failure.exitcode
    data: Any = failure.message
    error_file = failure.error_file if has_file else None
    local_rank = failure.local_rank
    if best is not None and best[1] != failure.local_rank:
        local_rank, error_file = best[1], best[2]
        rank = base + local_rank
        data = _read_error_file(best[2])
        # An uncaught exception ends a spawned rank with exit code 1; sys.exit(n) says n.
        exitcode = _recorded_exit_code(data, default=1)
    message, traceback = _describe(data, exitcode)
    return RankFailedError(
        rank=rank,
        exitcode=exitcode,
        message=message,
        traceback=traceback,
        local_rank=local_rank,
        error_file=error_file,
    )


def _attempt_dir_files(known_file: str | None, run_log_dirs: Path) -> list[Path]:
    """The ``<local_rank>/error.json`` files of the failed attempt."""
    if known_file is not None:
        attempt_dir = Path(known_file).parent.parent
    else:  # the newest attempt folder of this launch
        attempts = list(run_log_dirs.parent.glob(f"{run_log_dirs.name}/attempt_*"))
        if not attempts:
            return []
        attempt_dir = max(attempts, key=lambda p: p.stat().st_mtime_ns)
    return [p for p in attempt_dir.glob("*/error.json") if p.parent.name.isdigit()]


def _recorded_exit_code(data: Any, default: int) -> int:
    """The exit status a rank wrote into its error file (``errorCode``), else ``default``."""
    code = data.get("errorCode") if isinstance(data, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) and code else default


def _read_error_file(path: str) -> Any:
    import json

    try:
        with open(path) as fh:
            return json.load(fh).get("message", "")
    except (OSError, ValueError, AttributeError):
        return ""


def _describe(data: Any, exitcode: int) -> tuple[str, str]:
    """(one-line message, traceback text) from an error-file message or torch's summary."""
    if isinstance(data, dict):
        message = str(data.get("message", "")).strip()
        traceback = str(data.get("extraInfo", {}).get("py_callstack", ""))
        return message or f"exited with code {exitcode}", traceback
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"killed by {name}", ""
    return f"exited with code {exitcode}", ""


# --------------------------------------------------------------------------- the command


@dataclass
class RankJob:
    """What a launched rank needs to run its part (picklable: spawn start method)."""

    experiment_id: str
    project_root: str
    file: str  # the experiment's source file: the only module a rank imports
    values: dict[str, Any]
    snapshot: dict[str, Any]
    argv: list[str]
    started: StartedRun | None  # None on several nodes: rank 0 starts the run
    backend: str
    timeout: float | None = None  # --timeout: seconds a collective may wait for its peers


def rank_entry(job: RankJob) -> None:
    """Entry point of each rank launched by ``pystematic distributed`` (module level: picklable)."""
    import multiprocessing

    from .discovery import import_project
    from .distributed import TIMEOUT_ENV, record_rank_failure
    from .project import load_project
    from .runner import EXIT_SIGINT, EXIT_SIGTERM, run_experiment

    # A spawned rank inherits "spawn" as its default start method; give it the platform's
    # default back, so DataLoader workers start as under torchrun or `pystematic run` (fork on
    # Linux: no re-import of torch per worker and epoch, and no picklable-dataset requirement).
    multiprocessing.set_start_method(None, force=True)
    if job.timeout is not None:
        os.environ[TIMEOUT_ENV] = repr(job.timeout)  # what init_process_group reads
    project = load_project(explicit_root=Path(job.project_root))
    found = import_project(project, [Path(job.file)])
    info = found.experiments.get(job.experiment_id)
    if info is None or info.main is None:
        raise DistributedError(f"rank could not import experiment {job.experiment_id!r}")
    outcome = run_experiment(
        info,
        project,
        job.values,
        job.snapshot,
        job.argv,
        started=job.started,
        backend=job.backend,
        ends_process=True,
    )
    if outcome.exit_code in (EXIT_SIGINT, EXIT_SIGTERM):
        # Stopped, not failed: exit quietly (the launcher stops all ranks when one fails).
        raise SystemExit(outcome.exit_code)
    if outcome.error is not None and not isinstance(outcome.error, SystemExit):
        raise outcome.error  # torch's ``record`` writes the error file
    if outcome.exit_code:
        # sys.exit(n) in main (or a failed final record): no exception for ``record`` to
        # write down, so say it ourselves, or the launcher blames the peer that dies next.
        record_rank_failure(_failure_message(outcome), outcome.exit_code)
        raise SystemExit(outcome.exit_code)


def _failure_message(outcome: RunOutcome) -> str:
    """A rank's failure without an exception, in the words of its run.json ``error``."""
    if isinstance(outcome.error, SystemExit):
        code = outcome.error.code
        return f"main exited with {f'status {code}' if isinstance(code, int) else repr(code)}"
    return f"exited with code {outcome.exit_code}"


def launch_distributed(
    info: ExperimentInfo,
    project: Project,
    values: Mapping[str, Any],
    snapshot: Mapping[str, Any],
    argv: list[str],
    options: Mapping[str, Any],
) -> int:
    """``pystematic distributed``: start the run here (on one node), then launch the ranks.

    Bad launch options fail before the run dir exists; anything that fails after it
    exists (a busy port, a rendezvous timeout, a failing rank) leaves run.json
    ``failed`` with the error, never ``running``.
    """
    from . import rundir
    from .distributed import parse_timeout
    from .runner import EXIT_FAILED, EXIT_OK

    gpus, nproc = options.get("gpus"), options.get("nproc")
    if (gpus is None) == (nproc is None):
        raise DistributedError("give exactly one of --gpus N or --nproc N")
    use_gpus = gpus is not None
    per_node = int(gpus if use_gpus else nproc)  # type: ignore[arg-type]
    if use_gpus:
        check_gpus(per_node)
    nnodes = int(options.get("nnodes") or 1)
    backend = "nccl" if use_gpus else "gloo"
    rdzv_id = options.get("rdzv_id")
    if nnodes > 1:
        rdzv_id = rdzv_id or "pystematic"  # several nodes share one id, the same on each
    spec = LaunchSpec(
        nproc_per_node=per_node,
        use_gpus=use_gpus,
        run_id="pending",  # run_id and log_dir are set once the run dir exists
        log_dir=Path("."),
        nnodes=nnodes,
        node_rank=options.get("node_rank"),
        master_addr=options.get("master_addr"),
        master_port=options.get("master_port"),
        rdzv_endpoint=options.get("rdzv_endpoint"),
        rdzv_id=rdzv_id,
        max_restarts=int(options.get("max_restarts") or 0),
    )
    check_spec(spec)  # bad launch options must not leave a run dir behind
    timeout = options.get("timeout")
    if timeout is not None:
        timeout = parse_timeout(timeout, "--timeout").total_seconds()
    started: StartedRun | None = None
    if nnodes == 1:
        # One node: everything is decided before any process starts.
        started = start_run(
            info, project, values, snapshot, argv, world_size=per_node, backend=backend
        )
        print(f"run dir: {started.run_dir}", file=sys.stderr, flush=True)
        if started.restart_note:  # a requeued SLURM job: the run goes on
            print(started.restart_note, file=sys.stderr, flush=True)
        spec = replace(
            spec,
            run_id=str(rdzv_id or started.run_dir.name),
            log_dir=started.run_dir / "torchelastic",
        )
    else:
        # Several nodes: rank 0 makes the run dir and draws the seed, as under torchrun.
        spec = replace(
            spec,
            run_id=str(rdzv_id),
            log_dir=output_dir(values, project) / info.id / ".torchelastic" / str(rdzv_id),
        )
    job = RankJob(
        experiment_id=info.id,
        project_root=str(project.root),
        file=info.file,
        values=dict(started.values if started else values),
        snapshot=dict(started.snapshot if started else snapshot),
        argv=argv,
        started=started,
        backend=backend,
        timeout=timeout,
    )

    def finish(fields: dict[str, Any]) -> None:
        if started is not None:
            # The launcher's finding (the error files) outranks what the ranks recorded.
            rundir.finish_record(started.run_dir, fields, overrule=True)

    try:
        launch(spec, rank_entry, (job,))
    except RankFailedError as e:
        finish(
            {
                "status": "failed",
                "failed_rank": e.rank,
                "error": e.error_message,
                "traceback": e.traceback or None,  # as a single run records it
            }
        )
        print(f"error: rank {e.rank} failed: {e.error_message}", file=sys.stderr)
        if e.traceback:
            print(e.traceback.rstrip(), file=sys.stderr)
        return EXIT_FAILED
    except BaseException as e:
        stopped = _stop_exit_code(e)
        if stopped is not None:
            # Ctrl-C or a scheduler's SIGTERM: the ranks are gone, the run is interrupted.
            finish({"status": "interrupted", "error": _stop_error(e)})
            return stopped
        # The launch itself failed (a busy port, a rendezvous timeout): the run never ran.
        message = (
            e.format_message() if isinstance(e, DistributedError) else f"{type(e).__name__}: {e}"
        )
        finish({"status": "failed", "error": message})
        raise
    return EXIT_OK


def _terminated_types() -> tuple[type[BaseException], ...]:
    """The ``Terminated`` exception(s) a SIGTERM handler of pystematic raises."""
    import importlib

    found: list[type[BaseException]] = []
    for module in ("pystematic.interrupts", "pystematic.runner"):
        try:
            cls = getattr(importlib.import_module(module), "Terminated", None)
        except ImportError:
            continue
        if isinstance(cls, type) and issubclass(cls, BaseException) and cls not in found:
            found.append(cls)
    return tuple(found)


def _stop_exit_code(error: BaseException) -> int | None:
    """128 + signal for the ways a stop signal surfaces in the launcher, None otherwise."""
    if isinstance(error, KeyboardInterrupt):
        return 128 + signal.SIGINT
    if isinstance(error, LaunchInterrupted):
        return 128 + error.signum
    if isinstance(error, _terminated_types()):
        return 128 + signal.SIGTERM
    signum = _signal_exception_value(error)
    return None if signum is None else 128 + signum


def _signal_exception_value(error: BaseException) -> int | None:
    """The signal of torch's SignalException (raised by the agent's handlers), else None."""
    api = sys.modules.get("torch.distributed.elastic.multiprocessing.api")
    cls = getattr(api, "SignalException", None)
    if isinstance(cls, type) and isinstance(error, cls):
        return int(getattr(error, "sigval", signal.SIGTERM))
    return None


def _stop_error(error: BaseException) -> str:
    """run.json's ``error`` for a launch stopped by a signal (as a single run says it)."""
    signum = (
        error.signum
        if isinstance(error, LaunchInterrupted)
        else _signal_exception_value(error) or signal.SIGTERM
    )
    if isinstance(error, KeyboardInterrupt) or signum == signal.SIGINT:
        return "KeyboardInterrupt"
    return signal.Signals(signum).name
