"""GitProbe against real git repositories, packages.txt and the environment record."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from pystematic._version import __version__
from pystematic.metadata import (
    GitInfo,
    GitProbe,
    environment_info,
    write_git_diff,
    write_packages,
)

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repo with one commit on branch `main`: train.py, a .gitignore and an output dir."""
    repo = tmp_path / "project"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.email", "test@example.com")
    _git(repo, "config", "user.name", "Test")
    _git(repo, "config", "commit.gpgsign", "false")
    (repo / "train.py").write_text("import torch\n\nEPOCHS = 10\n")
    (repo / ".gitignore").write_text("*.ckpt\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")
    return repo


@needs_git
def test_clean_repo(repo: Path, tmp_path: Path) -> None:
    info = GitProbe(repo).result()
    assert info == GitInfo(
        commit=_git(repo, "rev-parse", "HEAD"), branch="main", dirty=False, diff=None
    )
    write_git_diff(info, tmp_path)
    assert not (tmp_path / "git.diff").exists()


@needs_git
def test_dirty_repo_diff_applies_to_the_commit(repo: Path, tmp_path: Path) -> None:
    (repo / "train.py").write_text("import torch\n\nEPOCHS = 20\n")
    (repo / "models").mkdir()
    (repo / "models" / "net.py").write_text("class Net:\n    pass")  # no final newline
    (repo / "run.sh").write_text("#!/bin/sh\npython train.py\n")
    (repo / "run.sh").chmod(0o755)
    (repo / "weights.ckpt").write_text("ignored by .gitignore\n")
    (repo / "data.bin").write_bytes(b"\0\1\2")  # not source
    (repo / ".venv" / "lib").mkdir(parents=True)
    (repo / ".venv" / "lib" / "site.py").write_text("# a virtualenv nobody ignored\n")
    (repo / "output" / "train" / "run1").mkdir(parents=True)
    (repo / "output" / "train" / "run1" / "parameters.toml").write_text("epochs = 20\n")

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # From a subfolder of the repo, as when the project root is not the repo root.
    info = GitProbe(repo / "models", exclude=(repo / "output",)).result()
    assert info.commit == _git(repo, "rev-parse", "HEAD")
    assert info.branch == "main"
    assert info.dirty is True
    write_git_diff(info, run_dir)
    diff = (run_dir / "git.diff").read_text()
    assert diff == info.diff
    assert "-EPOCHS = 10\n+EPOCHS = 20\n" in diff
    assert "+++ b/models/net.py\n" in diff
    for left_out in ("weights.ckpt", "data.bin", ".venv", "parameters.toml"):
        assert left_out not in diff

    # The diff recreates the working tree from the commit.
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(repo), str(clone))
    _git(clone, "apply", str(run_dir / "git.diff"))
    for name in ("train.py", "models/net.py", "run.sh"):
        assert (clone / name).read_bytes() == (repo / name).read_bytes()
    assert os.access(clone / "run.sh", os.X_OK)


@needs_git
def test_only_untracked_source_makes_it_dirty(repo: Path) -> None:
    (repo / "notes.pdf").write_bytes(b"%PDF")
    assert GitProbe(repo).result().dirty is False
    (repo / "augment.py").write_text("FLIP = True\n")
    info = GitProbe(repo).result()
    assert info.dirty is True
    assert info.diff is not None and "+FLIP = True\n" in info.diff


@needs_git
def test_detached_head_has_no_branch(repo: Path) -> None:
    _git(repo, "checkout", "-q", "--detach")
    info = GitProbe(repo).result()
    assert info.commit == _git(repo, "rev-parse", "HEAD")
    assert info.branch is None


@needs_git
def test_repo_without_commits(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "train.py").write_text("print(1)\n")
    (tmp_path / "staged.py").write_text("print(2)\n")
    _git(tmp_path, "add", "staged.py")
    info = GitProbe(tmp_path).result()
    assert (info.commit, info.branch, info.dirty) == (None, "main", True)
    assert info.diff is not None
    assert "+print(1)\n" in info.diff and "+print(2)\n" in info.diff


@needs_git
def test_not_a_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Never find a repo above tmp_path (the tests may run inside one).
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    (tmp_path / "train.py").write_text("print(1)\n")
    info = GitProbe(tmp_path).result()
    assert info == GitInfo(commit=None, branch=None, dirty=None, diff=None)


def test_git_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    probe = GitProbe(tmp_path)
    assert probe.result() == GitInfo(commit=None, branch=None, dirty=None, diff=None)
    write_git_diff(probe.result(), tmp_path)
    assert not (tmp_path / "git.diff").exists()


def test_packages_txt(tmp_path: Path) -> None:
    path = tmp_path / "packages.txt"
    write_packages(path)
    lines = path.read_text().splitlines()
    assert f"numpy=={metadata.version('numpy')}" in lines
    assert f"pystematic=={__version__}" in lines
    names = [line.split("==")[0].lower().replace("_", "-") for line in lines]
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    assert all(line.count("==") == 1 for line in lines)


def test_environment_info_with_torch_imported() -> None:
    import torch

    info = environment_info()
    assert info["torch_version"] == str(torch.__version__)
    assert info["cuda_version"] == torch.version.cuda
    assert info["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert info["pystematic_version"] == __version__
    assert isinstance(info["host"], str) and info["host"]
    if torch.cuda.is_available():
        assert isinstance(info["gpu"], str) and torch.cuda.get_device_name(0) in info["gpu"]
    else:
        assert info["gpu"] is None


def test_environment_info_does_not_import_torch() -> None:
    code = (
        "import sys, json; from pystematic.metadata import environment_info;"
        "info = environment_info(); print(json.dumps(info)); print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    info_line, torch_imported = result.stdout.splitlines()
    assert torch_imported == "False"
    assert f'"torch_version": "{metadata.version("torch")}"' in info_line
    assert '"gpu": null' in info_line
