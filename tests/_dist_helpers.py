"""Module-level rank functions for tests/test_distributed.py.

Ranks are started with ``spawn``, which imports the entrypoint by module name; the launcher's
``sys.path`` (where pytest put this folder) travels with them, so ``import _dist_helpers``
works in the children. Subprocess launchers get this folder through PYTHONPATH.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any


def _join() -> Any:
    from pystematic.distributed import detect_environment, init_process_group

    env = detect_environment()
    assert env is not None, "rank started without a distributed environment"
    init_process_group(env, "gloo")
    return env


def allreduce_rank(scale: int) -> dict[str, Any]:
    """Sum ``scale * (rank + 1)`` over the group; report what this rank saw."""
    import torch
    import torch.distributed as dist

    env = _join()
    value = torch.tensor([float(scale * (env.rank + 1))])
    dist.all_reduce(value)
    dist.destroy_process_group()
    return {
        "rank": env.rank,
        "local_rank": env.local_rank,
        "world_size": env.world_size,
        "source": env.source,
        "sum": value.item(),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "pid": os.getpid(),
    }


def fail_on_rank(bad_rank: int) -> int:
    """``bad_rank`` raises; the others block in an all_reduce until the group is torn down."""
    import torch
    import torch.distributed as dist

    env = _join()
    if env.rank == bad_rank:
        raise ValueError(f"boom on rank {env.rank}")
    dist.all_reduce(torch.ones(1))
    return env.rank


def sleep_forever(pid_dir: str) -> None:
    """Write this rank's pid, then wait to be stopped."""
    rank = os.environ["RANK"]
    tmp = Path(pid_dir) / f"{rank}.tmp"
    tmp.write_text(str(os.getpid()))
    tmp.rename(Path(pid_dir) / f"{rank}.pid")
    time.sleep(120)


def slurm_task(out_dir: str) -> None:
    """One simulated ``srun`` task: detect, export, join, all_reduce; write the result."""
    import json

    import torch
    import torch.distributed as dist

    from pystematic.distributed import detect_environment, export_environment, init_process_group

    env = detect_environment()
    assert env is not None and env.source == "slurm", env
    export_environment(env)
    init_process_group(env, "gloo")
    value = torch.tensor([float(env.rank + 1)])
    dist.all_reduce(value)
    dist.destroy_process_group()
    result = {
        "rank": env.rank,
        "local_rank": env.local_rank,
        "world_size": env.world_size,
        "local_world_size": env.local_world_size,
        "master": f"{env.master_addr}:{env.master_port}",
        "exported": {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "MASTER_PORT")},
        "sum": value.item(),
    }
    Path(out_dir, f"{env.rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":  # pragma: no cover - used by the SLURM simulation
    slurm_task(sys.argv[1])


def collectives_rank() -> dict[str, Any]:
    """pystematic's own collectives over a real group: what each returned, what it kept."""
    import torch
    import torch.distributed as dist

    from pystematic import collectives

    env = _join()
    mine: Any = "a" if env.rank == 0 else list(range(1000))  # sizes differ across ranks
    kept = []
    gathered = collectives.all_gather_objects(mine)
    kept.append(len(collectives._kept))
    shared = collectives.broadcast_object({"from": env.rank} if env.rank == 0 else None)
    kept.append(len(collectives._kept))
    total = torch.tensor([float(env.rank + 1)])
    collectives.all_reduce(total, dist.ReduceOp.SUM)
    kept.append(len(collectives._kept))
    for _ in range(10):
        collectives.barrier()
        kept.append(len(collectives._kept))
    dist.destroy_process_group()
    return {"gathered": gathered, "shared": shared, "total": total.item(), "kept": kept}
