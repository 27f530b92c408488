"""Rerunning a past run from its own code and proving it matches: ``pystematic reproduce RUN``.

The run's commit is checked out in a temporary git worktree under the output dir, with
the run's git.diff applied (its untracked source files are new-file diffs in it); the
installed packages are compared with its packages.txt and the Python and torch versions
with its run.json; the experiment is rerun from the worktree, in a child ``pystematic``
process, with the run's parameters.toml (its seed included) into a new run dir beside the
original; then :mod:`pystematic.diff` compares the two runs' metrics and seeds, and the
verdict goes into the new run.json. Everything that can be wrong with the run, the
repository or the environment is found before anything is made.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import diff, rundir
from .context import LOOP_LIMIT_ENV
from .errors import ConfigError, ReproduceError, RunDirError
from .metadata import environment_info, packages_text
from .params import cli_name
from .project import Project, load_project
from .start import RUN_FIELDS_ENV

__all__ = [
    "Drift",
    "Options",
    "check_environment",
    "reproduce",
]

#: run.json keys that may differ after a rerun without making it another environment's
#: run, but are worth saying (GPU model and CUDA change kernels, so results may move).
_AFTER_RUN_KEYS = {"cuda_version": "CUDA", "gpu": "GPU", "pystematic_version": "pystematic"}
_REPRODUCTION = "reproduction"
_CHANGED = "rerun with changes"


@dataclass(frozen=True)
class Options:
    """What the user asked of ``pystematic reproduce``.

    ``verify`` None: compare when the rerun's parameters are the run's (no flag after
    ``--`` changed one). ``flags``: the parameter flags after ``--``.
    """

    verify: bool | None = None
    steps: int | None = None
    keep_worktree: bool = False
    allow_package_drift: bool = False
    flags: tuple[str, ...] = ()


# --- the environment -------------------------------------------------------------------------


@dataclass
class Drift:
    """How this environment differs from the run's.

    ``errors``: another Python or torch version (refused unless --allow-package-drift);
    ``warnings``: everything else worth saying; ``packages`` is None without packages.txt.
    """

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    packages: diff.PackagesComparison | None = None

    def to_json(self) -> dict[str, Any]:
        packages = self.packages
        return {
            "errors": self.errors,
            "warnings": self.warnings,
            "packages": None
            if packages is None
            else {
                "changed": [{"name": n, "run": a, "now": b} for n, a, b in packages.changed],
                "not_installed": packages.removed,
                "new": packages.added,
            },
        }


def check_environment(
    run_dir: Path,
    data: Mapping[str, Any],
    *,
    current: Mapping[str, Any] | None = None,
    installed: Mapping[str, tuple[str, str]] | None = None,
) -> Drift:
    """Compare this environment with the run's: packages.txt, Python and torch versions.

    ``current`` (``environment_info()``) and ``installed`` (the listing packages.txt would
    hold now) are looked up when not given. torch is compared without its local label
    (``2.3.1`` and ``2.3.1+cu121`` are the same release; a different build is a warning).
    """
    current = environment_info() if current is None else current
    if installed is None:
        installed = diff.parse_packages(packages_text())
    recorded = diff.read_packages(run_dir / diff.PACKAGES_FILE)
    drift = Drift()
    if recorded is not None:
        drift.packages = diff.compare_package_listings(recorded, installed)
    run_id = str(data.get("id") or run_dir.name)

    python_then, python_now = data.get("python_version"), current.get("python_version")
    if not python_then:
        drift.warnings.append("run.json records no Python version: not compared")
    elif python_then != python_now:
        drift.errors.append(f"run {run_id} used Python {python_then}, this is Python {python_now}")

    torch_then = data.get("torch_version") or _version_in(recorded, "torch")
    torch_now = current.get("torch_version")
    if not torch_then:
        if torch_now:
            drift.warnings.append("run.json records no torch version: not compared")
    elif not torch_now:
        drift.errors.append(f"run {run_id} used torch {torch_then}, torch is not installed here")
    elif _release(torch_then) != _release(torch_now):
        drift.errors.append(f"run {run_id} used torch {torch_then}, this is torch {torch_now}")
    elif torch_then != torch_now:
        drift.warnings.append(f"torch build {torch_then} then, {torch_now} now")

    if recorded is None:
        drift.warnings.append("the run has no packages.txt: packages not compared")
    elif drift.packages is not None and not drift.packages.identical:
        drift.warnings.append(_describe_packages(drift.packages))
    return drift


def _release(version: str) -> str:
    return version.split("+", 1)[0]


def _version_in(listing: Mapping[str, tuple[str, str]] | None, name: str) -> str | None:
    found = (listing or {}).get(name)
    return found[1] if found else None


def _describe_packages(packages: diff.PackagesComparison) -> str:
    """``packages differ from packages.txt (3): numpy 1.26.4 -> 2.0.0, ...`` in one line."""
    parts = [f"{name} {then} -> {now}" for name, then, now in packages.changed]
    parts += [f"{p} not installed now" for p in packages.removed]
    parts += [f"{p} new" for p in packages.added]
    shown = ", ".join(parts[:8]) + (f", ... ({len(parts) - 8} more)" if len(parts) > 8 else "")
    return f"packages differ from packages.txt ({len(parts)}): {shown}"


# --- git -------------------------------------------------------------------------------------


def _git(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    try:
        return subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
        )
    except OSError as e:
        raise ReproduceError(f"cannot run git: {e.strerror or e}") from None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:  # git's own diagnosis, not its "hint:" lines
        for prefix in ("error:", "fatal:"):
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
    return lines[0] if lines else "no message"


def _toplevel(root: Path, run_id: str, commit: str) -> Path:
    if shutil.which("git") is None:
        raise ReproduceError(f"git is not installed: cannot check out the code of run {run_id}")
    found = _git(["rev-parse", "--show-toplevel"], root)
    if found.returncode != 0 or not found.stdout.strip():
        raise ReproduceError(
            f"{root} is not in a git repository: cannot check out commit {commit[:12]} "
            f"of run {run_id}"
        )
    return Path(found.stdout.strip()).resolve()


def _check_commit(toplevel: Path, commit: str, run_id: str) -> None:
    if _git(["cat-file", "-e", f"{commit}^{{commit}}"], toplevel).returncode != 0:
        raise ReproduceError(
            f"commit {commit[:12]} of run {run_id} is not in the repository at {toplevel} "
            "(history rewritten, or a shallow clone?)"
        )


@contextlib.contextmanager
def worktree(
    toplevel: Path, commit: str, patch: Path | None, parent: Path, *, keep: bool, run_id: str
) -> Iterator[Path]:
    """A git worktree of *toplevel* at *commit* with *patch* applied, in a new dot-folder
    of *parent* (``runs`` and ``diff`` skip those).

    Removed (and unregistered) afterwards, whatever happens, unless ``keep`` and it was
    built; a patch that does not apply is a :class:`ReproduceError`.
    """
    folder = Path(tempfile.mkdtemp(prefix=f".reproduce-{run_id}-", dir=parent))
    built = False
    try:
        added = _git(["worktree", "add", "--detach", str(folder), commit], toplevel)
        if added.returncode != 0:
            raise ReproduceError(
                f"cannot check out commit {commit[:12]}: {_first_line(added.stderr)}"
            )
        if patch is not None:
            applied = _git(["apply", "--whitespace=nowarn", str(patch)], folder)
            if applied.returncode != 0:
                raise ReproduceError(
                    f"the git.diff of run {run_id} does not apply at commit {commit[:12]}: "
                    f"{_first_line(applied.stderr)}"
                )
        built = True
        yield folder
    finally:
        if not (keep and built):
            remove_worktree(toplevel, folder)


def remove_worktree(toplevel: Path, folder: Path) -> None:
    """Remove a worktree folder and its registration in the repository."""
    with contextlib.suppress(ReproduceError):
        removed = _git(["worktree", "remove", "--force", str(folder)], toplevel)
        if removed.returncode != 0 or folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
            _git(["worktree", "prune"], toplevel)
    shutil.rmtree(folder, ignore_errors=True)


def _patched_files(patch: Path) -> int:
    with open(patch, "rb") as f:
        return sum(1 for line in f if line.startswith(b"diff --git "))


# --- the run to reproduce --------------------------------------------------------------------


@dataclass
class Original:
    """The run to reproduce: its folder and what its run.json says."""

    path: Path
    data: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.data.get("id") or self.path.name)

    @property
    def experiment(self) -> str:
        return str(self.data["experiment"])

    @property
    def world_size(self) -> int:
        return int(self.data.get("world_size") or 1)

    @property
    def patch(self) -> Path | None:
        path = self.path / diff.GIT_DIFF_FILE
        return path if path.is_file() else None


def _original(path: Path) -> Original:
    """The run at *path*, checked for what a rerun needs (before anything is made)."""
    original = Original(path, diff.read_run_json(path))
    data = original.data
    if not data.get("experiment"):
        raise ReproduceError(f"{path / diff.RUN_FILE} names no experiment")
    if not (path / "parameters.toml").is_file():
        raise ReproduceError(f"run {original.id} has no parameters.toml to rerun it with")
    if not data.get("git_commit"):
        raise ReproduceError(
            f"run {original.id} has no git information (it did not run in a git checkout "
            "with a commit): its code cannot be rebuilt"
        )
    if data.get("git_dirty") and original.patch is None:
        raise ReproduceError(
            f"run {original.id} ran with uncommitted changes but its git.diff is missing"
        )
    return original


def _command(
    original: Original, project_root: Path, output_dir: Path, options: Options
) -> list[str]:
    """The child ``pystematic`` command that reruns *original* from *project_root*."""
    path = [cli_name(part) for part in original.experiment.split(".")]
    if original.world_size > 1:
        flag = "--gpus" if original.data.get("backend") == "nccl" else "--nproc"
        head = ["distributed", *path, flag, str(original.world_size)]
    else:
        head = ["run", *path]
    command = [
        sys.executable, "-m", "pystematic", "-C", str(project_root), *head,
        "--params-file", str(original.path / "parameters.toml"),
        "--output-dir", str(output_dir),
    ]  # fmt: skip
    if not any(f == "--recorder" or f.startswith("--recorder=") for f in options.flags):
        command += _recorder_flags(project_root)
    return [*command, *options.flags]


def _recorder_flags(project_root: Path) -> list[str]:
    """The project's recorder backends plus jsonl, when its config leaves jsonl out: the
    verdict is made from metrics.jsonl."""
    try:
        backends = list(load_project(explicit_root=project_root).recorder)
    except ConfigError:
        return []  # the rerun says what is wrong with the config
    if "jsonl" in (b.strip().lower() for b in backends):
        return []
    return [flag for name in [*backends, "jsonl"] for flag in ("--recorder", name)]


def _wait(proc: subprocess.Popen[bytes]) -> int:
    """Wait for the rerun. Ctrl-C reaches it from the terminal (it records how it ended);
    a SIGTERM sent to this process is passed on to it, once."""
    if threading.current_thread() is not threading.main_thread():
        return proc.wait()
    forwarded = False

    def forward(signum: int, frame: Any) -> None:
        nonlocal forwarded
        if not forwarded:
            forwarded = True
            with contextlib.suppress(OSError):
                proc.send_signal(signum)

    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
        signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
    }
    try:
        return proc.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _new_run(output_dir: Path, experiment: str, before: set[Path], pid: int) -> Path | None:
    """The run dir the rerun (process *pid*) made: new, and its run.json names that pid."""
    folder = output_dir / experiment
    if not folder.is_dir():
        return None
    for path in sorted(set(folder.iterdir()) - before):
        try:
            data = rundir.read_run_json(path)
        except RunDirError:
            continue
        if data.get("pid") == pid:
            return path
    return None


def _recorded_without_jsonl(run_dir: Path) -> bool:
    """The run recorded metrics (tensorboard event files) but has no metrics.jsonl."""
    if (run_dir / diff.METRICS_FILE).is_file():
        return False
    return next(run_dir.rglob("events.out.tfevents*"), None) is not None


def _make_folder(path: Path) -> list[Path]:
    """``mkdir -p``; the folders it made, outermost first."""
    missing = [p for p in (path, *path.parents) if not p.exists()][::-1]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReproduceError(f"cannot create the output folder {path}: {e.strerror}") from None
    return missing


def _run_dirs(output_dir: Path, experiment: str) -> set[Path]:
    folder = output_dir / experiment
    return set(folder.iterdir()) if folder.is_dir() else set()


# --- the command -----------------------------------------------------------------------------


@dataclass
class _Plan:
    """A run that passed every check: what the rerun is built from and where it goes."""

    original: Original
    drift: Drift
    commit: str
    toplevel: Path  # the repository's top folder
    inside: Path  # the project root, relative to it
    output_dir: Path


def _prepare(ref: str, project: Project, options: Options, output_dir: Path | None) -> _Plan:
    """Every check that can fail before anything is made (a :class:`ReproduceError`)."""
    out = output_dir or project.output_dir
    original = _original(diff.find_run(ref, lambda: out))
    drift = check_environment(original.path, original.data)
    if drift.errors and not options.allow_package_drift:
        raise ReproduceError(
            "; ".join(drift.errors) + " (install the run's versions, or --allow-package-drift)"
        )
    may_verify = options.verify or (options.verify is None and not options.flags)
    if may_verify and _recorded_without_jsonl(original.path):
        raise ReproduceError(
            f"run {original.id} recorded its metrics without the jsonl backend: no "
            "metrics.jsonl to compare with (--no-verify reruns it without comparing)"
        )
    commit = str(original.data["git_commit"])
    toplevel = _toplevel(project.root, original.id, commit)
    _check_commit(toplevel, commit, original.id)
    try:
        inside = project.root.resolve().relative_to(toplevel)
    except ValueError:
        raise ReproduceError(f"{project.root} is not inside {toplevel}") from None
    return _Plan(original, drift, commit, toplevel, inside, out)


def reproduce(ref: str, project: Project, options: Options, output_dir: Path | None = None) -> int:
    """``pystematic reproduce``: rebuild, check, rerun and compare; returns the exit code.

    0: reproduced bit for bit (or, not compared, the rerun completed); 1: metrics, seeds or
    final status differ (or the rerun failed). User errors raise :class:`ReproduceError`
    (exit 2) and leave nothing behind; a rerun that fails to start gives its exit code.
    """
    plan = _prepare(ref, project, options, output_dir)
    original, out = plan.original, plan.output_dir
    made = _make_folder(out)
    patch = original.patch
    with contextlib.ExitStack() as stack:
        try:
            folder = stack.enter_context(
                worktree(
                    plan.toplevel,
                    plan.commit,
                    patch,
                    out,
                    keep=options.keep_worktree,
                    run_id=original.id,
                )
            )
        except ReproduceError:
            for path in reversed(made):  # the folders this command made go too
                with contextlib.suppress(OSError):
                    path.rmdir()
            raise
        # Nothing is said before the code is rebuilt: an error above is its one line.
        code = f"commit {plan.commit[:12]}"
        if patch is not None:
            files = _patched_files(patch)
            code += f" + git.diff ({files} file{'' if files == 1 else 's'})"
        print(f"reproduce: {original.experiment} {original.id} from {code}")
        for line in plan.drift.errors + plan.drift.warnings:
            print(f"warning: {line}", file=sys.stderr)
        if original.data.get("status") == "running" and rundir.is_alive(original.data):
            print(
                f"warning: run {original.id} is still running: compared as far as it got",
                file=sys.stderr,
            )
        root = folder / plan.inside
        if options.keep_worktree:
            print(f"worktree: {folder} (kept; `git worktree remove --force {folder}` when done)")
        env = {**os.environ, RUN_FIELDS_ENV: json.dumps({"reproduces": original.id})}
        env.pop(LOOP_LIMIT_ENV, None)
        if options.steps is not None:
            env[LOOP_LIMIT_ENV] = str(options.steps)
        before = _run_dirs(out, original.experiment)
        sys.stdout.flush()
        sys.stderr.flush()
        proc = subprocess.Popen(_command(original, root, out, options), cwd=root, env=env)
        exit_code = _wait(proc)
        new = _new_run(out, original.experiment, before, proc.pid)
    if new is None:
        # The rerun stopped before it made a run dir; it said why (one error line).
        if exit_code == 0:
            print(
                f"error: the rerun made no run dir under {out / original.experiment}",
                file=sys.stderr,
            )
        return exit_code or 1
    return _conclude(original, new, exit_code, plan.drift, options)


def _conclude(original: Original, new: Path, exit_code: int, drift: Drift, options: Options) -> int:
    """Compare the rerun with the original, print and record the verdict; the exit code."""
    data = diff.read_run_json(new)
    params_then = diff.run_params(original.path, original.data)
    params_now = diff.run_params(new, data)
    changes = {
        name: {"run": params_then.get(name), "rerun": params_now.get(name)}
        for name in dict.fromkeys([*params_then, *params_now])
        if not diff.Row(name, params_then.get(name), params_now.get(name)).same
    }
    kind = _CHANGED if changes else _REPRODUCTION
    verify = options.verify if options.verify is not None else not changes
    stopped = data.get("stopped_after")
    max_steps = int(stopped["global_step"]) if isinstance(stopped, dict) else None
    notes = [
        f"{label} {original.data.get(key)} then, {data.get(key)} now"
        for key, label in _AFTER_RUN_KEYS.items()
        if original.data.get(key) != data.get(key)
    ]
    record: dict[str, Any] = {
        "of": original.id,
        "original": str(original.path),
        "kind": kind,
        "changes": changes,
        "commit": original.data.get("git_commit"),
        "git_diff": original.patch is not None,
        "steps": options.steps,
        "compared_steps": max_steps,
        "environment": drift.to_json() | {"after_run": notes},
        "verified": False,
        "identical": None,
        "verdict": None,
    }
    print(f"rerun: {new}")
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    if options.steps is not None and max_steps is None and exit_code == 0:
        print(
            f"note: the rerun ended before {options.steps} iterations of an outermost "
            "context.loop (or has none): compared in full"
        )
    if changes:
        shown = ", ".join(f"{k} {v['run']!r} -> {v['rerun']!r}" for k, v in changes.items())
        print(f"{kind}: {shown} (not a reproduction of {original.id})")
    interrupted = exit_code in (130, 143) or data.get("status") == "interrupted"
    if not verify or interrupted:
        if verify:
            print("not compared: the rerun was interrupted")
        elif changes:
            print("metrics not compared (--verify compares them)")
        else:
            print("metrics not compared (--no-verify)")
        rundir.update_run_json(new, {"reproduction": record})
        return exit_code

    metrics = diff.compare_metrics(original.path, new, max_steps=max_steps)
    seeds = diff.compare_seeds(original.path, new, partial_b=max_steps is not None)
    status_then, status_now = original.data.get("status"), data.get("status")
    same_status = max_steps is not None or status_then == status_now
    identical = metrics.identical and seeds.identical and same_status
    print(f"A: {original.id} (the original)  B: {new.name} (the rerun)")
    print(f"metrics: {metrics.verdict()}")
    for note in metrics.notes():
        print(f"  {note}")
    print(f"seeds: {seeds.summary()}")
    if not same_status:
        print(f"status: {status_then} then, {status_now} now")
    if identical:
        what = "a reproduction" if kind == _REPRODUCTION else "the same, despite the changes"
        print(f"verdict: {what}, bit for bit")
    else:
        print(f"verdict: {'not reproduced' if kind == _REPRODUCTION else 'different'}")
    record.update(
        verified=True,
        identical=identical,
        verdict=metrics.verdict(),
        metrics=metrics.to_json(),
        seeds=seeds.to_json(),
        status={"run": status_then, "rerun": status_now},
    )
    rundir.update_run_json(new, {"reproduction": record})
    return 0 if identical else 1
