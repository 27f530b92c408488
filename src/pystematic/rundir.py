"""Run folders and the run record: unique creation, parameters.toml and run.json.

A run folder is ``<output_dir>/<experiment>/<run-id>/``; the run id is a sortable
UTC timestamp plus a random suffix, and the folder is made with a bare
``mkdir`` retried on collision, never check-then-create. ``run.json`` is only
ever replaced whole (temp file, fsync, rename) under a lock file, because the
ranks of a distributed run and the launcher all update it. This module takes
plain values and imports nothing of the package but its errors.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import RunDirError

RUN_JSON = "run.json"
PARAMETERS_TOML = "parameters.toml"
CHECKPOINT_DIR = "checkpoints"
HEARTBEAT_SECONDS = 5.0
#: How long an update of run.json waits for its lock (see ``_locked``).
LOCK_WAIT_S = 10.0
#: Space a run holds back for its final record, freed just before writing it, so that a
#: disk that fills up during the run still gets the run's status ("failed: No space ...").
RESERVE = ".reserve"
RESERVE_BYTES = 64 * 1024
# A final status never goes back to a weaker one: a rank that failed outranks
# the SIGTERM the others received when the launcher stopped them.
STATUS_RANK = {"running": 0, "completed": 1, "interrupted": 2, "failed": 3}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + os.urandom(2).hex()


def hostname() -> str:
    """This machine's name, as ``socket.gethostname()`` gives it (without importing socket)."""
    return os.uname().nodename


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


def resume_dir(path: Path) -> Path:
    """The run folder of ``--resume``, given a run folder or a checkpoint inside one."""
    path = Path(path).resolve()
    folder = path if path.is_dir() else path.parent.parent
    if not (folder / RUN_JSON).is_file():
        raise RunDirError(f"--resume {path}: not a run folder or a checkpoint in one")
    return folder


def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace *path* with *data* so readers see the old or the new file, never half of one.

    ``durable`` also syncs it to disk first, so it survives a power cut (a checkpoint, a
    run's final record); without it a crash of the process still never leaves half a file.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(3).hex()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_parameters(
    run_dir: Path, snapshot: Mapping[str, Any], name: str = PARAMETERS_TOML
) -> None:
    import tomli_w

    write_atomic(run_dir / name, tomli_w.dumps(dict(snapshot)).encode("utf-8"), durable=False)


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    """run.json's lock. A process killed while it held it can leave it held by a forked
    child (a DataLoader worker shares the lock's open file): after :data:`LOCK_WAIT_S` the
    update goes ahead without it rather than wait for ever."""
    with open(run_dir / ".run.json.lock", "a+b") as lock:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
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


