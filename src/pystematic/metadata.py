"""What ran: the git state of the project, installed packages, host, Python, torch and GPU.

`GitProbe` starts its ``git`` processes the moment it is made, so a run can make it
before importing the user's modules (and torch) and collect the answer afterwards:
the processes finish in the shadow of the import.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = [
    "GitInfo",
    "GitProbe",
    "PackagesProbe",
    "environment_info",
    "write_git_diff",
    "write_packages",
]

# Untracked files with these suffixes count as source: their content goes into git.diff.
SOURCE_SUFFIXES = frozenset(
    {
        ".py", ".pyi", ".pyx", ".pxd", ".ipynb", ".toml", ".cfg", ".ini", ".yaml", ".yml",
        ".sh", ".c", ".cc", ".cpp", ".h", ".hpp", ".cu", ".cuh",
    }
)  # fmt: skip
_MAX_UNTRACKED_FILE = 1 << 20  # bytes; bigger untracked files are left out of git.diff
_MAX_UNTRACKED_TOTAL = 16 << 20


@dataclass(frozen=True)
class GitInfo:
    """The project's git state; every field is None when it is not a git checkout.

    ``diff`` is ``git diff HEAD`` plus the untracked source files as new-file diffs
    (it applies with ``git apply``); it is None when the checkout is clean, so
    ``dirty`` is exactly ``diff is not None``.
    """

    commit: str | None
    branch: str | None
    dirty: bool | None
    diff: str | None


_NO_GIT = GitInfo(commit=None, branch=None, dirty=None, diff=None)


class _Command:
    """A git process writing to a temporary file, so a large output never blocks it."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        import tempfile

        self.out: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        try:
            self.proc = subprocess.Popen(
                ["git", *args],
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=self.out,
                stderr=subprocess.DEVNULL,
                env=_git_env(),
            )
        except BaseException:
            self.out.close()
            raise

    def wait(self, timeout: float) -> tuple[int, bytes]:
        returncode = self.proc.wait(timeout=timeout)
        self.out.seek(0)
        return returncode, self.out.read()

    def wait_and_close(self, timeout: float) -> tuple[int, bytes]:
        try:
            return self.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.out.close()


def _git_env() -> dict[str, str]:
    env = dict(os.environ)
    env["GIT_OPTIONAL_LOCKS"] = "0"  # never take index.lock: the user may be committing
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


# Untracked files (not ignored), from the top of the repo, whatever the working folder.
_LS_FILES = ["ls-files", "--others", "--exclude-standard", "-z", "--full-name", ":/"]


