"""Shared fixtures: throw-away projects and a real ``pystematic`` process to run in them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["Project", "Result", "read_metrics", "tomllib"]

# Variables that would make a test process believe it is a rank of a launched group.
LAUNCH_VARS = (
    "RANK",
    "LOCAL_RANK",
    "GROUP_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def _strip_launch_vars() -> None:
    for key in list(os.environ):
        if key in LAUNCH_VARS or key.startswith(("SLURM_", "TORCHELASTIC_", "PET_")):
            del os.environ[key]


# Module- and session-scoped fixtures run before any function fixture: clean up front.
_strip_launch_vars()

# Started as a background job (`pytest &`), the suite would have SIGINT ignored, and so
# would every process it starts (as under nohup, they keep ignoring Ctrl-C).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _compile_pystematic() -> None:
    """Bytecode for pystematic's own sources, once: the tests start hundreds of processes,
    and where PYTHONDONTWRITEBYTECODE is set each would compile them again (~0.2 s)."""
    import compileall

    import pystematic

    compileall.compile_dir(str(Path(pystematic.__file__).parent), quiet=1)


_compile_pystematic()


@pytest.fixture(autouse=True)
def clean_environ() -> Iterator[None]:
    """No test inherits launcher variables, and none leaks what it exported to the next."""
    _strip_launch_vars()
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class Project:
    """A project folder in tmp_path, with helpers to write files and run the CLI in it."""

    root: Path

    def write(self, relpath: str, text: str) -> Path:
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    def run(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 180,
    ) -> Result:
        """Run ``python -m pystematic ARGS`` as a real process."""
        return self.python("-m", "pystematic", *args, env=env, cwd=cwd, timeout=timeout)

    def python(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 180,
    ) -> Result:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = subprocess.run(
            [sys.executable, *args],
            cwd=cwd or self.root,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def run_dirs(self, experiment: str, output: str = "output") -> list[Path]:
        folder = self.root / output / experiment
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))

    def only_run_dir(self, experiment: str, output: str = "output") -> Path:
        dirs = self.run_dirs(experiment, output)
        assert len(dirs) == 1, dirs
        return dirs[0]


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    root = tmp_path / "proj"
    root.mkdir()
    yield Project(root)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
