"""`pystematic reproduce RUN`: real git repositories, real runs rebuilt from their own code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import Project, Result, read_metrics
from pystematic.cli import run_cli
from pystematic.errors import PystematicError
from pystematic.reproduce import check_environment

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

TRAIN = """
    import pystematic as ps

    @ps.parameter("lr", type=float, default=0.1)
    @ps.experiment
    def train(params, context):
        import random

        noise = random.Random(context.new_seed("noise"))
        w = context.new_seed("init") % 1000 / 1000
        for _ in context.loop(6):
            w -= params.lr * (w - noise.random())
            context.recorder.scalar("w", w)
            context.recorder.scalar("loss", (w - 0.5) ** 2)
            context.recorder.step()
        context.recorder.scalar("final", w)
        context.recorder.step()
"""

# The clock differs from run to run; "steady" does not (and comes first in each step).
NOISY = """
    import time

    import pystematic as ps

    @ps.experiment
    def noisy(params, context):
        for _ in range(3):
            context.recorder.scalar("steady", 1.0)
            context.recorder.scalar("clock", time.time())
            context.recorder.step()
"""

DIST = """
    import pystematic as ps

    @ps.experiment
    def dist(params, context):
        import torch
        import torch.distributed as dist

        g = torch.Generator().manual_seed(context.new_seed("data") + context.rank)
        w = torch.zeros(3)
        for _ in context.loop(4):
            grad = torch.randn(3, generator=g)
            dist.all_reduce(grad)
            w -= 0.1 * grad / context.world_size
            context.recorder.scalar("w0", float(w[0]))
            context.recorder.scalar("norm", float(w.norm()))
            context.recorder.step()
"""


def git(repo: Path, *args: str) -> str:
    config = ["-c", "user.email=t@example.com", "-c", "user.name=T", "-c", "commit.gpgsign=false"]
    proc = subprocess.run(["git", *config, *args], cwd=repo, check=True, capture_output=True)
    return proc.stdout.decode()


def worktrees(repo: Path) -> list[str]:
    return [
        line.split(" ", 1)[1]
        for line in git(repo, "worktree", "list", "--porcelain").splitlines()
        if line.startswith("worktree ")
    ]


def leftovers(project: Project) -> list[str]:
    """What a reproduce may leave behind by mistake: worktrees, and dot-folders in output/."""
    output = project.root / "output"
    dots = sorted(p.name for p in output.iterdir() if p.name.startswith(".reproduce"))
    return dots + worktrees(project.root)[1:]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A project in git with runs of `train` (clean, then dirty) and `noisy`; afterwards the
    history moves on and files change, so a rerun from today's checkout would differ."""
    tmp = tmp_path_factory.mktemp("reproduce")
    project = Project(tmp / "proj")
    project.write("pystematic.toml", 'modules = ["exps"]\n')
    project.write("exps/__init__.py", "")
    project.write("exps/train.py", TRAIN)
    project.write("exps/noisy.py", NOISY)
    project.write("exps/dist.py", DIST)
    project.write(".gitignore", "output/\n.pystematic_cache/\n")
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-q", "-m", "start"]):
        git(project.root, *args)
    env = {"GIT_CEILING_DIRECTORIES": str(tmp)}
    runs: dict[str, Any] = {"project": project, "env": env}

    def run(name: str, *args: str) -> None:
        out = project.run("run", *args, env=env)
        assert out.returncode == 0, out.stderr
        known = {p for key, p in runs.items() if isinstance(p, Path)}
        (runs[name],) = set(project.run_dirs(args[0])) - known

    run("clean", "train", "--random-seed", "7")
    run("noisy", "noisy")
    # Dirty: an edited tracked file that imports a new, untracked helper module.
    project.write("exps/helper.py", "SCALE = 3.0\n")
    text = (project.root / "exps/train.py").read_text()
    dirty = text.replace(
        '    context.recorder.scalar("final", w)',
        '    from exps.helper import SCALE\n\n    context.recorder.scalar("final", w * SCALE)',
    )
    assert dirty != text
    (project.root / "exps/train.py").write_text(dirty)
    run("dirty", "train", "--random-seed", "8")
    # The history moves on (other changes committed), and files are edited again.
    project.write("exps/helper.py", "SCALE = 5.0\n")
    git(project.root, "add", ".")
    git(project.root, "commit", "-q", "-m", "later")
    (project.root / "exps/train.py").write_text(dirty.replace("w * SCALE", "w * SCALE + 1"))
    project.write("exps/helper.py", "SCALE = 9.0\n")
    return runs