class GitProbe:
    """Asks git about ``root`` in the background; `result` collects the answer.

    ``exclude`` names folders (the output dir) whose untracked files are not source.
    """

    def __init__(self, root: Path, exclude: tuple[Path, ...] = ()) -> None:
        self.root = Path(root).resolve()
        self._exclude = tuple(Path(p).resolve() for p in exclude)
        self._commands: dict[str, _Command] = {}
        self._info: GitInfo | None = None
        diff_args = ["--no-color", "--no-ext-diff", "--src-prefix=a/", "--dst-prefix=b/"]
        try:
            for key, args in {
                "head": ["rev-parse", "--show-toplevel", "HEAD"],
                "branch": ["symbolic-ref", "--short", "-q", "HEAD"],
                "diff": ["diff", *diff_args, "HEAD", "--"],
                "untracked": _LS_FILES,
            }.items():
                self._commands[key] = _Command(args, self.root)
        except OSError:  # git is not installed, or root is gone
            self._close()
            self._info = _NO_GIT

    def result(self, timeout: float = 10.0) -> GitInfo:
        """Waits for git; all fields None when not a repo, git is missing or too slow."""
        if self._info is None:
            try:
                self._info = self._collect(timeout)
            except (OSError, subprocess.TimeoutExpired, UnicodeDecodeError):
                self._info = _NO_GIT
            finally:
                self._close()
        return self._info

    def _collect(self, timeout: float) -> GitInfo:
        deadline = time.monotonic() + timeout
        outputs: dict[str, tuple[int, bytes]] = {}
        for key, command in self._commands.items():
            outputs[key] = command.wait(max(0.0, deadline - time.monotonic()))
        head_rc, head = outputs["head"]
        lines = os.fsdecode(head).splitlines()
        if not lines:  # not a git repository
            return _NO_GIT
        toplevel = Path(lines[0])
        commit = lines[1] if head_rc == 0 and len(lines) > 1 else None
        branch_rc, branch = outputs["branch"]
        diff_rc, diff = outputs["diff"]
        new_files = outputs["untracked"][1]
        if diff_rc != 0:
            diff = b""
        if commit is None:  # no commit yet: every file, staged ones included, is new
            ls_files = _Command([*_LS_FILES, "--cached"], self.root)
            new_files = ls_files.wait_and_close(max(0.0, deadline - time.monotonic()))[1]
        untracked = [p for p in os.fsdecode(new_files).split("\0") if p]
        text = diff.decode("utf-8", "surrogateescape")
        text += self._untracked_diff(toplevel, untracked)
        return GitInfo(
            commit=commit,
            branch=(branch.decode().strip() or None) if branch_rc == 0 else None,
            dirty=bool(text),
            diff=text or None,
        )

    def _untracked_diff(self, toplevel: Path, paths: list[str]) -> str:
        parts: list[str] = []
        total = 0
        excluded = self._excluded_prefixes(toplevel)
        for rel in sorted(paths):
            if not _is_source(rel, excluded):
                continue
            path = toplevel / rel
            try:
                if not path.is_file() or path.stat().st_size > _MAX_UNTRACKED_FILE:
                    continue
                data = path.read_bytes()
                executable = os.access(path, os.X_OK)
            except OSError:
                continue
            if b"\0" in data[:8192]:  # binary
                continue
            total += len(data)
            if total > _MAX_UNTRACKED_TOTAL:
                break
            parts.append(_new_file_diff(rel, data.decode("utf-8", "surrogateescape"), executable))
        return "".join(parts)

    def _excluded_prefixes(self, toplevel: Path) -> tuple[str, ...]:
        """The excluded folders (the output dir) as ``rel/`` prefixes of git's paths."""
        prefixes = []
        top = toplevel.resolve()
        for folder in self._exclude:
            try:
                prefixes.append(folder.relative_to(top).as_posix().rstrip("/") + "/")
            except ValueError:
                continue  # outside the repository: git does not list it
        return tuple(prefixes)

    def _close(self) -> None:
        for command in self._commands.values():
            with contextlib.suppress(OSError):
                command.close()
        self._commands.clear()


def _is_source(rel: str, excluded: tuple[str, ...]) -> bool:
    """Whether an untracked file (a path relative to the repository) goes into git.diff."""
    if not rel.endswith(tuple(SOURCE_SUFFIXES)) or rel.startswith(excluded):
        return False
    # Dot-folders, caches and virtualenvs that nobody listed in .gitignore.
    return not any(
        p.startswith(".") or p in ("__pycache__", "site-packages") for p in rel.split("/")[:-1]
    )


def _new_file_diff(rel: str, text: str, executable: bool) -> str:
    """A git-style diff that creates ``rel`` with ``text`` (what ``git diff`` would print)."""
    mode = "100755" if executable else "100644"
    head = f"diff --git a/{rel} b/{rel}\nnew file mode {mode}\n"
    if not text:
        return head
    lines = text.split("\n")  # not splitlines(): '\f', '\x1c' etc. are no line ends to git
    if lines[-1]:
        end = "\\ No newline at end of file\n"
    else:
        end = ""
        lines.pop()
    body = "".join(f"+{line}\n" for line in lines) + end
    return f"{head}--- /dev/null\n+++ b/{rel}\n@@ -0,0 +1,{len(lines)} @@\n{body}"


