"""Process groups: recognising an existing launch, and launching ranks with torch's elastic agent.

Two ways a run becomes distributed (DESIGN.md section 8):

* ``pystematic distributed`` calls :func:`launch`, which starts the ranks through
  ``torch.distributed.launcher.api.elastic_launch`` -- the object ``torchrun`` builds --
  with torchrun's defaults spelled out (``LaunchConfig``'s own defaults differ: etcd
  rendezvous, 3 restarts).
* A process started by ``torchrun`` or inside a SLURM ``srun`` step finds its place with
  :func:`detect_environment` and joins with :func:`init_process_group`.

SLURM rule: a process is a SLURM rank only inside an ``srun`` step with more than one task.
slurmstepd exports ``SLURM_STEP_ID`` only for real steps (a non-negative step id); the batch
script itself (step "batch", id 0xfffffffb / 0xfffffffe in older releases), the "extern" step
and the interactive step of ``salloc`` carry ``SLURM_PROCID=0`` and ``SLURM_NTASKS`` of the
allocation but no ``SLURM_STEP_ID`` (or one of those reserved ids). Without that rule a batch
script of a 4-task job would wait forever for three ranks nobody starts.

torch is imported inside the functions that need it; importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import signal
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

from pystematic.errors import DistributedError

__all__ = [
    "DistEnv",
    "LaunchInterrupted",
    "LaunchSpec",
    "RankFailedError",
    "check_gpus",
    "check_spec",
    "cuda_device_index",
    "detect_environment",
    "expand_hostlist",
    "export_environment",
    "init_process_group",
    "launch",
    "select_backend",
    "slurm_master_port",
]

# Signals torch's agent replaces with its own handler (torchrun's --signals-to-handle default).
_AGENT_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")
_SIGNALS_ENV = "TORCHELASTIC_SIGNALS_TO_HANDLE"
# Step ids at or above this are Slurm's reserved pseudo-steps (batch, extern, interactive, ...).
_SLURM_RESERVED_STEP_ID = 0xFFFFFFF0
# The step's own nodes first: a step may run on part of the job's allocation.
_SLURM_NODELIST_VARS = ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")


@dataclass(frozen=True)
class DistEnv:
    """How this process sits in a process group."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    master_addr: str
    master_port: int
    source: str  # "torchelastic" | "slurm" | "env"


# --------------------------------------------------------------------------- detection


def detect_environment(environ: Mapping[str, str] | None = None) -> DistEnv | None:
    """The process group this process was started into, or None when it was not launched.

    Order: torchrun / torchelastic (``TORCHELASTIC_RUN_ID``), plain ``RANK`` + ``WORLD_SIZE``
    (any env:// launcher), then a SLURM ``srun`` step with more than one task.
    """
    env = os.environ if environ is None else environ
    if "TORCHELASTIC_RUN_ID" in env or ("RANK" in env and "WORLD_SIZE" in env):
        return _from_torch_env(env)
    return _from_slurm(env)


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        if default is None:
            raise DistributedError(f"{name} is not set, but the launcher's other variables are")
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"{name}={raw!r} is not an integer") from None


def _from_torch_env(env: Mapping[str, str]) -> DistEnv:
    source = "torchelastic" if "TORCHELASTIC_RUN_ID" in env else "env"
    rank = _int(env, "RANK")
    world_size = _int(env, "WORLD_SIZE")
    # Launchers that set only RANK/WORLD_SIZE are taken to be single node.
    local_rank = _int(env, "LOCAL_RANK", rank)
    local_world_size = _int(env, "LOCAL_WORLD_SIZE", world_size)
    node_default = rank // local_world_size if local_world_size > 0 else 0
    node_rank = _int(env, "GROUP_RANK", _int(env, "NODE_RANK", node_default))
    return _checked(
        DistEnv(
            rank=rank,
            local_rank=local_rank,
            world_size=world_size,
            local_world_size=local_world_size,
            node_rank=node_rank,
            master_addr=env.get("MASTER_ADDR") or "127.0.0.1",
            master_port=_int(env, "MASTER_PORT", 29500),
            source=source,
        )
    )


