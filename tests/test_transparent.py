"""Acceptance: one experiment file, unchanged, under ``run`` and ``distributed --nproc 2``,
through crashes, restarts, requeues and resumes (DESIGN.md sections 5, 6 and 8).

The experiment trains a model with a method and an attribute of its own through
``context.track`` on a shuffled ``context.dataloader`` (one worker that adds noise), adds
augmentation drawn from ``context.rng``, writes which samples each rank saw in each epoch,
checkpoints every epoch and ends by writing a hash of its weights. Two reference runs with
seed 7 -- one process and two ranks -- are made once; every interrupted run is compared
with the 2-rank one bit for bit (``pystematic.diff.compare_metrics``, weights hash).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import Project, read_metrics
from pystematic.diff import compare_metrics

pytestmark = pytest.mark.slow

EXPERIMENT = '''
"""One experiment for `run` and `distributed` alike."""

import hashlib
import json

import torch
from torch import nn

import pystematic as ps


class Net(nn.Module):
    """A model with a method and an attribute of its own, as real models have."""

    def __init__(self):
        super().__init__()
        self.num_classes = 2
        self.body = nn.Linear(4, 8)
        self.drop = nn.Dropout(0.25)
        self.head = nn.Linear(8, self.num_classes)

    def encode(self, x):
        return torch.relu(self.body(x))

    def forward(self, x):
        return self.head(self.drop(self.encode(x)))


class Indexed(torch.utils.data.Dataset):
    """Fixed points plus noise drawn in the DataLoader worker; items carry their index."""

    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = (self.x.sum(1) > 0).long()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + 0.05 * torch.randn(4), self.y[i], i


@ps.parameter("epochs", type=int, default=5)
@ps.parameter("crash_epoch", type=int, default=-1, help="The last rank fails once, mid-epoch.")
@ps.parameter("stop_after", type=int, default=-1, help="Every rank stops after this epoch.")
@ps.experiment
def transparent(params, context):
    model = context.track(model=Net())
    assert isinstance(model, nn.Module)
    optimizer = context.track(
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    )
    loader = context.dataloader(Indexed(16), batch_size=2, shuffle=True, num_workers=1)
    context.load_checkpoint()
    probe = torch.ones(3, 4)
    crash_marker = context.output_dir / "crashed"
    for epoch in context.loop(params.epochs):
        model.train()
        seen = []
        for x, y, index in loader:
            noise = torch.as_tensor(context.rng.normal(0.0, 0.1, size=tuple(x.shape)))
            loss = nn.functional.cross_entropy(model(x + noise.float()), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += index.tolist()
            context.recorder.scalar("loss", loss.item())
            context.recorder.step()
            last = context.rank == context.world_size - 1
            if epoch == params.crash_epoch and last and not crash_marker.exists():
                crash_marker.write_text(str(context.rank))
                raise RuntimeError(f"rank {context.rank} crashes once, in epoch {epoch}")
        model.eval()
        with torch.no_grad():
            encoded = model.encode(probe)  # a method of the model, through the wrapper
        context.recorder.scalar("encoded", float(encoded.sum()), reduce="mean")
        context.recorder.scalar("classes", model.num_classes)  # an attribute of the model
        context.recorder.step()
        (context.output_dir / f"seen.{epoch}.{context.rank}.json").write_text(json.dumps(seen))
        context.save_checkpoint()
        if epoch == params.stop_after:
            raise RuntimeError(f"stopped after epoch {epoch}")
    state = model.state_dict()
    digest = hashlib.sha256()
    for key, value in state.items():
        digest.update(key.encode() + value.numpy().tobytes())
    (context.output_dir / f"final.{context.rank}").write_text(
        json.dumps({"keys": list(state), "sha256": digest.hexdigest()})
    )
'''

SEED = "7"
EPOCHS = 5
SAMPLES = 16
# 16 samples in batches of 2: 8 steps per epoch on one process, 4 on each of two ranks,
# plus one step per epoch for the epoch's values.
WEIGHT_KEYS = ["body.weight", "body.bias", "head.weight", "head.bias"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    root = tmp_path_factory.mktemp("transparent")
    project = Project(root)
    project.write("pystematic.toml", 'modules = ["experiments"]\n')
    project.write("experiments/__init__.py", "")
    project.write("experiments/transparent.py", EXPERIMENT)
    return project


@pytest.fixture(scope="module")
def references(project: Project) -> dict[str, Path]:
    """The uninterrupted runs: one process (``run``) and two ranks (``distributed``)."""
    made = {}
    for name, command in (("run", ["run"]), ("distributed", ["distributed"])):
        launch = ["--nproc", "2"] if name == "distributed" else []
        result = project.run(
            *command, "transparent", *launch, "--random-seed", SEED, "--output-dir", name
        )
        assert result.returncode == 0, result.stderr
        made[name] = project.only_run_dir("transparent", name)
    return made


def _record(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / "run.json").read_text())
    return data


def _seen(run_dir: Path, epoch: int, rank: int) -> list[int]:
    seen: list[int] = json.loads((run_dir / f"seen.{epoch}.{rank}.json").read_text())
    return seen


def _final(run_dir: Path, rank: int) -> dict[str, Any]:
    final: dict[str, Any] = json.loads((run_dir / f"final.{rank}").read_text())
    return final


def _assert_same_training(run_dir: Path, reference: Path) -> None:
    """Bit for bit: every metric of every step, and the weights on every rank."""
    comparison = compare_metrics(run_dir, reference)
    assert comparison.identical, comparison.first_difference
    assert comparison.steps == EPOCHS * 5
    assert _final(run_dir, 0) == _final(run_dir, 1) == _final(reference, 0)
    assert _record(run_dir)["status"] == "completed"


def test_one_file_runs_alike_under_run_and_distributed(references: dict[str, Path]) -> None:
    single, ranks = references["run"], references["distributed"]
    for epoch in range(EPOCHS):
        whole = _seen(single, epoch, 0)
        assert sorted(whole) == list(range(SAMPLES))
        first, second = _seen(ranks, epoch, 0), _seen(ranks, epoch, 1)
        # Disjoint halves of one permutation: the one the single process walked.
        assert len(first) == len(second) == SAMPLES // 2 and not set(first) & set(second)
        assert (first, second) == (whole[0::2], whole[1::2])
    assert len({tuple(_seen(single, epoch, 0)) for epoch in range(EPOCHS)}) == EPOCHS

    for run_dir, steps_per_epoch in ((single, 9), (ranks, 5)):
        rows = read_metrics(run_dir)
        assert [row["step"] for row in rows] == list(range(EPOCHS * steps_per_epoch))
        epoch_rows = [row for row in rows if "encoded" in row]
        assert len(epoch_rows) == EPOCHS and {row["classes"] for row in epoch_rows} == {2}
        assert _record(run_dir)["status"] == "completed"
        assert _final(run_dir, 0)["keys"] == WEIGHT_KEYS  # no "module." prefix
    assert _final(ranks, 0) == _final(ranks, 1)  # DDP kept the ranks in step
    assert _record(ranks)["resumes"] == []


@pytest.mark.parametrize("launcher", ["pystematic", "torchrun"])
def test_a_rank_that_crashes_is_restarted_and_resumes_bit_for_bit(
    project: Project, references: dict[str, Path], launcher: str
) -> None:
    """Rank 1 fails once in epoch 3; --max-restarts 1 restarts the group, which continues
    from the checkpoint of epoch 2 in the same run dir. Under ``pystematic distributed``
    the launcher hands the run dir down; under torchrun the first attempt's rank 0 left
    it in the agent's store."""
    args = ["transparent", "--random-seed", SEED, "--crash-epoch", "3", "--output-dir", launcher]
    if launcher == "pystematic":
        result = project.run("distributed", *args, "--nproc", "2", "--max-restarts", "1")
    else:
        result = project.python(
            *("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"),
            *("--max-restarts", "1", "--log-dir", str(project.root / "torchrun-logs")),
            *("-m", "pystematic", "run", *args),
        )
    assert result.returncode == 0, result.stderr
    run_dir = project.only_run_dir("transparent", launcher)
    assert "RuntimeError: rank 1 crashes once, in epoch 3" in result.stderr
    assert f"continuing {run_dir} from checkpoint-15.pt" in result.stderr
    _assert_same_training(run_dir, references["distributed"])
    record = _record(run_dir)
    [restart] = record["resumes"]
    assert (restart["restart"], restart["count"], restart["checkpoint"]) == (
        "torchelastic",
        1,
        "checkpoint-15.pt",
    )
    assert restart["after"]["status"] == "failed"
    if launcher == "pystematic":
        assert sorted(p.name for p in (run_dir / "torchelastic").glob("*/attempt_*")) == [
            "attempt_0",
            "attempt_1",
        ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _srun(project: Project, args: list[str], extra: dict[str, str]) -> list[int]:
    """Two tasks of a simulated ``srun`` step running ``pystematic run ARGS``; their exit
    codes. When one task fails, the other is stopped, as srun stops a failed step."""
    port = str(_free_port())
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
            "SLURM_JOB_NODELIST": "localhost",
            "MASTER_PORT": port,
            **extra,
        }
        tasks.append(
            subprocess.Popen(
                [sys.executable, "-m", "pystematic", "run", *args],
                cwd=project.root,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        tasks[1].wait(timeout=240)
        if tasks[1].returncode != 0 and tasks[0].poll() is None:
            try:
                tasks[0].wait(timeout=20)  # gloo reports the lost peer by itself
            except subprocess.TimeoutExpired:
                tasks[0].send_signal(signal.SIGTERM)
        for task in tasks:
            task.communicate(timeout=240)
    finally:
        for task in tasks:
            if task.poll() is None:
                task.kill()
                task.wait()
    return [task.returncode for task in tasks]


def test_a_requeued_slurm_job_resumes_bit_for_bit(
    project: Project, references: dict[str, Path]
) -> None:
    """The srun step fails in epoch 3; the requeued job (same job id, SLURM_RESTART_COUNT=1)
    runs the same command again, which finds its run dir by the job id in run.json."""
    args = ["transparent", "--random-seed", SEED, "--crash-epoch", "3", "--output-dir", "slurm"]
    first = _srun(project, args, {})
    assert first[1] == 1 and first[0] != 0
    run_dir = project.only_run_dir("transparent", "slurm")
    record = _record(run_dir)
    assert (record["status"], record["slurm_job_id"]) == ("failed", "4242")

    assert _srun(project, args, {"SLURM_RESTART_COUNT": "1"}) == [0, 0]
    assert project.only_run_dir("transparent", "slurm") == run_dir
    _assert_same_training(run_dir, references["distributed"])
    [restart] = _record(run_dir)["resumes"]
    assert (restart["restart"], restart["count"], restart["checkpoint"]) == (
        "slurm",
        1,
        "checkpoint-15.pt",
    )


def test_a_requeued_batch_job_without_a_checkpoint_starts_over(
    project: Project, references: dict[str, Path]
) -> None:
    """A single process in a batch script fails before its first checkpoint; requeued, it
    starts over in the same run dir, which then holds what an uninterrupted run holds."""
    batch = {"SLURM_JOB_ID": "4343", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}
    args = ["run", "transparent", "--random-seed", SEED, "--crash-epoch", "0"]
    args += ["--output-dir", "batch"]
    failed = project.run(*args, env=batch)
    assert failed.returncode == 1
    run_dir = project.only_run_dir("transparent", "batch")
    assert [row["step"] for row in read_metrics(run_dir)] == [0]  # one step before the crash

    again = project.run(*args, env={**batch, "SLURM_RESTART_COUNT": "1"})
    assert again.returncode == 0, again.stderr
    assert f"no checkpoint yet, starting over in {run_dir}" in again.stderr
    assert project.only_run_dir("transparent", "batch") == run_dir
    reference = references["run"]
    assert compare_metrics(run_dir, reference).identical
    assert _final(run_dir, 0) == _final(reference, 0)
    assert (run_dir / "seeds.log").read_text() == (reference / "seeds.log").read_text()
    record = _record(run_dir)
    assert record["status"] == "completed"
    [restart] = record["resumes"]
    assert (restart["restart"], restart["checkpoint"]) == ("slurm", None)


def test_two_rank_stop_and_resume_is_bit_for_bit(
    project: Project, references: dict[str, Path]
) -> None:
    """Both ranks stop after epoch 1; ``--resume`` continues on two ranks, restoring each
    rank's context.rng, RNG states and the loader's epoch."""
    launch = ["distributed", "transparent", "--nproc", "2"]
    stopped = project.run(
        *launch, "--random-seed", SEED, "--stop-after", "1", "--output-dir", "stopped"
    )
    assert stopped.returncode == 1
    run_dir = project.only_run_dir("transparent", "stopped")
    resumed = project.run(*launch, "--resume", str(run_dir), "--stop-after", "-1")
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_training(run_dir, references["distributed"])
    assert len(_record(run_dir)["resumes"]) == 1
