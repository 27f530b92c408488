"""Run folders: unique creation, the parameters snapshot and run.json.

A run folder is ``<output_dir>/<experiment>/<run-id>/``; the run id is a sortable
UTC timestamp plus a random suffix, and the folder is made with a bare
``mkdir`` retried on collision, never check-then-create. ``run.json`` is only
ever replaced whole (temp file, fsync, rename) under a lock file, because the
ranks of a distributed run and the launcher all update it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import RunDirError

RUN_JSON = "run.json"
PARAMETERS_TOML = "parameters.toml"
HEARTBEAT_SECONDS = 5.0
# A final status never goes back to a weaker one: a rank that failed outranks
# the SIGTERM the others received when the launcher stopped them.
STATUS_RANK = {"running": 0, "completed": 1, "interrupted": 2, "failed": 3}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


def create_run_dir(output_dir: Path, experiment_id: str) -> Path:
    """Make a fresh run folder; two runs never share one, nothing is overwritten."""
    parent = output_dir / experiment_id
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create output folder {parent}: {e.strerror}") from None
    for _ in range(1000):
        path = parent / new_run_id()
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as e:
            raise RunDirError(f"cannot create run folder in {parent}: {e.strerror}") from None
        return path
    raise RunDirError(f"could not find a free run id in {parent}")


def write_atomic(path: Path, data: bytes) -> None:
    """Replace *path* with *data* so readers see the old or the new file, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_parameters(
    run_dir: Path, snapshot: Mapping[str, Any], name: str = PARAMETERS_TOML
) -> None:
    import tomli_w

    write_atomic(run_dir / name, tomli_w.dumps(dict(snapshot)).encode("utf-8"))


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    with open(run_dir / ".run.json.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def read_run_json(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((run_dir / RUN_JSON).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise RunDirError(f"{run_dir / RUN_JSON}: unreadable ({e})") from None
    return data if isinstance(data, dict) else {}


def update_run_json(
    run_dir: Path, fields: Mapping[str, Any], *, restart: bool = False
) -> dict[str, Any]:
    """Merge *fields* into run.json under the lock; a status never gets weaker.

    ``restart`` (a resume) is the one write allowed to set a final run back to running.
    """
    with _locked(run_dir):
        data = read_run_json(run_dir)
        new = dict(fields)
        old_status = data.get("status")
        weaker = (
            not restart
            and new.get("status") in STATUS_RANK
            and old_status in STATUS_RANK
            and old_status != "running"
            and STATUS_RANK[new["status"]] < STATUS_RANK[old_status]
        )
        if weaker:
            # Keep the stronger final state and what explains it.
            for key in ("status", "error", "traceback", "failed_rank", "end", "duration"):
                new.pop(key, None)
        data.update(new)
        write_atomic(run_dir / RUN_JSON, json.dumps(data, indent=1, default=str).encode("utf-8"))
        return data