def _slurm_step_id(env: Mapping[str, str]) -> int | None:
    """The srun step id, or None outside an srun step (batch script, salloc shell)."""
    raw = env.get("SLURM_STEP_ID", env.get("SLURM_STEPID"))
    if raw is None:
        return None
    try:
        step = int(raw)
    except ValueError:  # "batch", "extern", "interactive" as some tools print them
        return None
    if step < 0 or step >= _SLURM_RESERVED_STEP_ID:
        return None
    return step


def _from_slurm(env: Mapping[str, str]) -> DistEnv | None:
    if "SLURM_PROCID" not in env:
        return None
    step = _slurm_step_id(env)
    if step is None:
        return None
    ntasks_var = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
    world_size = _int(env, ntasks_var, 1)
    if world_size <= 1:
        return None  # a one-task step is an ordinary, non-distributed run
    rank = _int(env, "SLURM_PROCID")
    local_rank = _int(env, "SLURM_LOCALID")
    node_rank = _int(env, "SLURM_NODEID")
    nodelist = next((env[k] for k in _SLURM_NODELIST_VARS if k in env), "")
    try:
        hosts = expand_hostlist(nodelist)
    except ValueError as exc:
        raise DistributedError(str(exc)) from None
    nnodes = _int(env, "SLURM_STEP_NUM_NODES", _int(env, "SLURM_NNODES", len(hosts) or 1))
    local_world_size = _slurm_local_world_size(env, node_rank, world_size, nnodes)
    master_addr = env.get("MASTER_ADDR") or (hosts[0] if hosts else "")
    if not master_addr:
        raise DistributedError("inside an srun step but SLURM_JOB_NODELIST is empty")
    job_id = _int(env, "SLURM_JOB_ID", _int(env, "SLURM_JOBID", 0))
    master_port = _int(env, "MASTER_PORT", slurm_master_port(job_id, step))
    return _checked(
        DistEnv(
            rank=rank,
            local_rank=local_rank,
            world_size=world_size,
            local_world_size=local_world_size,
            node_rank=node_rank,
            master_addr=master_addr,
            master_port=master_port,
            source="slurm",
        )
    )


def _slurm_local_world_size(
    env: Mapping[str, str], node_rank: int, world_size: int, nnodes: int
) -> int:
    for name in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        if name in env:
            counts = _expand_counts(env[name], name)
            if 0 <= node_rank < len(counts):
                return counts[node_rank]
    if "SLURM_NTASKS_PER_NODE" in env:
        return _int(env, "SLURM_NTASKS_PER_NODE")
    return max(1, world_size // max(1, nnodes))


def _expand_counts(value: str, name: str) -> list[int]:
    """Slurm's compressed per-node counts: ``"2(x3),1"`` -> ``[2, 2, 2, 1]``."""
    counts: list[int] = []
    for part in value.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if m is None:
            raise DistributedError(f"{name}={value!r} is not a Slurm per-node count list")
        counts.extend([int(m.group(1))] * int(m.group(2) or 1))
    return counts


def slurm_master_port(job_id: int, step_id: int = 0) -> int:
    """The rendezvous port every task of one srun step derives alike.

    ``15000 + (job_id + 1009 * step_id) % 10000``: Lightning's port for step 0 (15000 + last
    four digits of the job id), below Linux's ephemeral range (32768+), and different for two
    steps of one job that run side by side.
    """
    return 15000 + (job_id + 1009 * step_id) % 10000


def _checked(env: DistEnv) -> DistEnv:
    problems = []
    if env.world_size < 1:
        problems.append(f"world size {env.world_size} < 1")
    if not 0 <= env.rank < env.world_size:
        problems.append(f"rank {env.rank} outside 0..{env.world_size - 1}")
    if not 0 <= env.local_rank < max(env.local_world_size, 1):
        problems.append(f"local rank {env.local_rank} outside 0..{env.local_world_size - 1}")
    if not 0 < env.master_port < 65536:
        problems.append(f"master port {env.master_port} outside 1..65535")
    if problems:
        raise DistributedError(f"inconsistent {env.source} environment: " + "; ".join(problems))
    return env


_HOST_ITEM = re.compile(r"[^,\[]*(?:\[[^\]]*\][^,\[]*)*")


def expand_hostlist(nodelist: str) -> list[str]:
    """Expand a Slurm host list: ``"gpu[07-08,10],cpu1"`` -> gpu07 gpu08 gpu10 cpu1.

    Zero padding of a range is kept (``n[09-11]`` -> n09 n10 n11), several bracket groups in
    one name give their product (``r[1-2]n[1-2]`` -> r1n1 r1n2 r2n1 r2n2). Raises ValueError
    on malformed input.
    """
    hosts: list[str] = []
    text = nodelist.strip()
    pos = 0
    while pos < len(text):
        m = _HOST_ITEM.match(text, pos)
        item = m.group(0) if m else ""
        end = pos + len(item)
        if end < len(text) and text[end] != ",":
            raise ValueError(f"malformed host list {nodelist!r}")
        if item.strip():
            hosts.extend(_expand_host(item.strip(), nodelist))
        pos = end + 1
    return hosts


def _expand_host(item: str, whole: str) -> list[str]:
    parts = re.split(r"\[([^\]]*)\]", item)  # literal, group, literal, group, ..., literal
    choices: list[list[str]] = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            if "[" in part or "]" in part:
                raise ValueError(f"malformed host list {whole!r}")
            choices.append([part])
        else:
            choices.append(_expand_range_group(part, whole))
    return ["".join(combo) for combo in product(*choices)]


def _expand_range_group(group: str, whole: str) -> list[str]:
    values: list[str] = []
    for piece in group.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:-(\d+))?\s*", piece)
        if m is None:
            raise ValueError(f"malformed range [{group}] in host list {whole!r}")
        lo_text, hi_text = m.group(1), m.group(2)
        if hi_text is None:
            values.append(lo_text)
            continue
        lo, hi = int(lo_text), int(hi_text)
        if hi < lo:
            raise ValueError(f"descending range [{group}] in host list {whole!r}")
        width = len(lo_text)
        values.extend(str(n).zfill(width) for n in range(lo, hi + 1))
    return values


