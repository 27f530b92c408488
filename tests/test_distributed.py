"""Tests for pystematic.distributed: environment detection, host lists, real 2-rank launches."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

import _dist_helpers
from pystematic.distributed import (
    DistEnv,
    collective_timeout,
    detect_environment,
    expand_hostlist,
    export_environment,
    parse_timeout,
    record_rank_failure,
    select_backend,
    slurm_master_port,
)
from pystematic.errors import DistributedError, PystematicError
from pystematic.launch import (
    LaunchSpec,
    RankFailedError,
    _describe,
    _launch_config,
    _rank_failed,
    check_gpus,
    launch,
)

HELPERS_DIR = str(Path(_dist_helpers.__file__).parent)
SRC_DIR = str(Path(__file__).parent.parent / "src")

# What rank 1 of `torchrun --nproc-per-node 2` sees (docs/notes, measured).
TORCHRUN_RANK1 = {
    "RANK": "1",
    "LOCAL_RANK": "1",
    "GROUP_RANK": "0",
    "WORLD_SIZE": "2",
    "LOCAL_WORLD_SIZE": "2",
    "MASTER_ADDR": "localhost",
    "MASTER_PORT": "35683",
    "TORCHELASTIC_RUN_ID": "5d1d2c4e",
    "TORCHELASTIC_RESTART_COUNT": "0",
}

# Task 3 of `srun` in a 2-node x 2-task job.
SRUN_TASK3 = {
    "SLURM_JOB_ID": "123456",
    "SLURM_STEP_ID": "0",
    "SLURM_NTASKS": "4",
    "SLURM_STEP_NUM_TASKS": "4",
    "SLURM_NNODES": "2",
    "SLURM_TASKS_PER_NODE": "2(x2)",
    "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
    "SLURM_STEP_NODELIST": "gpu[07-08]",
}

# The batch script of that job: task 0 of the "batch" step, no SLURM_STEP_ID.
SBATCH_SCRIPT = {
    "SLURM_JOB_ID": "123456",
    "SLURM_NTASKS": "4",
    "SLURM_NNODES": "2",
    "SLURM_TASKS_PER_NODE": "2(x2)",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
}


# --------------------------------------------------------------------------- detection


def test_not_launched_gives_none() -> None:
    assert detect_environment({}) is None
    assert detect_environment({"PATH": "/usr/bin", "HOME": "/root"}) is None


def test_torchrun_environment() -> None:
    env = detect_environment(TORCHRUN_RANK1)
    assert env == DistEnv(
        rank=1,
        local_rank=1,
        world_size=2,
        local_world_size=2,
        node_rank=0,
        master_addr="localhost",
        master_port=35683,
        source="torchelastic",
    )


def test_torchelastic_wins_over_slurm() -> None:
    # torchrun started inside an srun step: the ranks are torchrun's.
    env = detect_environment({**SRUN_TASK3, **TORCHRUN_RANK1})
    assert env is not None
    assert env.source == "torchelastic"
    assert (env.rank, env.world_size) == (1, 2)


def test_plain_rank_world_size_environment() -> None:
    env = detect_environment(
        {"RANK": "3", "WORLD_SIZE": "4", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"}
    )
    assert env is not None
    assert env.source == "env"
    # Without LOCAL_* the launcher is taken to be single node.
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size) == (3, 3, 4, 4)
    assert (env.node_rank, env.master_addr, env.master_port) == (0, "10.0.0.1", 1234)


def test_inconsistent_torch_environment_is_a_clear_error() -> None:
    with pytest.raises(DistributedError, match=re.escape("rank 2 outside 0..1")):
        detect_environment({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(DistributedError, match="RANK='one' is not an integer"):
        detect_environment({"RANK": "one", "WORLD_SIZE": "2"})


def test_srun_task() -> None:
    env = detect_environment(SRUN_TASK3)
    assert env == DistEnv(
        rank=3,
        local_rank=1,
        world_size=4,
        local_world_size=2,
        node_rank=1,
        master_addr="gpu07",
        master_port=15000 + 3456,  # Lightning's port for the same job
        source="slurm",
    )


def test_sbatch_script_itself_is_not_a_rank() -> None:
    assert detect_environment(SBATCH_SCRIPT) is None
    # Reserved pseudo-step ids (batch, extern, interactive) in whatever spelling.
    for step in ("4294967294", "4294967291", "4294967290", "batch", "extern", "-2"):
        assert detect_environment({**SBATCH_SCRIPT, "SLURM_STEP_ID": step}) is None, step


def test_one_task_srun_step_is_not_distributed() -> None:
    one = {
        **SRUN_TASK3,
        "SLURM_NTASKS": "1",
        "SLURM_STEP_NUM_TASKS": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_TASKS_PER_NODE": "1",
        "SLURM_STEP_TASKS_PER_NODE": "1",
    }
    assert detect_environment(one) is None


def test_srun_step_uses_step_values_over_job_values() -> None:
    # A 2-task step on the second and third node of a 4-node job.
    env = detect_environment(
        {
            "SLURM_JOB_ID": "77",
            "SLURM_STEP_ID": "3",
            "SLURM_NTASKS": "16",
            "SLURM_TASKS_PER_NODE": "4(x4)",
            "SLURM_JOB_NODELIST": "n[01-04]",
            "SLURM_STEP_NUM_TASKS": "2",
            "SLURM_STEP_NUM_NODES": "2",
            "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
            "SLURM_STEP_NODELIST": "n[02-03]",
            "SLURM_PROCID": "1",
            "SLURM_LOCALID": "0",
            "SLURM_NODEID": "1",
        }
    )
    assert env is not None
    assert (env.world_size, env.local_world_size, env.master_addr) == (2, 1, "n02")
    assert env.master_port == slurm_master_port(77, 3)


def test_srun_uneven_tasks_per_node_and_explicit_master() -> None:
    env = detect_environment(
        {
            "SLURM_JOB_ID": "9",
            "SLURM_STEP_ID": "0",
            "SLURM_NTASKS": "5",
            "SLURM_TASKS_PER_NODE": "2(x2),1",
            "SLURM_JOB_NODELIST": "a1,b[1-2]",
            "SLURM_PROCID": "4",
            "SLURM_LOCALID": "0",
            "SLURM_NODEID": "2",
            "MASTER_ADDR": "head",
            "MASTER_PORT": "4000",
        }
    )
    assert env is not None
    assert env.local_world_size == 1
    assert (env.master_addr, env.master_port) == ("head", 4000)


def test_srun_without_tasks_per_node_lists() -> None:
    env = detect_environment(
        {
            "SLURM_JOB_ID": "9",
            "SLURM_STEP_ID": "0",
            "SLURM_NTASKS": "8",
            "SLURM_NTASKS_PER_NODE": "4",
            "SLURM_NODELIST": "x[1-2]",
            "SLURM_PROCID": "5",
            "SLURM_LOCALID": "1",
            "SLURM_NODEID": "1",
        }
    )
    assert env is not None
    assert (env.local_world_size, env.master_addr) == (4, "x1")


def test_srun_missing_localid_is_a_clear_error() -> None:
    broken = {k: v for k, v in SRUN_TASK3.items() if k != "SLURM_LOCALID"}
    with pytest.raises(DistributedError, match="SLURM_LOCALID is not set"):
        detect_environment(broken)


def test_slurm_master_port_is_deterministic_and_in_range() -> None:
    assert slurm_master_port(123456) == 18456
    assert slurm_master_port(123456, 1) != slurm_master_port(123456, 0)
    ports = {slurm_master_port(job, step) for job in range(0, 50000, 7) for step in range(3)}
    assert min(ports) >= 15000 and max(ports) < 25000


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("", []),
        ("node1", ["node1"]),
        ("node1,node2", ["node1", "node2"]),
        ("gpu[07-08,10],cpu1", ["gpu07", "gpu08", "gpu10", "cpu1"]),
        ("n[9-11]", ["n9", "n10", "n11"]),
        ("n[09-11]", ["n09", "n10", "n11"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("a[1,3]-ib,b", ["a1-ib", "a3-ib", "b"]),
        ("localhost", ["localhost"]),
        ("10.0.0.[1-2]", ["10.0.0.1", "10.0.0.2"]),
    ],
)
def test_expand_hostlist(nodelist: str, hosts: list[str]) -> None:
    assert expand_hostlist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["gpu[1-", "gpu[a-b]", "gpu[3-1]", "gpu]1[", "x[1-2]]"])
def test_expand_hostlist_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError, match="host list"):
        expand_hostlist(bad)


def test_export_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.delenv("GROUP_RANK", raising=False)
    env = detect_environment(SRUN_TASK3)
    assert env is not None
    export_environment(env)
    assert {k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")} == {
        "RANK": "3",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "4",
    }
    assert os.environ["LOCAL_WORLD_SIZE"] == "2"
    assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == ("gpu07", "18456")
    # What was exported reads back as the same group (now through the torch variables).
    again = detect_environment(dict(os.environ))
    assert again is not None
    assert again == dataclasses.replace(env, source="env")


# --------------------------------------------------------------------------- gpus, options


def test_select_backend() -> None:
    assert select_backend(True) == "nccl"
    assert select_backend(False) == "gloo"


def test_check_gpus_without_gpus_is_one_line_user_error() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has GPUs")
    with pytest.raises(DistributedError) as info:
        check_gpus(1)
    err = info.value
    assert isinstance(err, PystematicError) and err.exit_code == 2
    assert str(err).startswith("--gpus 1 asked for 1 GPU but this machine has 0")
    assert "\n" not in str(err)
    with pytest.raises(DistributedError, match="--gpus 4 asked for 4 GPUs but this machine has 0"):
        check_gpus(4)
    with pytest.raises(DistributedError, match="at least 1"):
        check_gpus(0)


def _spec(tmp_path: Path, **kw: object) -> LaunchSpec:
    fields: dict[str, object] = {
        "nproc_per_node": 2,
        "use_gpus": False,
        "run_id": "run-1",
        "log_dir": tmp_path / "logs",
    }
    fields.update(kw)
    return LaunchSpec(**fields)  # type: ignore[arg-type]


def test_launch_config_matches_torchrun_choices(tmp_path: Path) -> None:
    single = _launch_config(_spec(tmp_path))
    assert (single.rdzv_backend, single.rdzv_endpoint) == ("c10d", "localhost:0")
    assert (single.max_restarts, single.start_method, single.run_id) == (0, "spawn", "run-1")
    assert (single.min_nodes, single.max_nodes, single.nproc_per_node) == (1, 1, 2)
    assert single.monitor_interval <= 0.1
    assert Path(single.logs_specs.root_log_dir) == tmp_path / "logs"

    static = _launch_config(
        _spec(tmp_path, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29512)
    )
    assert (static.rdzv_backend, static.rdzv_endpoint) == ("static", "10.0.0.1:29512")
    assert static.rdzv_configs["rank"] == 1

    rdzv = _launch_config(
        _spec(tmp_path, nnodes=2, rdzv_endpoint="head:29400", rdzv_id="job42", max_restarts=3)
    )
    assert (rdzv.rdzv_backend, rdzv.rdzv_endpoint, rdzv.run_id) == ("c10d", "head:29400", "job42")
    assert (rdzv.min_nodes, rdzv.max_nodes, rdzv.max_restarts) == (2, 2, 3)

    port_only = _launch_config(_spec(tmp_path, master_port=29600))
    assert (port_only.rdzv_backend, port_only.rdzv_endpoint) == ("static", "127.0.0.1:29600")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"nproc_per_node": 0}, "at least 1 process"),
        ({"nnodes": 2}, "--nnodes 2 needs --rdzv-endpoint"),
        ({"nnodes": 2, "master_addr": "h"}, "needs --node-rank and --master-addr"),
        (
            {"nnodes": 2, "node_rank": 2, "master_addr": "h"},
            re.escape("--node-rank 2 outside 0..1"),
        ),
        ({"nnodes": 2, "rdzv_endpoint": "h:1"}, "needs --rdzv-id"),
        ({"rdzv_endpoint": "h:1", "master_port": 5}, "use either"),
        ({"master_port": 70000}, re.escape("outside 1..65535")),
        ({"max_restarts": -1}, "--max-restarts -1"),
    ],
)
def test_launch_config_rejects_bad_options(
    tmp_path: Path, kw: dict[str, object], message: str
) -> None:
    with pytest.raises(DistributedError, match=message):
        _launch_config(_spec(tmp_path, **kw))


def test_describe_failures_without_error_file() -> None:
    assert _describe("", -9) == ("killed by SIGKILL", "")
    assert _describe("", 3) == ("exited with code 3", "")
    data = {"message": "ValueError: x", "extraInfo": {"py_callstack": "Traceback ..."}}
    assert _describe(data, 1) == ("ValueError: x", "Traceback ...")


def _error_file(path: Path, message: str, mtime: int) -> str:
    path.parent.mkdir(parents=True)
    data = {
        "message": {
            "message": message,
            "extraInfo": {"py_callstack": f"Traceback ...\n{message}\n", "timestamp": "1700000000"},
        }
    }
    path.write_text(json.dumps(data))
    os.utime(path, ns=(mtime, mtime))
    return str(path)


def _child_failed(failures: dict[int, tuple[int, int, str]]) -> object:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    return ChildFailedError(
        "fn",
        {
            rank: ProcessFailure(local_rank=lr, pid=100 + rank, exitcode=code, error_file=path)
            for rank, (lr, code, path) in failures.items()
        },
    )


def test_root_cause_is_the_oldest_error_file(tmp_path: Path) -> None:
    # torch saw local rank 0 (node 1 -> global rank 2) first, but rank 3's error came first.
    attempt = tmp_path / "run_x" / "attempt_0"
    secondary = _error_file(
        attempt / "0" / "error.json", "RuntimeError: closed by peer", 2 * 10**18
    )
    _error_file(attempt / "1" / "error.json", "ValueError: boom", 10**18)
    err = _rank_failed(_child_failed({2: (0, 1, secondary)}), tmp_path / "unused_*")
    assert (err.rank, err.local_rank, err.exitcode) == (3, 1, 1)
    assert err.message == "ValueError: boom"
    assert err.error_file == str(attempt / "1" / "error.json")
    assert "ValueError: boom" in err.traceback


def test_root_cause_without_error_file_is_trusted_unless_sigabrt(tmp_path: Path) -> None:
    attempt = tmp_path / "run_x" / "attempt_0"
    _error_file(attempt / "0" / "error.json", "RuntimeError: closed by peer", 10**18)
    missing = str(attempt / "1" / "error.json")
    run_dirs = tmp_path / "run_*"
    killed = _rank_failed(_child_failed({1: (1, -9, missing)}), run_dirs)
    assert (killed.rank, killed.exitcode, killed.message) == (1, -9, "killed by SIGKILL")
    assert killed.error_file is None and killed.traceback == ""

    # A rank aborted in C++ (NCCL watchdog, gloo teardown) died of a peer's error.
    aborted = _rank_failed(_child_failed({1: (1, -int(signal.SIGABRT), missing)}), run_dirs)
    assert (aborted.rank, aborted.message) == (0, "RuntimeError: closed by peer")


def test_a_rank_that_exits_records_its_failure_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sys.exit(3) on local rank 1 leaves torch's kind of error file (errorCode 3); the peer's
    later "closed by peer" file does not take the blame, whichever rank torch saw first."""
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    attempt = tmp_path / "run_x" / "attempt_0"
    exited = attempt / "1" / "error.json"
    exited.parent.mkdir(parents=True)
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(exited))
    assert record_rank_failure("main exited with status 3", 3)
    # torch reads it as one of its own (message and timestamp).
    seen = ProcessFailure(local_rank=1, pid=101, exitcode=3, error_file=str(exited))
    assert seen.message["message"] == "main exited with status 3"
    os.utime(exited, ns=(10**18, 10**18))
    peer = _error_file(attempt / "0" / "error.json", "RuntimeError: closed by peer", 2 * 10**18)
    for torch_pick in ({0: (0, 1, peer)}, {1: (1, 3, str(exited))}):
        err = _rank_failed(_child_failed(torch_pick), tmp_path / "unused_*")
        assert (err.rank, err.exitcode, err.message) == (1, 3, "main exited with status 3")
        assert err.traceback == ""

    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE")
    assert not record_rank_failure("main exited with status 3", 3)  # not under the agent