def _strict(value: Any) -> Any:
    """JSON has no NaN or infinities: they are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def update_run_json(
    run_dir: Path,
    fields: Mapping[str, Any],
    *,
    restart: bool = False,
    durable: bool = False,
    overrule: bool = False,
) -> dict[str, Any]:
    """Merge *fields* into run.json under the lock; a status never gets weaker.

    ``restart`` (a resume) is the one write allowed to set a final run back to running;
    ``durable`` syncs the file to disk (the final status: one fsync a run, not one a
    heartbeat). The first rank that records a failure keeps it: its peers fail after it
    (a closed connection), unless ``overrule`` (the launcher, which knows the root cause
    from the ranks' error files) says otherwise.
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
        later_failure = (
            not restart
            and not overrule
            and new.get("status") == old_status == "failed"
            and data.get("failed_rank") is not None
            and new.get("failed_rank") != data.get("failed_rank")
        )
        if weaker or later_failure:
            # Keep the stronger final state and what explains it.
            for key in ("status", "error", "traceback", "failed_rank", "end", "duration"):
                new.pop(key, None)
        data.update(new)
        text = json.dumps(_strict(data), indent=1, default=str, allow_nan=False)
        write_atomic(run_dir / RUN_JSON, text.encode("utf-8"), durable=durable)
        return data


# ---------------------------------------------------------------- the run record


def start_record(run_dir: Path, fields: Mapping[str, Any]) -> None:
    """run.json at the start of a run: status ``running``, this process, a fresh heartbeat.

    ``fields`` holds the run's plain values (experiment, module, file, argv, params,
    tags, world size, backend, environment and git facts, ...).
    """
    now = now_iso()
    update_run_json(
        run_dir,
        {
            "id": run_dir.name,
            "start": now,
            "duration": None,
            **_running(now),
            "resumes": [],
            "metrics": {},
            **fields,
        },
    )
    hold_reserve(run_dir)


def hold_reserve(run_dir: Path) -> None:
    """Set :data:`RESERVE` bytes aside in the run folder (raises OSError on a full disk)."""
    with open(run_dir / RESERVE, "wb") as f:
        f.write(bytes(RESERVE_BYTES))


def _running(now: str) -> dict[str, Any]:
    """The fields of a run that is going on in this process from *now* on."""
    return {
        "status": "running",
        "end": None,
        "error": None,
        "traceback": None,
        "failed_rank": None,
        "pid": os.getpid(),
        "host": hostname(),
        "heartbeat": now,
    }


def note_resume(run_dir: Path, snapshot: Mapping[str, Any], argv: list[str]) -> int:
    """A resume of *run_dir*: keep the old parameters file, list the resume in run.json.

    Returns the number of the resume (1 for the first). A run that is still alive
    is refused.
    """
    data = read_run_json(run_dir)
    if data.get("status") == "running" and is_alive(data):
        raise RunDirError(f"--resume {run_dir}: that run is still running (pid {data.get('pid')})")
    hold_reserve(run_dir)
    n = 1
    while (run_dir / f"parameters.{n}.toml").exists():
        n += 1
    os.replace(run_dir / PARAMETERS_TOML, run_dir / f"parameters.{n}.toml")
    write_parameters(run_dir, snapshot)
    now = now_iso()
    resumes = [*data.get("resumes", []), {"time": now, "argv": argv}]
    update_run_json(
        run_dir,
        {**_running(now), "resumes": resumes, "params": dict(snapshot)},
        restart=True,
    )
    return len(resumes)


def note_restart(
    run_dir: Path,
    argv: list[str],
    *,
    cause: str,
    count: int,
    checkpoint: str | None,
    take_over: bool,
) -> int:
    """An automatic restart of *run_dir* (``cause``: ``torchelastic`` or ``slurm``).

    Like :func:`note_resume`, the run is ``running`` again and ``resumes`` gets an entry
    -- ``{"time", "argv", "restart", "count", "checkpoint", "after"}``: what restarted it,
    the how-many-th restart, the checkpoint it continues from (None: it starts over) and
    the status and error it had -- but the parameters stay (a restart runs the same
    command) and nothing is refused: the scheduler or the agent restarted it because it
    ended. ``take_over``: this process now owns the record (its pid and host), unless a
    launcher that is still running owns it. Returns the number of the resume.
    """
    data = read_run_json(run_dir)
    now = now_iso()
    entry = {
        "time": now,
        "argv": argv,
        "restart": cause,
        "count": count,
        "checkpoint": checkpoint,
        "after": {k: data.get(k) for k in ("status", "error", "failed_rank")},
    }
    resumes = [*data.get("resumes", []), entry]
    fields = {**_running(now), "resumes": resumes}
    if not take_over:  # the launcher that wrote pid and host still runs the run
        del fields["pid"], fields["host"]
    if checkpoint is None:
        fields["metrics"] = {}
    update_run_json(run_dir, fields, restart=True)
    with contextlib.suppress(OSError):  # restarted by the scheduler: go on regardless
        hold_reserve(run_dir)
    return len(resumes)


def finish_record(run_dir: Path, fields: Mapping[str, Any], *, overrule: bool = False) -> None:
    """The final status (and error, duration, metrics) of a run; never a weaker one, and
    never a later rank's failure over the first (see :func:`update_run_json`)."""
    now = now_iso()
    with contextlib.suppress(FileNotFoundError):
        (run_dir / RESERVE).unlink()  # its space is for this record
    fields = {**fields, "end": now, "heartbeat": now}
    update_run_json(run_dir, fields, durable=True, overrule=overrule)


class Heartbeat:
    """Refreshes run.json's heartbeat (and the running metrics) every few seconds."""

    def __init__(self, run_dir: Path, metrics: Callable[[], Mapping[str, Any]]) -> None:
        self._run_dir = run_dir
        self._metrics = metrics
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="pystematic-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(OSError):
                update_run_json(
                    self._run_dir, {"heartbeat": now_iso(), "metrics": dict(self._metrics())}
                )

    def stop(self) -> None:
        """Stop beating; a beat under way finishes first (it must not follow the final record)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()


# --- is this run alive? (the one rule for `runs`, `--resume` and sweeps) ----------------------

#: A ``running`` run on another host whose last sign of life (heartbeat, else start) is older
#: than this has died: six missed heartbeats, so a busy disk or a slow network file system
#: does not kill a live run, while a dead one shows within half a minute.
DEAD_AFTER_SECONDS = 6 * HEARTBEAT_SECONDS


def is_alive(data: Mapping[str, Any], *, now: float | None = None, host: str | None = None) -> bool:
    """Whether the run whose run.json holds *data* is still going.

    Only a ``running`` run can be alive. On the host that runs it its pid decides, at once
    (a pid reused by a later process does not count); on any other host, or without a pid,
    its last sign of life must be at most :data:`DEAD_AFTER_SECONDS` old. A ``running``
    run that is not alive is shown as ``died`` (derived when read, never written).
    """
    if data.get("status") != "running":
        return False
    last = last_sign_of_life(data)
    pid = data.get("pid")
    if data.get("host") == (hostname() if host is None else host) and type(pid) is int:
        return _pid_alive(pid, started_by=last)
    if last is None:
        return False
    return (time.time() if now is None else now) - last <= DEAD_AFTER_SECONDS


def last_sign_of_life(data: Mapping[str, Any]) -> float | None:
    """POSIX time of a run's heartbeat, else its start; None when run.json has neither."""
    heartbeat = parse_time(data.get("heartbeat"))
    return heartbeat if heartbeat is not None else parse_time(data.get("start"))


def parse_time(value: Any) -> float | None:
    """POSIX time of an ISO-8601 string (naive means UTC); None when absent or unparsable."""
    if not isinstance(value, str):
        return None
    if value.endswith("Z"):  # fromisoformat accepts "Z" from Python 3.11 only
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _pid_alive(pid: int, started_by: float | None) -> bool:
    """Whether *pid* is a live process of this machine that started by *started_by*."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: checks, sends nothing
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        pass
    started = _process_start_time(pid)
    # The run wrote its heartbeat from this pid, so its process started before that; one
    # that started later reuses the pid of a dead run (2 s: the boot time is whole seconds).
    return started is None or started_by is None or started <= started_by + 2.0


def _process_start_time(pid: int) -> float | None:
    """POSIX time a process started, from /proc (Linux); None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open("/proc/stat", "rb") as f:
            boot = next(line for line in f if line.startswith(b"btime "))
    except (OSError, StopIteration):
        return None
    # Field 22 (start time in clock ticks since boot) counts from the ")" that ends the name.
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        ticks = int(fields[19])
        return int(boot.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
    except (IndexError, ValueError, OSError):
        return None