# --------------------------------------------------------------------------- joining a group


def export_environment(env: DistEnv) -> None:
    """Set the variables env:// initialisation reads (RANK, WORLD_SIZE, MASTER_*, ...)."""
    os.environ.update(
        {
            "RANK": str(env.rank),
            "LOCAL_RANK": str(env.local_rank),
            "WORLD_SIZE": str(env.world_size),
            "LOCAL_WORLD_SIZE": str(env.local_world_size),
            "GROUP_RANK": str(env.node_rank),
            "MASTER_ADDR": env.master_addr,
            "MASTER_PORT": str(env.master_port),
        }
    )


def select_backend(gpus: bool) -> str:
    """nccl for one GPU per rank, gloo for CPU ranks."""
    return "nccl" if gpus else "gloo"


def cuda_device_index(local_rank: int) -> int:
    """The CUDA device a rank uses: its local rank, or 0 when it sees a single GPU.

    A single visible GPU means the scheduler already gave each task its own
    (``CUDA_VISIBLE_DEVICES`` per task, e.g. ``srun --gpus-per-task=1``).
    """
    import torch

    count = torch.cuda.device_count()
    if count == 1:
        return 0
    if local_rank < count:
        return local_rank
    raise DistributedError(
        f"local rank {local_rank} has no GPU of its own: this process sees {count} GPU(s)"
    )


def init_process_group(env: DistEnv, backend: str) -> None:
    """Join the process group described by ``env`` (env:// rendezvous).

    Under torchrun the agent's store is reused (env:// reads TORCHELASTIC_USE_AGENT_STORE),
    so this never opens a second store on MASTER_PORT. For nccl the rank's CUDA device is
    made current first.
    """
    import torch
    import torch.distributed as dist

    if env.source != "torchelastic":
        export_environment(env)
    if backend == "nccl":
        torch.cuda.set_device(cuda_device_index(env.local_rank))
    dist.init_process_group(
        backend=backend, init_method="env://", rank=env.rank, world_size=env.world_size
    )


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


# --------------------------------------------------------------------------- launching


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
    SIGTERM to the launcher stops the ranks (the agent forwards the signal) and is then
    re-delivered to the caller's own handler, so Ctrl-C still ends in KeyboardInterrupt.
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
    if received is not None:
        # The caller's handlers are back: let the signal mean what it means to the caller
        # (KeyboardInterrupt for SIGINT, death by SIGTERM unless the caller handles it).
        signal.raise_signal(received)
        if received == signal.SIGINT:
            raise KeyboardInterrupt
        raise LaunchInterrupted(received)
    return dict(result)


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
        exitcode = 1  # it raised: an uncaught exception ends a spawned rank with exit code 1
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