def reproduce(repo: dict[str, Any], *args: str) -> tuple[Result, Path | None]:
    """Run `pystematic reproduce ARGS`; the result and the run dir it made (if one)."""
    project: Project = repo["project"]
    before = {p for exp in ("train", "noisy", "dist") for p in project.run_dirs(exp)}
    out = project.run("reproduce", *args, env=repo["env"])
    made = {p for exp in ("train", "noisy", "dist") for p in project.run_dirs(exp)} - before
    assert len(made) <= 1, made
    return out, (made.pop() if made else None)


def run_json(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / "run.json").read_text())
    return data


def without_time(run_dir: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in line.items() if k != "time"} for line in read_metrics(run_dir)]


# --- the environment check -------------------------------------------------------------------


def test_the_environment_check_errors_on_python_and_torch_only(tmp_path: Path) -> None:
    (tmp_path / "packages.txt").write_text("numpy==2.0.0\nrich==13.0\ntorch==2.5.1\n")
    data = {"id": "r1", "python_version": "3.11.7", "torch_version": "2.5.1+cu121"}
    now = {"numpy": ("numpy", "2.1.0"), "torch": ("torch", "2.5.1")}
    same = check_environment(
        tmp_path,
        data,
        current={"python_version": "3.11.7", "torch_version": "2.5.1"},
        installed=now,
    )
    assert same.errors == []  # the same torch release, another build: a warning
    assert same.warnings == [
        "torch build 2.5.1+cu121 then, 2.5.1 now",
        "packages differ from packages.txt (2): numpy 2.0.0 -> 2.1.0, rich==13.0 not installed now",
    ]
    other = check_environment(
        tmp_path,
        data,
        current={"python_version": "3.12.1", "torch_version": "2.6.0"},
        installed=now,
    )
    assert other.errors == [
        "run r1 used Python 3.11.7, this is Python 3.12.1",
        "run r1 used torch 2.5.1+cu121, this is torch 2.6.0",
    ]
    (tmp_path / "packages.txt").unlink()
    unknown = check_environment(
        tmp_path, {"id": "r1"}, current={"python_version": "3.11.7"}, installed={}
    )
    assert unknown.errors == []
    assert unknown.warnings == [
        "run.json records no Python version: not compared",
        "the run has no packages.txt: packages not compared",
    ]


def test_a_bad_loop_limit_from_the_parent_is_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from pystematic.runner import loop_limit_from_environment

    monkeypatch.setenv("PYSTEMATIC_LOOP_LIMIT", "3")
    assert loop_limit_from_environment() == 3
    assert "PYSTEMATIC_LOOP_LIMIT" not in os.environ  # read once: nested runs do not inherit
    monkeypatch.setenv("PYSTEMATIC_LOOP_LIMIT", "0")
    with pytest.raises(PystematicError, match="must be a positive integer, got '0'"):
        loop_limit_from_environment()


# --- reproductions ---------------------------------------------------------------------------


@pytest.mark.slow
@needs_git
def test_a_clean_run_is_reproduced_bit_for_bit(repo: dict[str, Any]) -> None:
    clean: Path = repo["clean"]
    out, new = reproduce(repo, clean.name)
    assert out.returncode == 0, out.stderr
    assert new is not None and new.parent == clean.parent
    assert f"reproduce: train {clean.name} from commit " in out.stdout
    assert "metrics: identical: 7 steps x 3 scalars" in out.stdout
    assert "seeds: the same: master seed 7, 2 derived seeds" in out.stdout
    assert "verdict: a reproduction, bit for bit" in out.stdout
    assert without_time(new) == without_time(clean)
    data, original = run_json(new), run_json(clean)
    assert data["reproduces"] == clean.name
    assert (data["git_commit"], data["git_dirty"]) == (original["git_commit"], False)
    record = data["reproduction"]
    assert (record["kind"], record["verified"], record["identical"]) == (
        "reproduction",
        True,
        True,
    )
    assert record["verdict"] == "identical: 7 steps x 3 scalars"
    assert record["seeds"]["identical"] is True
    assert leftovers(repo["project"]) == []


