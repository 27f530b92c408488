"""End to end: distributed runs through the real CLI, as real processes.

Every test launches ``python -m pystematic`` (or torchrun, or simulated ``srun`` tasks) in a
throw-away project holding one small DDP experiment, ``ddp``: it writes what each rank saw at
the start (``init.<rank>``: context fields and a hash of the initial weights) and at the end
(``final.<rank>``: a hash of the trained weights), trains through ``context.ddp``,
``context.distributed_sampler`` and ``context.dataloader`` with worker processes that add
noise, and records a per-step loss plus, per epoch, a rank-dependent value with
``reduce="mean"``. Each launch costs seconds, so each test asserts everything one launch
shows.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import Project, Result, read_metrics, tomllib

pytestmark = pytest.mark.slow

EXPERIMENT = '''
"""A small DDP experiment for the end-to-end distributed tests."""

import hashlib
import json
import multiprocessing
import os

import numpy as np
import torch
from torch import nn

import pystematic as ps


def weights_hash(model):
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


class Noisy(torch.utils.data.Dataset):
    """Fixed inputs plus noise drawn in the DataLoader workers (torch and numpy)."""

    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x.sum(1, keepdim=True)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        noise = 0.1 * torch.randn(4) + float(np.random.normal(0.0, 0.1))
        return self.x[i] + noise, self.y[i]


@ps.parameter("epochs", type=int, default=2)
@ps.parameter("workers", type=int, default=2)
@ps.parameter("fail_rank", type=int, default=-1)
@ps.parameter("desync", type=bool, default=False)
@ps.experiment
def ddp(params, context):
    """DDP on synthetic data."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 1))
    info = {
        "init_hash": weights_hash(model),
        "rank": context.rank,
        "local_rank": context.local_rank,
        "world_size": context.world_size,
        "is_master": context.is_master,
        "is_distributed": context.is_distributed,
        "device": str(context.device),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "start_method": multiprocessing.get_start_method(),  # how DataLoader workers start
    }
    (context.output_dir / f"init.{context.rank}").write_text(json.dumps(info))
    if context.rank == params.fail_rank:
        raise ValueError(f"boom on rank {context.rank}")
    if params.desync:
        if context.rank == 1:
            context.new_seed("aug")  # the pitfall: a seed drawn on one rank only
        context.barrier()
    model = context.ddp(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    dataset = Noisy(32)
    loader = context.dataloader(
        dataset,
        batch_size=4,
        sampler=context.distributed_sampler(dataset),
        num_workers=params.workers,
    )
    for epoch in context.loop(params.epochs, desc="epoch"):
        for x, y in loader:
            x, y = context.to_device(x, y)
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            context.recorder.scalar("loss", loss.item())
            context.recorder.step()
        context.recorder.scalar("rank_value", 10.0 * (context.rank + 1), reduce="mean")
        context.recorder.scalar("epoch", epoch)
        context.recorder.step()
    trained = model.module if hasattr(model, "module") else model
    (context.output_dir / f"final.{context.rank}").write_text(weights_hash(trained))
'''

# 32 samples over 2 ranks in batches of 4: 4 training steps plus 1 epoch step, per epoch.
STEPS_PER_EPOCH = 5
EPOCHS = 2
SEED = "7"


@pytest.fixture
def ddp_project(project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    """The project, with the system temp folder redirected to a folder the tests can inspect."""
    project.write("pystematic.toml", 'modules = ["experiments"]\n')
    project.write("experiments/__init__.py", "")
    project.write("experiments/ddp.py", EXPERIMENT)
    tmp = tmp_path / "systemp"
    tmp.mkdir()
    # Subprocesses inherit these: torchelastic's fallback log folders would land in $TMPDIR.
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    return project


def _ok(result: Result) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


def _run_json(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / "run.json").read_text())
    return data


def _ranks_seen(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads((run_dir / f"init.{r}").read_text()) for r in (0, 1)]


def _comparable(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without the wall-clock ``time`` (what "bitwise identical" compares)."""
    return [{k: v for k, v in row.items() if k != "time"} for row in read_metrics(run_dir)]


def _tensorboard_points(run_dir: Path) -> list[tuple[str, int]]:
    """Every (tag, step) of every scalar in the run's event files, through tensorboard's reader."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    points = []
    for path in sorted((run_dir / "tensorboard").iterdir()):
        for event in LegacyEventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.WhichOneof("value") == "simple_value":
                    points.append((value.tag, event.step))
    return points


def _tmp_leftovers() -> list[str]:
    return sorted(p.name for p in Path(os.environ["TMPDIR"]).glob("torchelastic_*"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _assert_two_rank_run(run_dir: Path) -> None:
    """What every completed 2-rank run of ``ddp`` shows, however it was launched."""
    record = _run_json(run_dir)
    assert (record["status"], record["world_size"], record["backend"]) == ("completed", 2, "gloo")
    assert record["failed_rank"] is None
    seen = _ranks_seen(run_dir)
    assert [(s["rank"], s["local_rank"], s["world_size"]) for s in seen] == [(0, 0, 2), (1, 1, 2)]
    assert [(s["is_master"], s["is_distributed"], s["device"]) for s in seen] == [
        (True, True, "cpu"),
        (False, True, "cpu"),
    ]
    assert seen[0]["init_hash"] == seen[1]["init_hash"]  # one seed for the model init
    # Workers start the platform's default way (fork on Linux), as in any process torchrun
    # starts, even though the ranks themselves were spawned.
    default_method = multiprocessing.get_all_start_methods()[0]
    assert [s["start_method"] for s in seen] == [default_method, default_method]
    final = {(run_dir / f"final.{r}").read_text() for r in (0, 1)}
    assert len(final) == 1 and seen[0]["init_hash"] not in final  # DDP trained in lockstep
    assert (run_dir / "output.rank0.log").is_file() and (run_dir / "output.rank1.log").is_file()
    assert not (run_dir / "output.log").exists()
    assert "random_seed = 7" in (run_dir / "parameters.toml").read_text()
    metrics = read_metrics(run_dir)
    # Rank 0 alone writes: each step once, in order.
    assert [row["step"] for row in metrics] == list(range(STEPS_PER_EPOCH * EPOCHS))
    epoch_rows = [row for row in metrics if "rank_value" in row]
    # 10 on rank 0 and 20 on rank 1, averaged across ranks before recording.
    assert [(row["epoch"], row["rank_value"]) for row in epoch_rows] == [(0, 15.0), (1, 15.0)]
    assert sum("loss" in row for row in metrics) == 4 * EPOCHS
    assert record["metrics"]["rank_value"] == 15.0


def test_distributed_nproc_two_ranks_end_to_end(ddp_project: Project) -> None:
    """Two real gloo launches with one seed: the run record, rank roles, and bitwise equality."""
    args = ("distributed", "ddp", "--nproc", "2", "--random-seed", SEED)
    first = ddp_project.run(*args)
    _ok(first)
    second = ddp_project.run(*args)
    _ok(second)

    run_a, run_b = ddp_project.run_dirs("ddp")
    for result, run_dir in ((first, run_a), (second, run_b)):
        _assert_two_rank_run(run_dir)
        assert f"run dir: {run_dir}" in result.stderr
        assert _ranks_seen(run_dir)[1]["omp_num_threads"] == "1"  # set as torchrun does

    record = _run_json(run_a)
    assert record["argv"] == list(args)
    assert record["params"]["random_seed"] == 7
    # One event file, each scalar at each step once: rank 1 wrote nothing.
    assert len(list((run_a / "tensorboard").iterdir())) == 1
    points = _tensorboard_points(run_a)
    assert len(points) == len(set(points))
    assert {step for tag, step in points if tag == "loss"} == {0, 1, 2, 3, 5, 6, 7, 8}
    assert {step for tag, step in points if tag == "rank_value"} == {4, 9}
    # The launcher's per-rank folders live in the run dir, never in the system temp folder.
    attempts = list((run_a / "torchelastic").glob(f"{run_a.name}_*/attempt_0"))
    assert len(attempts) == 1
    assert sorted(p.name for p in attempts[0].iterdir()) == ["0", "1"]
    assert _tmp_leftovers() == []

    # Same seed -> the same numbers, with DataLoader workers on both ranks.
    assert _comparable(run_a) == _comparable(run_b)
    assert _ranks_seen(run_a)[0]["init_hash"] == _ranks_seen(run_b)[0]["init_hash"]


def test_failing_rank_is_named_and_recorded(ddp_project: Project) -> None:
    """Rank 1 raises while rank 0 waits in DDP's setup: exit 1, run.json says who and why."""
    result = ddp_project.run("distributed", "ddp", "--nproc", "2", "--fail-rank", "1")

    assert result.returncode == 1, result.stderr
    run_dir = ddp_project.only_run_dir("ddp")
    record = _run_json(run_dir)
    # Rank 0 was stopped by the launcher's SIGTERM, yet the run is "failed", not "interrupted".
    assert record["status"] == "failed"
    assert record["failed_rank"] == 1
    assert record["error"] == "ValueError: boom on rank 1"
    assert "Traceback" in record["traceback"]
    assert 'raise ValueError(f"boom on rank {context.rank}")' in record["traceback"]
    assert record["end"] is not None
    assert "error: rank 1 failed: ValueError: boom on rank 1" in result.stderr
    assert "experiments/ddp.py" in result.stderr
    assert "ValueError: boom on rank 1" in (run_dir / "output.rank1.log").read_text()
    assert not (run_dir / "metrics.jsonl").exists() or read_metrics(run_dir) == []
    assert list((run_dir / "torchelastic").glob("*/attempt_0/1/error.json"))
    assert _tmp_leftovers() == []


def test_processes_started_by_torchrun_or_srun_join_one_run(ddp_project: Project) -> None:
    """torchrun running the console module, then a simulated 2-task srun step.

    Both give the numbers ``pystematic distributed`` gives for the same seed.
    """
    torchrun = ddp_project.python(
        *("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"),
        *("-m", "pystematic", "run", "ddp", "--random-seed", SEED),
    )
    _ok(torchrun)
    by_torchrun = ddp_project.only_run_dir("ddp")
    _assert_two_rank_run(by_torchrun)
    assert torchrun.stderr.count("run dir: ") == 1  # rank 0 made the dir, rank 1 joined it
    snapshot = tomllib.loads((by_torchrun / "parameters.toml").read_text())
    assert snapshot == {
        "epochs": 2,
        "workers": 2,
        "fail_rank": -1,
        "desync": False,
        "random_seed": 7,
        "deterministic": False,
    }

    # srun starts one task per rank with SLURM_* set; nobody sets RANK or MASTER_ADDR.
    port = _free_port()
    tasks = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "SLURM_JOB_ID": "4242",
            "SLURM_STEP_ID": "0",
            "SLURM_PROCID": str(rank),
            "SLURM_LOCALID": str(rank),
            "SLURM_NODEID": "0",
            "SLURM_NTASKS": "2",
            "SLURM_STEP_NODELIST": "localhost",
            "SLURM_JOB_NODELIST": "localhost",
            "MASTER_PORT": str(port),  # the job-id derived port might be taken here
        }
        tasks.append(
            subprocess.Popen(
                [sys.executable, "-m", "pystematic", "run", "ddp", "--random-seed", SEED],
                cwd=ddp_project.root,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        outputs = [task.communicate(timeout=180) for task in tasks]
    finally:
        for task in tasks:
            if task.poll() is None:  # a rank stuck waiting for its peer
                task.kill()
                task.wait()
    for task, (out, err) in zip(tasks, outputs, strict=True):
        assert task.returncode == 0, f"{out}\n{err}"
    assert "run dir: " in outputs[0][1] and "run dir: " not in outputs[1][1]
    by_srun = [d for d in ddp_project.run_dirs("ddp") if d != by_torchrun]
    assert len(by_srun) == 1
    _assert_two_rank_run(by_srun[0])

    # Same seed, whoever started the ranks: the same numbers.
    _ok(ddp_project.run("distributed", "ddp", "--nproc", "2", "--random-seed", SEED))
    (by_pystematic,) = set(ddp_project.run_dirs("ddp")) - {by_torchrun, by_srun[0]}
    assert _comparable(by_srun[0]) == _comparable(by_torchrun) == _comparable(by_pystematic)


def test_slurm_batch_script_runs_as_one_process(ddp_project: Project) -> None:
    """The batch script has SLURM_NTASKS=2 but no step: a single process, not a rank waiting."""
    env = {
        "SLURM_JOB_ID": "4243",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NTASKS": "2",
        "SLURM_JOB_NODELIST": "localhost",
    }
    result = ddp_project.run("run", "ddp", "--workers", "0", "--epochs", "1", env=env, timeout=90)

    _ok(result)
    run_dir = ddp_project.only_run_dir("ddp")
    record = _run_json(run_dir)
    assert (record["status"], record["world_size"]) == ("completed", 1)
    seen = json.loads((run_dir / "init.0").read_text())
    assert (seen["rank"], seen["world_size"], seen["is_distributed"]) == (0, 1, False)
    assert (run_dir / "output.log").is_file() and not (run_dir / "init.1").exists()
    # One process sees all 32 samples: 8 training steps and the epoch step.
    assert [row["step"] for row in read_metrics(run_dir)] == list(range(9))


def test_rank_conditional_new_seed_is_warned_about(ddp_project: Project) -> None:
    """Rank 1 draws one seed more than rank 0; the barrier's check names the purpose."""
    result = ddp_project.run("distributed", "ddp", "--nproc", "2", "--desync", "--workers", "0")

    _ok(result)
    run_dir = ddp_project.only_run_dir("ddp")
    logs = "".join((run_dir / f"output.rank{r}.log").read_text() for r in (0, 1))
    for text in (result.stderr, logs):
        assert "new_seed() was not called identically on every rank" in text
        assert "rank 1 called new_seed('aug') 1 time more than rank 0" in text
    assert _run_json(run_dir)["status"] == "completed"


def test_bad_launch_input_fails_before_anything_starts(ddp_project: Project) -> None:
    """User mistakes: one line, exit 2, no run dir and no launcher folders."""
    no_gpu = ddp_project.run("distributed", "ddp", "--gpus", "1")
    assert no_gpu.returncode == 2
    lines = no_gpu.stderr.strip().splitlines()
    assert len(lines) == 1, no_gpu.stderr
    assert lines[0].startswith("error: --gpus 1 asked for 1 GPU but this machine has 0")
    assert "Traceback" not in no_gpu.stderr

    both = ddp_project.run("distributed", "ddp", "--gpus", "1", "--nproc", "2")
    neither = ddp_project.run("distributed", "ddp")
    for result in (both, neither):
        assert result.returncode == 2
        assert result.stderr.strip() == "error: give exactly one of --gpus N or --nproc N"

    bad_value = ddp_project.run("distributed", "ddp", "--nproc", "2", "--epochs", "two")
    assert bad_value.returncode == 2
    assert bad_value.stderr.strip().splitlines() == [
        "error: invalid value for --epochs: 'two' is not an integer (from cli)"
    ]
    zero = ddp_project.run("distributed", "ddp", "--nproc", "0")
    assert zero.returncode == 2
    assert zero.stderr.strip() == "error: need at least 1 process per node, got 0"

    assert not (ddp_project.root / "output").exists()
    assert _tmp_leftovers() == []


@pytest.mark.slow
def test_a_launch_that_fails_after_the_run_dir_exists_records_failed(
    ddp_project: Project,
) -> None:
    """A busy --master-port: the run dir exists by then, so run.json says failed, why."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = ddp_project.run(
            "distributed", "ddp", "--nproc", "2", "--master-port", str(port), timeout=240
        )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: rendezvous at ")
    record = json.loads((ddp_project.only_run_dir("ddp") / "run.json").read_text())
    assert record["status"] == "failed"
    assert record["error"].startswith("rendezvous at ")