def test_collective_timeout_from_option_or_environment() -> None:
    assert parse_timeout(2.5, "--timeout").total_seconds() == 2.5
    assert collective_timeout({}) is None  # torch's own default
    assert collective_timeout({"PYSTEMATIC_TIMEOUT": " 90 "}) == parse_timeout("90", "x")
    with pytest.raises(DistributedError, match=r"^--timeout 0.0 must be a positive number"):
        parse_timeout(0.0, "--timeout")
    with pytest.raises(DistributedError, match=r"^--timeout nan must be a positive number"):
        parse_timeout(float("nan"), "--timeout")
    with pytest.raises(DistributedError, match=r"^PYSTEMATIC_TIMEOUT='soon' is not a number"):
        collective_timeout({"PYSTEMATIC_TIMEOUT": "soon"})


# --------------------------------------------------------------------------- real launches


def _signal_handlers() -> dict[int, object]:
    return {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}


@pytest.mark.slow
def test_launch_two_ranks_all_reduce(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Anything torch would put in the system temp folder lands here instead.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("TORCHELASTIC_SIGNALS_TO_HANDLE", raising=False)
    before = _signal_handlers()

    result = launch(_spec(tmp_path), _dist_helpers.allreduce_rank, (3,))

    assert sorted(result) == [0, 1]
    for rank, out in result.items():
        assert out["rank"] == rank and out["local_rank"] == rank
        assert out["world_size"] == 2 and out["source"] == "torchelastic"
        assert out["sum"] == 3 * 1 + 3 * 2  # a real all_reduce over both ranks
        assert out["omp"] == "1"  # as torchrun does when unset
    assert result[0]["pid"] != result[1]["pid"] != os.getpid()
    # The launcher process is left as it was found.
    assert _signal_handlers() == before
    assert "TORCHELASTIC_SIGNALS_TO_HANDLE" not in os.environ
    assert "OMP_NUM_THREADS" not in os.environ
    # Launcher files went to log_dir, nothing to the temp folder.
    assert list(scratch.iterdir()) == []
    run_dirs = list((tmp_path / "logs").iterdir())
    assert len(run_dirs) == 1 and run_dirs[0].name.startswith("run-1_")
    assert sorted(p.name for p in (run_dirs[0] / "attempt_0").iterdir()) == ["0", "1"]


@pytest.mark.slow
def test_launch_failing_rank_raises_rank_failed_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    before = _signal_handlers()
    with pytest.raises(RankFailedError) as info:
        launch(_spec(tmp_path), _dist_helpers.fail_on_rank, (1,))
    err = info.value
    assert err.rank == 1 and err.local_rank == 1
    assert err.exitcode == 1 and err.exit_code == 1
    assert err.message == err.error_message == "ValueError: boom on rank 1"
    assert str(err) == err.format_message() == "rank 1 failed: ValueError: boom on rank 1"
    assert "Traceback (most recent call last)" in err.traceback
    assert 'raise ValueError(f"boom on rank {env.rank}")' in err.traceback
    assert err.error_file is not None
    assert tmp_path / "logs" in Path(err.error_file).parents
    assert _signal_handlers() == before
    assert os.environ["OMP_NUM_THREADS"] == "3"  # a user's value is left alone


def test_launch_with_master_port_in_use_is_a_user_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        spec = _spec(tmp_path, master_port=port)
        with pytest.raises(DistributedError) as info:
            launch(spec, _dist_helpers.allreduce_rank, (1,))
    assert not isinstance(info.value, RankFailedError)
    assert str(info.value).startswith(f"rendezvous at 127.0.0.1:{port} failed:")
    assert "address already in use" in str(info.value)
    assert "\n" not in str(info.value)


LAUNCHER_SCRIPT = textwrap.dedent(
    """
    import signal, sys
    from pathlib import Path
    import _dist_helpers
    from pystematic.launch import LaunchInterrupted, LaunchSpec, launch

    class Terminated(Exception):
        pass

    def on_term(signum, frame):
        raise Terminated

    if __name__ == "__main__":
        pid_dir = sys.argv[1]
        signal.signal(signal.SIGTERM, on_term)
        spec = LaunchSpec(nproc_per_node=2, use_gpus=False, run_id="sig",
                          log_dir=Path(pid_dir) / "logs")
        try:
            launch(spec, _dist_helpers.sleep_forever, (pid_dir,))
        except KeyboardInterrupt:
            print("caught KeyboardInterrupt", flush=True)
            sys.exit(130)
        except LaunchInterrupted as e:
            print(f"caught LaunchInterrupted({e.signum})", flush=True)
            sys.exit(e.exit_code)
        except Terminated:
            print("caught SIGTERM in the caller's handler", flush=True)
            sys.exit(1)
        print("launch returned", flush=True)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code", "said"),
    [
        (signal.SIGINT, 130, "caught KeyboardInterrupt"),
        # Said as an exception, not by raising SIGTERM again in the caller.
        (signal.SIGTERM, 143, f"caught LaunchInterrupted({int(signal.SIGTERM)})"),
    ],
)
def test_signal_to_launcher_stops_ranks_and_reaches_caller(
    tmp_path: Path, sig: int, code: int, said: str
) -> None:
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HELPERS_DIR, SRC_DIR])}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while len(list(tmp_path.glob("*.pid"))) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "ranks did not start"
            time.sleep(0.05)
        pids = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, err
    assert said in out
    assert not any(_alive(pid) for pid in pids)


def _job_id_with_free_port() -> int:
    """A SLURM job id whose derived master port is free right now."""
    for job_id in range(os.getpid() % 5000, 10000, 7):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", slurm_master_port(job_id)))
            except OSError:
                continue
            return job_id
    raise AssertionError("no free port in 15000..24999")


@pytest.mark.slow
def test_simulated_srun_step_forms_a_real_group(tmp_path: Path) -> None:
    """Two processes with the variables srun gives its tasks join one gloo group, no launcher."""
    job_id = _job_id_with_free_port()
    port = slurm_master_port(job_id)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        base.pop(key, None)
    base["PYTHONPATH"] = os.pathsep.join([HELPERS_DIR, SRC_DIR])
    procs = []
    for rank in (0, 1):
        env = {
            **base,
            "SLURM_JOB_ID": str(job_id),
            "SLURM_STEP_ID": "0",
            "SLURM_NTASKS": "2",
            "SLURM_NNODES": "1",
            "SLURM_TASKS_PER_NODE": "2",
            "SLURM_PROCID": str(rank),
            "SLURM_LOCALID": str(rank),
            "SLURM_NODEID": "0",
            "SLURM_JOB_NODELIST": "localhost",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "_dist_helpers", str(tmp_path)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err
    results = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    for rank, res in enumerate(results):
        assert (res["rank"], res["local_rank"], res["world_size"]) == (rank, rank, 2)
        assert res["local_world_size"] == 2
        assert res["master"] == f"localhost:{port}"
        assert res["exported"] == {"RANK": str(rank), "WORLD_SIZE": "2", "MASTER_PORT": str(port)}
        assert res["sum"] == 3.0