@pytest.mark.slow
@needs_git
def test_a_dirty_run_is_rebuilt_from_its_commit_and_diff(repo: dict[str, Any]) -> None:
    """The run's code, not today's: its commit plus its edits and its untracked helper."""
    dirty: Path = repo["dirty"]
    assert "+SCALE = 3.0" in (dirty / "git.diff").read_text()
    out, new = reproduce(repo, str(dirty))
    assert out.returncode == 0, out.stderr
    assert new is not None
    assert "+ git.diff (2 files)" in out.stdout
    assert "metrics: identical: 7 steps x 3 scalars" in out.stdout
    final = read_metrics(new)[-1]["final"]
    assert final == read_metrics(dirty)[-2]["w"] * 3.0  # SCALE from the untracked helper
    assert (new / "git.diff").read_text() == (dirty / "git.diff").read_text()
    assert run_json(new)["git_commit"] == run_json(dirty)["git_commit"]
    assert leftovers(repo["project"]) == []


@pytest.mark.slow
@needs_git
def test_a_run_that_records_the_clock_is_not_reproduced(repo: dict[str, Any]) -> None:
    noisy: Path = repo["noisy"]
    out, new = reproduce(repo, noisy.name)
    assert out.returncode == 1, out.stderr
    assert new is not None
    then, now = read_metrics(noisy)[0]["clock"], read_metrics(new)[0]["clock"]
    assert f"metrics: differ: first at step 0, 'clock': {then!r} vs {now!r}" in out.stdout
    assert "largest absolute difference" in out.stdout
    assert "verdict: not reproduced" in out.stdout
    record = run_json(new)["reproduction"]
    assert record["identical"] is False
    first = record["metrics"]["first_difference"]
    assert (first["step"], first["tag"], first["a"], first["b"]) == (0, "clock", then, now)


@pytest.mark.slow
@needs_git
def test_steps_stops_the_rerun_and_compares_only_those_steps(repo: dict[str, Any]) -> None:
    clean: Path = repo["clean"]
    out, new = reproduce(repo, clean.name, "--steps", "2")
    assert out.returncode == 0, out.stderr
    assert new is not None
    assert "metrics: identical: 2 steps x 2 scalars" in out.stdout
    assert "seeds: the same: master seed 7, 2 derived seeds" in out.stdout
    assert without_time(new) == without_time(clean)[:2]
    data = run_json(new)
    assert data["status"] == "completed"
    assert data["stopped_after"] == {"iterations": 2, "global_step": 2}
    assert data["note"] == "stopped after 2 iterations of the outermost context.loop"
    assert data["reproduction"]["compared_steps"] == 2


@pytest.mark.slow
@needs_git
def test_flags_after_double_dash_make_a_rerun_with_changes(repo: dict[str, Any]) -> None:
    clean: Path = repo["clean"]
    project: Project = repo["project"]
    out, new = reproduce(repo, clean.name, "--keep-worktree", "--", "--lr", "0.2")
    assert out.returncode == 0, out.stderr
    assert new is not None
    assert f"rerun with changes: lr 0.1 -> 0.2 (not a reproduction of {clean.name})" in out.stdout
    assert "metrics not compared (--verify compares them)" in out.stdout
    record = run_json(new)["reproduction"]
    assert record["kind"] == "rerun with changes"
    assert record["changes"] == {"lr": {"run": 0.1, "rerun": 0.2}}
    assert (record["verified"], record["identical"]) == (False, None)
    # --keep-worktree: the run's code is still there, registered, at the run's commit.
    (kept,) = leftovers(project)[1:]
    assert git(Path(kept), "rev-parse", "HEAD").strip() == run_json(clean)["git_commit"]
    git(project.root, "worktree", "remove", "--force", kept)
    assert leftovers(project) == []

    out, new = reproduce(repo, clean.name, "--verify", "--", "--lr", "0.2")
    assert out.returncode == 1, out.stderr
    assert new is not None
    assert "metrics: differ: first at step 0, 'w': " in out.stdout
    assert run_json(new)["reproduction"]["identical"] is False