def write_git_diff(info: GitInfo, run_dir: Path) -> None:
    """Writes ``run_dir/git.diff`` when the checkout is dirty; nothing otherwise."""
    if info.dirty and info.diff:
        with open(Path(run_dir) / "git.diff", "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(info.diff)


def write_packages(path: Path) -> None:
    """Writes the installed distributions as sorted ``name==version`` lines."""
    Path(path).write_text(packages_text(), encoding="utf-8")


class PackagesProbe:
    """Lists the installed distributions for packages.txt without slowing the run down.

    The listing is cached in ``cache_file``, keyed by the interpreter and the
    modification times of the folders on ``sys.path`` (installing or removing a
    distribution changes its folder). Without a valid cache a child interpreter lists
    them, started before the user's modules are imported, so the work overlaps
    ``import torch`` on another core.
    """

    def __init__(self, cache_file: Path | None = None) -> None:
        self._cache_file = cache_file
        self._key = _environment_key()
        self._text = _read_packages_cache(cache_file, self._key) if cache_file else None
        self._proc: subprocess.Popen[bytes] | None = None
        if self._text is not None:
            self._cache_file = None  # valid as it is: nothing to write back
            return
        code = (
            "import sys; from pystematic.metadata import packages_text as t; sys.stdout.write(t())"
        )
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", code],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
            )
        except OSError:
            self._proc = None

    def text(self, timeout: float = 10.0) -> str:
        """The listing: cached, from the child, or (when the child failed) made here."""
        if self._text is None and self._proc is not None:
            try:
                out, _ = self._proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.communicate()
            else:
                if self._proc.returncode == 0 and out:
                    self._text = out.decode("utf-8")
        if self._text is None:
            self._text = packages_text()
        if self._cache_file is not None:
            _write_packages_cache(self._cache_file, self._key, self._text)
            self._cache_file = None
        return self._text

    def write(self, path: Path, timeout: float = 10.0) -> None:
        Path(path).write_text(self.text(timeout), encoding="utf-8")


def _environment_key() -> list[Any]:
    """The interpreter and the folders on ``sys.path`` that hold distributions, each with
    its modification time (installing or removing a distribution changes it). Folders
    without any (the script's, the project's) are left out: they change all the time."""
    key: list[Any] = [sys.executable]
    for entry in sys.path:
        try:
            with os.scandir(entry or ".") as listing:
                holds = any(e.name.endswith((".dist-info", ".egg-info")) for e in listing)
            if holds:
                key.append([entry, os.stat(entry or ".").st_mtime_ns])
        except OSError:
            continue
    return key


def _read_packages_cache(path: Path, key: list[Any]) -> str | None:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        not isinstance(data, dict)
        or data.get("key") != key
        or not isinstance(data.get("text"), str)
    ):
        return None
    return str(data["text"])


def _write_packages_cache(path: Path, key: list[Any], text: str) -> None:
    import json

    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "text": text}), encoding="utf-8")
        os.replace(tmp, path)


def packages_text() -> str:
    """Installed distributions as sorted ``name==version`` lines.

    Reads ``importlib.metadata`` (no ``pip freeze``); where a distribution is
    installed twice, the one found first on ``sys.path`` wins, as for imports.
    """
    from importlib import metadata

    found: dict[str, str] = {}
    for dist in metadata.distributions():
        meta = dist.metadata  # parsed on each access: read it once
        name = meta["Name"]
        if not name:
            continue
        found.setdefault(_normalize(name), f"{name}=={meta['Version']}")
    return "".join(found[key] + "\n" for key in sorted(found))


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def environment_info() -> dict[str, Any]:
    """Host, user, Python, pystematic, torch, CUDA and GPU, for run.json.

    torch is looked at only when already imported (importing it costs seconds);
    otherwise ``torch_version`` comes from the installed metadata and ``gpu`` is None.
    CUDA is never initialised where it is unavailable.
    """
    import platform
    import socket

    from pystematic._version import __version__

    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "user": _user(),
        "python_version": platform.python_version(),
        "pystematic_version": __version__,
        "torch_version": None,
        "cuda_version": None,
        "gpu": None,
    }
    torch = sys.modules.get("torch")
    if torch is None:
        info["torch_version"] = _installed_version("torch")
        return info
    info["torch_version"] = str(torch.__version__)
    info["cuda_version"] = getattr(getattr(torch, "version", None), "cuda", None)
    info["gpu"] = _gpu_names(torch)
    return info


def _user() -> str | None:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no USER variable and no passwd entry (some containers)
        return None


def _installed_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _gpu_names(torch: Any) -> str | None:
    """ "NAME" for one visible GPU, "N x NAME" for N alike, "A, B" for a mix; else None."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "CUDA initialization: no driver found" etc.
            if not torch.cuda.is_available():
                return None
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return None
    if not names:
        return None
    if len(set(names)) == 1:
        return names[0] if len(names) == 1 else f"{len(names)} x {names[0]}"
    return ", ".join(names)
