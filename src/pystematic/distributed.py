"""Process groups that already exist: recognising a launch and joining it.

A process started by ``torchrun``, by ``pystematic distributed`` (see ``launch.py``)
or inside a SLURM ``srun`` step finds its place with :func:`detect_environment` and
joins with :func:`init_process_group`.

SLURM rule: a process is a SLURM rank only inside an ``srun`` step with more than one task.
slurmstepd exports ``SLURM_STEP_ID`` only for real steps (a non-negative step id); the batch
script itself (step "batch", id 0xfffffffb / 0xfffffffe in older releases), the "extern" step
and the interactive step of ``salloc`` carry ``SLURM_PROCID=0`` and ``SLURM_NTASKS`` of the
allocation but no ``SLURM_STEP_ID`` (or one of those reserved ids). Without that rule a batch
script of a 4-task job would wait forever for three ranks nobody starts.

torch is imported inside the functions that need it; importing this module is cheap.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from itertools import product
from pathlib import Path
from typing import Any

from pystematic.errors import DistributedError

__all__ = [
    "DistEnv",
    "collective_timeout",
    "cuda_device_index",
    "detect_environment",
    "expand_hostlist",
    "export_environment",
    "init_process_group",
    "parse_timeout",
    "record_rank_failure",
    "remember_run_dir",
    "remembered_run_dir",
    "select_backend",
    "slurm_job_id",
    "slurm_master_port",
    "slurm_restart_count",
    "torchelastic_restart_count",
]

#: Seconds a collective may wait for its peers before it fails (``--timeout`` of
#: ``pystematic distributed``; set it yourself under torchrun or srun).
TIMEOUT_ENV = "PYSTEMATIC_TIMEOUT"

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


def parse_timeout(value: float | str, source: str) -> timedelta:
    """A collective timeout in seconds (a positive, finite number), from ``source``
    (an option such as ``--timeout``, or an environment variable)."""
    given = f"{source} {value}" if source.startswith("-") else f"{source}={value!r}"
    try:
        seconds = float(value)
    except ValueError:
        raise DistributedError(f"{given} is not a number of seconds") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise DistributedError(f"{given} must be a positive number of seconds")
    return timedelta(seconds=seconds)


def collective_timeout(environ: Mapping[str, str] | None = None) -> timedelta | None:
    """The collective timeout ``PYSTEMATIC_TIMEOUT`` asks for; None: torch's default."""
    env = os.environ if environ is None else environ
    raw = env.get(TIMEOUT_ENV, "").strip()
    return parse_timeout(raw, TIMEOUT_ENV) if raw else None


def init_process_group(env: DistEnv, backend: str, timeout: timedelta | None = None) -> Any:
    """Join the process group described by ``env``; returns the launcher's store, if any.

    ``timeout`` bounds how long a collective waits for its peers (None:
    ``PYSTEMATIC_TIMEOUT``, else torch's default: 30 minutes for gloo, 10 for nccl); a
    collective that waits longer raises, so a hung or vanished peer fails the group.

    Under torch's elastic agent the group is built on the agent's own store, which lives
    as long as the agent, across restarts of the ranks -- with the keys of earlier
    attempts still in it, so a restarted group would try to connect to the previous
    attempt's (dead) peers and hang. The group therefore gets a key space of its own per
    attempt (a ``PrefixStore`` named after ``TORCHELASTIC_RESTART_COUNT``); the store
    itself is returned, for what must outlive an attempt (:func:`remember_run_dir`).
    Elsewhere env:// rendezvous as usual (None returned). For nccl the rank's CUDA device
    is made current first.
    """
    import torch
    import torch.distributed as dist

    if timeout is None:
        timeout = collective_timeout()
    limits: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    if env.source != "torchelastic":
        export_environment(env)
    if backend == "nccl":
        torch.cuda.set_device(cuda_device_index(env.local_rank))
    if env.source == "torchelastic" and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        from torch.distributed.constants import default_pg_timeout

        store = dist.TCPStore(
            env.master_addr,
            env.master_port,
            env.world_size,
            is_master=False,
            timeout=default_pg_timeout,
        )
        attempt = torchelastic_restart_count()
        dist.init_process_group(
            backend=backend,
            store=dist.PrefixStore(f"pystematic/attempt_{attempt}/", store),
            rank=env.rank,
            world_size=env.world_size,
            **limits,
        )
        return store
    dist.init_process_group(
        backend=backend, init_method="env://", rank=env.rank, world_size=env.world_size, **limits
    )
    return None


def record_rank_failure(message: str, exit_code: int, traceback: str = "") -> bool:
    """Write this rank's failure where torch's elastic agent looks for it; True if written.

    A rank that ends by ``sys.exit(n)`` leaves no error file (torch's ``record`` writes one
    for exceptions only), while its peer, dying a moment later of the closed connection,
    leaves one: the launcher would blame the peer. Written in the format of ``record``
    (``TORCHELASTIC_ERROR_FILE``, set for every rank the agent starts), before the rank
    exits and so before any peer notices; ``errorCode`` carries the exit status.
    """
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return False
    data = {
        "message": {
            "message": message,
            "extraInfo": {"py_callstack": traceback, "timestamp": str(int(time.time()))},
            "errorCode": exit_code,
        }
    }
    try:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- restarts

_RUN_DIR_KEY = "pystematic/run_dir"


def torchelastic_restart_count(environ: Mapping[str, str] | None = None) -> int:
    """How often torch's elastic agent restarted this worker group (0: the first start)."""
    env = os.environ if environ is None else environ
    if "TORCHELASTIC_RUN_ID" not in env:
        return 0
    return _int(env, "TORCHELASTIC_RESTART_COUNT", 0)


def slurm_job_id(environ: Mapping[str, str] | None = None) -> str | None:
    """The SLURM job this process runs in (the same after a requeue), or None."""
    env = os.environ if environ is None else environ
    job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    return job.strip() if job and job.strip() else None


def slurm_restart_count(environ: Mapping[str, str] | None = None) -> int:
    """How often SLURM requeued (restarted) this job (0: its first start, or no SLURM)."""
    env = os.environ if environ is None else environ
    if slurm_job_id(env) is None:
        return 0
    return _int(env, "SLURM_RESTART_COUNT", 0)


def remember_run_dir(store: Any, run_dir: Path) -> None:
    """Keep the run dir in the launcher's store, where a restarted attempt finds it."""
    if store is not None:
        store.set(_RUN_DIR_KEY, str(run_dir))


def remembered_run_dir(store: Any) -> Path | None:
    """The run dir an earlier attempt of this launch kept in the store, if any."""
    if store is None or not store.check([_RUN_DIR_KEY]):
        return None
    return Path(store.get(_RUN_DIR_KEY).decode("utf-8"))