@pytest.mark.slow
@needs_git
def test_a_distributed_run_is_reproduced_on_as_many_ranks(repo: dict[str, Any]) -> None:
    project: Project = repo["project"]
    started = project.run("distributed", "dist", "--nproc", "2", env=repo["env"])
    assert started.returncode == 0, started.stderr
    (original,) = project.run_dirs("dist")
    out, new = reproduce(repo, original.name)
    assert out.returncode == 0, out.stderr
    assert new is not None
    assert "metrics: identical: 4 steps x 2 scalars" in out.stdout
    data = run_json(new)
    assert (data["world_size"], data["backend"]) == (2, "gloo")
    assert data["reproduces"] == original.name
    assert leftovers(project) == []


# --- runs that cannot be reproduced: one line, exit 2, nothing made ---------------------------


def _edited_copy(run_dir: Path, folder: Path, **fields: Any) -> Path:
    copy = folder / run_dir.name
    shutil.copytree(run_dir, copy)
    data = run_json(copy) | fields
    (copy / "run.json").write_text(json.dumps(data))
    return copy


def _rewritten(repo: dict[str, Any], tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the project whose history was rewritten: the runs' commits are gone."""
    root = tmp_path / "rewritten"
    shutil.copytree(repo["project"].root, root)
    git(root, "checkout", "-q", "--orphan", "fresh")
    git(root, "commit", "-q", "-m", "history rewritten")
    git(root, "branch", "-D", "main")
    git(root, "reflog", "expire", "--expire=now", "--all")
    git(root, "gc", "-q", "--prune=now")
    return root, root / "output" / "train" / repo["clean"].name


@pytest.mark.slow
@needs_git
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("not a run", "exps is not a run dir (no run.json)"),
        ("no git", "has no git information (it did not run in a git checkout with a commit)"),
        ("torch", "used torch 1.13.1, this is torch "),
        ("python", "used Python 2.7.18, this is Python "),
        ("missing commit", "is not in the repository at "),
        ("diff does not apply", "does not apply at commit "),
        ("tensorboard only", "recorded its metrics without the jsonl backend"),
    ],
)
def test_a_run_that_cannot_be_rebuilt_is_one_line_and_exit_2(
    repo: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    message: str,
) -> None:
    project: Project = repo["project"]
    root = project.root
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(root.parent))
    copies = tmp_path / "copies"
    copies.mkdir()
    clean, dirty = repo["clean"], repo["dirty"]
    if case == "not a run":
        target = root / "exps"
    elif case == "no git":
        target = _edited_copy(clean, copies, git_commit=None, git_dirty=None)
    elif case == "torch":  # another torch, as run.json says
        target = _edited_copy(clean, copies, torch_version="1.13.1")
    elif case == "python":
        target = _edited_copy(clean, copies, python_version="2.7.18")
    elif case == "missing commit":
        root, target = _rewritten(repo, tmp_path)
    elif case == "tensorboard only":  # nothing to compare the rerun with
        target = _edited_copy(clean, copies)
        (target / "metrics.jsonl").unlink()
    else:
        target = _edited_copy(dirty, copies)
        patch = target / "git.diff"
        patch.write_text(patch.read_text().replace("context.recorder.step()", "recorder.step()"))
    before = sorted(p for p in root.rglob("*") if ".git" not in p.parts)
    code = run_cli(["-C", str(root), "reproduce", str(target)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: ")
    assert message in captured.err
    assert sorted(p for p in root.rglob("*") if ".git" not in p.parts) == before
    assert len(worktrees(root)) == 1
