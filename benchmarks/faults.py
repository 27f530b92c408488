"""Attacks on real ``pystematic`` processes: signals, crashes, kills, a full disk, failing ranks.

    python benchmarks/faults.py [--trials 20] [--only NAME[,NAME...]] [--jobs 2] [-v]

Every trial writes a fresh project in a temporary folder, starts ``pystematic run`` (or
``distributed``) on one of the experiments in ``EXPERIMENTS`` as a real process in its own
session, attacks it at a random moment, and then checks what the run left behind against
issue 9 and ``../shared/DESIGN.md`` (sections 4, 6, 7, 8 and 10). A trial *holds* when
everything the attack's docstring promises is true, and is *lost* otherwise, with a one-line
reason (shown with ``-v``). Prints a table: attack, trials, held, lost. Exit status 1 when
any trial was lost. ``tests/test_faults.py`` runs a trial or two of each attack through the
same functions.

The disk-full attacks mount a small tmpfs and need root; without it their rows say
``skipped``. The tight step loop's checks are ``benchmarks/recorder_faults.py``'s
(``verdict``), whose own table attacks the recorder without a run around it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recorder_faults  # this folder: the step-loop verdict

SRC = str(Path(__file__).resolve().parents[1] / "src")

# A shell starts a background job (`... &`) with SIGINT ignored and its children inherit
# that: Python, and pystematic, then keep ignoring Ctrl-C, as under nohup. The attacks
# need children that take SIGINT.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Variables that would make a trial's process believe it is a rank of a launched group.
LAUNCH_VARS = (
    *("RANK", "LOCAL_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"),
    *("MASTER_ADDR", "MASTER_PORT"),
)

EXPERIMENTS = '''
"""The experiments benchmarks/faults.py attacks (written into each trial's project)."""
import ctypes
import faulthandler
import os
import signal
import sys
import time
from pathlib import Path

import torch

import pystematic as ps

# The attacker sends SIGUSR1 to a run that does not stop: its stacks go to the real stderr.
faulthandler.register(signal.SIGUSR1, all_threads=True)


def mark(name):
    """Tell the attacker that this point was reached: ``$FAULTS_MARKS/<name>`` holds the time."""
    folder = Path(os.environ["FAULTS_MARKS"])
    tmp = folder / f".{name}.{os.getpid()}"
    tmp.write_text(repr(time.time()))
    tmp.rename(folder / name)


@ps.parameter("epochs", type=int, default=10**6)
@ps.experiment
def loader(params, context):
    """Many short epochs of a DataLoader with 2 workers: they fork at every epoch."""
    data = torch.utils.data.TensorDataset(torch.arange(32, dtype=torch.float32))
    batches = context.dataloader(data, batch_size=8, num_workers=2)
    rec = context.recorder
    mark("ready")
    for _ in range(params.epochs):
        for (batch,) in batches:
            rec.scalar("i", rec.global_step)
            rec.step()


@ps.experiment
def steploop(params, context):
    """A step loop as tight as it gets."""
    rec = context.recorder
    mark("ready")
    while True:
        rec.scalar("i", rec.global_step)
        rec.step()


@ps.parameter("steps", type=int, default=1000)
@ps.parameter("every", type=int, default=25)
@ps.parameter("pause", type=float, default=0.002)
@ps.experiment
def ckpt(params, context):
    """A scalar per step, a 4 MB checkpoint every few steps; resumable."""
    blob = torch.arange(2**20, dtype=torch.float32)
    context.load_checkpoint()
    rec = context.recorder
    for i in context.loop(params.steps, desc="step"):
        rec.scalar("i", i)
        rec.step()
        if i % params.every == params.every - 1:
            context.save_checkpoint({"blob": blob, "i": i})
            mark("checkpoint")
        time.sleep(params.pause)


@ps.parameter("how", type=str, default="os-exit", choices=["segfault", "abort", "os-exit"])
@ps.experiment
def crash(params, context):
    """Print, record 50 steps, wait half a second, die hard."""
    print("printed before the crash", flush=True)
    for i in range(50):
        context.recorder.scalar("i", i)
        context.recorder.step()
    mark("recorded")
    time.sleep(0.5)
    if params.how == "segfault":
        ctypes.string_at(0)
    elif params.how == "abort":
        os.abort()
    os._exit(3)


@ps.experiment
def quick(params, context):
    """A short run: the start-up window is most of it."""
    for i in range(5):
        context.recorder.scalar("i", i)
        context.recorder.step()
    time.sleep(0.5)


@ps.parameter("tags", type=int, default=50)
@ps.experiment
def fill(params, context):
    """Record until the disk is full."""
    mark("ready")
    for s in range(10**8):
        context.recorder.scalars({f"tag{i}": s + i / 10 for i in range(params.tags)})
        context.recorder.step()


@ps.parameter("how", type=str, default="raise")
@ps.experiment
def dist(params, context):
    """Rank 1 ends in the way asked (or hangs) while rank 0 waits for it in a barrier."""
    context.barrier()
    mark(f"rank{context.rank}")
    if context.rank == 1:
        time.sleep(0.3)  # rank 0 is in the barrier by now
        if params.how == "sys-exit":
            sys.exit(3)
        if params.how == "raise":
            raise RuntimeError("rank 1 fails")
        if params.how == "os-exit":
            os._exit(3)
        if params.how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(3600)
    context.barrier()
'''


class Lost(Exception):
    """A trial did not hold; the message is the one-line reason."""


class Skipped(Exception):
    """An attack cannot run here (the disk-full ones without root); the message says why."""


def check(condition: object, reason: str) -> None:
    """Lose the trial with ``reason`` unless ``condition`` holds."""
    if not condition:
        raise Lost(reason)


def tail(text: str, lines: int = 3) -> str:
    """The last lines of some output, on one line (for a reason), after the interpreter's
    fatal-error line when there is one (the rest of that report is a stack)."""
    kept = [line.strip() for line in text.strip().splitlines()[-lines:]]
    fatal = [line for line in text.splitlines() if line.startswith("Fatal Python error")]
    return " | ".join(fatal[:1] + kept)[-400:]


def session_members(sid: int) -> list[int]:
    """Live processes (not zombies) of the session ``sid`` (Linux ``/proc``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state ppid pgrp session ...
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def describe(pid: int) -> str:
    """``pid`` and the start of its command line."""
    try:
        argv = Path("/proc", str(pid), "cmdline").read_bytes().split(b"\0")
    except OSError:
        return str(pid)
    return f"{pid} ({' '.join(a.decode(errors='replace') for a in argv)[:80]})"


@dataclass
class Proc:
    """A ``pystematic`` process started by a trial, its output in files, in its own session."""

    popen: subprocess.Popen[bytes]
    out: Path
    err: Path
    started: float

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait(self, timeout: float) -> int | None:
        """The exit status, or None when still running after ``timeout`` seconds."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process itself (``kill PID``), not to its group."""
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def left(self) -> list[int]:
        return session_members(self.pid)

    def kill(self) -> None:
        """SIGKILL everything left in the session, then reap the process."""
        for _ in range(3):
            pids = self.left()
            if not pids and self.popen.poll() is not None:
                break
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if self.popen.poll() is None:
                self.popen.kill()
            self.wait(5)


@dataclass
class Trial:
    """One trial's folder, project, random draws and processes; cleans up after itself."""

    root: Path
    rng: random.Random
    procs: list[Proc] = field(default_factory=list)
    mounts: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.project.mkdir(parents=True, exist_ok=True)
        self.marks.mkdir(exist_ok=True)
        (self.project / "pystematic.toml").write_text("")
        (self.project / "faults_exp.py").write_text(EXPERIMENTS)

    @property
    def project(self) -> Path:
        return self.root / "proj"

    @property
    def marks(self) -> Path:
        return self.root / "marks"

    def start(self, *args: str) -> Proc:
        """``python -m pystematic ARGS`` in the project, stdout and stderr to files."""
        n = len(self.procs)
        out, err = self.root / f"cmd{n}.out", self.root / f"cmd{n}.err"
        env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
        env = {k: v for k, v in env.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
        env["FAULTS_MARKS"] = str(self.marks)
        with open(out, "wb") as fout, open(err, "wb") as ferr:
            popen = subprocess.Popen(
                [sys.executable, "-m", "pystematic", *args],
                cwd=self.project,
                stdin=subprocess.DEVNULL,
                stdout=fout,
                stderr=ferr,
                env=env,
                start_new_session=True,
            )
        proc = Proc(popen, out, err, time.monotonic())
        self.procs.append(proc)
        return proc

    def run(self, *args: str, timeout: float = 120) -> Proc:
        """Start, and wait for the end (lost when it runs past ``timeout`` seconds)."""
        proc = self.start(*args)
        check(
            proc.wait(timeout) is not None,
            f"`{' '.join(args[:2])}` still running after {timeout} s",
        )
        return proc

    def wait_mark(self, name: str, proc: Proc, timeout: float = 90) -> float:
        """Wait until the experiment marks ``name``; the time it wrote there."""
        end = time.monotonic() + timeout
        path = self.marks / name
        while not path.exists():
            rc = proc.popen.poll()
            if rc is not None:
                if path.exists():
                    break
                raise Lost(f"exited {rc} before '{name}': {tail(proc.stderr())}")
            if time.monotonic() > end:
                raise Lost(f"no '{name}' after {timeout} s: {tail(proc.stderr())}")
            time.sleep(0.01)
        return float(path.read_text())

    def output(self, experiment: str, output: Path | None = None) -> Path:
        return (output or self.project / "output") / experiment

    def run_dirs(self, experiment: str, output: Path | None = None) -> list[Path]:
        folder = self.output(experiment, output)
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))

    def only_run_dir(self, experiment: str, output: Path | None = None) -> Path:
        dirs = self.run_dirs(experiment, output)
        check(len(dirs) == 1, f"{len(dirs)} run dirs instead of 1")
        return dirs[0]

    def tmpfs(self, size: str) -> Path:
        """A fresh tmpfs of ``size`` (mount(8) syntax) in the trial folder; root only."""
        if os.geteuid() != 0:
            raise Skipped("not root")
        path = self.root / f"disk{len(self.mounts)}"
        path.mkdir()
        argv = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode:
            raise Skipped(f"mount failed: {done.stderr.strip()}")
        self.mounts.append(path)
        return path

    def leftovers(self, grace: float = 5.0) -> None:
        """Lose the trial when any process it started still lives ``grace`` s after its end."""
        end = time.monotonic() + grace
        for proc in self.procs:
            while proc.left() and time.monotonic() < end:
                time.sleep(0.05)
            left = proc.left()
            check(not left, f"processes left behind: {', '.join(map(describe, left))}")

    def close(self) -> None:
        """Kill whatever is left, unmount what was mounted."""
        for proc in self.procs:
            proc.kill()
        for path in self.mounts:
            if subprocess.run(["umount", str(path)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(path)], capture_output=True)


# -- what every attack reads back ------------------------------------------------------------


def run_json(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "run.json"
    check(path.exists(), f"no run.json in {run_dir.name}")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def status(run_dir: Path) -> str:
    return str(run_json(run_dir).get("status"))


def steps_held(run_dir: Path, n: int | None = None) -> int:
    """Tag ``i`` at steps 0..k, each once, value = step, TensorBoard the same; k+1 steps."""
    steps, problem = recorder_faults.verdict(run_dir)
    check(problem is None, f"{problem} ({steps} lines)")
    check(n is None or steps == n, f"{steps} steps in metrics.jsonl instead of {n}")
    return steps


def tensorboard_view(run_dir: Path) -> list[tuple[int, float]]:
    """(step, value) of tag ``i`` as TensorBoard shows it (its own loader, purges applied)."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(run_dir / "tensorboard"), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    if "i" not in acc.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in acc.Scalars("i")]


def tmp_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.tmp"))


def where(proc: Proc) -> str:
    """Where a process that does not stop is: its main thread's innermost frames, from
    the stacks faulthandler writes on SIGUSR1 (registered by ``EXPERIMENTS``)."""
    proc.signal(signal.SIGUSR1)
    time.sleep(0.5)
    text = proc.stderr()
    head = "Current thread"
    if head not in text:
        return ""
    frames = text[text.rindex(head) :].splitlines()[1:4]
    return "; in " + " < ".join(f.strip().removeprefix("File ") for f in frames if f.strip())


def exit_name(rc: int | None) -> str:
    if rc is not None and rc < 0:
        return f"killed by {signal.Signals(-rc).name}"
    return f"exit {rc}"


def runs_status(t: Trial, run_dir: Path) -> str:
    """The status ``pystematic runs --json`` shows for ``run_dir``."""
    proc = t.run("runs", "--json", timeout=60)
    check(proc.popen.returncode == 0, f"`runs --json` exit {proc.popen.returncode}")
    for record in json.loads(proc.stdout()):
        if record["id"] == run_dir.name:
            return str(record["status"])
    raise Lost(f"`runs` does not list {run_dir.name}")


# -- the attacks -------------------------------------------------------------------------------

CODES: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}


def signal_run(t: Trial, experiment: str, signum: int, low: float, high: float) -> None:
    """Start ``experiment``, signal it ``low..high`` s after it marks 'ready'; it must end
    within 20 s with 130/143, ``interrupted``, every recorded step once under its index."""
    proc = t.start("run", experiment)
    t.wait_mark("ready", proc)
    time.sleep(t.rng.uniform(low, high))
    check(proc.popen.poll() is None, f"ended before the signal: {exit_name(proc.popen.poll())}")
    proc.signal(signum)
    rc = proc.wait(20)
    name = signal.Signals(signum).name
    if rc is None:
        dirs = t.run_dirs(experiment)
        state = status(dirs[0]) if dirs else "no run dir"
        raise Lost(f"still running 20 s after {name} (run.json: {state}){where(proc)}")
    run_dir = t.only_run_dir(experiment)
    check(rc == CODES[signum], f"{exit_name(rc)} instead of {CODES[signum]}: {tail(proc.stderr())}")
    check(status(run_dir) == "interrupted", f"status {status(run_dir)} after {name}")
    check(steps_held(run_dir) > 0, "no step recorded")


def sigint_dataloader(t: Trial) -> None:
    """SIGINT 0.5-3 s into many short epochs of a DataLoader with 2 forking workers."""
    signal_run(t, "loader", signal.SIGINT, 0.5, 3.0)


def sigterm_dataloader(t: Trial) -> None:
    """SIGTERM 0.5-3 s into many short epochs of a DataLoader with 2 forking workers."""
    signal_run(t, "loader", signal.SIGTERM, 0.5, 3.0)


def sigint_steploop(t: Trial) -> None:
    """SIGINT 0-0.6 s into a tight ``scalar(); step()`` loop of a run."""
    signal_run(t, "steploop", signal.SIGINT, 0.0, 0.6)


def sigterm_steploop(t: Trial) -> None:
    """SIGTERM 0-0.6 s into a tight ``scalar(); step()`` loop of a run."""
    signal_run(t, "steploop", signal.SIGTERM, 0.0, 0.6)


def resume(t: Trial, run_dir: Path, patience: float) -> tuple[Proc, int]:
    """``run ckpt --resume RUN_DIR``, asked again while it answers "still running" for up to
    ``patience`` s; the finished process and how many times it was refused."""
    refused = 0
    end = time.monotonic() + patience
    while True:
        proc = t.run("run", "ckpt", "--resume", str(run_dir), timeout=180)
        refusal = proc.popen.returncode == 2 and "still running" in proc.stderr()
        if not refusal or time.monotonic() > end:
            return proc, refused
        refused += 1
        time.sleep(1.0)


def kill_after_checkpoint(t: Trial, delay: float) -> Path:
    """Start ``ckpt``, SIGKILL it ``delay`` s after its first checkpoint; its run dir."""
    proc = t.start("run", "ckpt")
    t.wait_mark("checkpoint", proc)
    time.sleep(delay)
    check(proc.popen.poll() is None, f"ended before the kill: {exit_name(proc.popen.poll())}")
    proc.signal(signal.SIGKILL)
    check(proc.wait(10) is not None, "still running 10 s after SIGKILL")
    return t.only_run_dir("ckpt")


def resumed_whole(t: Trial, run_dir: Path, proc: Proc) -> None:
    """The resumed run completed with steps 0..999 once each, no temp files, TensorBoard
    (raw events and its own view) the same as metrics.jsonl."""
    rc = proc.popen.returncode
    check(rc == 0, f"resume: {exit_name(rc)}: {tail(proc.stderr())}")
    check(status(run_dir) == "completed", f"resumed run's status {status(run_dir)}")
    steps_held(run_dir, 1000)
    view = tensorboard_view(run_dir)
    check(view == [(s, float(s)) for s in range(1000)], "TensorBoard's view differs from jsonl")
    leftovers = tmp_files(run_dir)
    check(not leftovers, f"temporary files left: {', '.join(leftovers[:3])}")


def sigkill_checkpoint_resume(t: Trial) -> None:
    """SIGKILL 0-2 s after the first checkpoint (4 MB, every 25 steps), then ``--resume``
    (asked again while refused as still running): steps 0..999 once each, TensorBoard
    agrees, no ``*.tmp`` left."""
    run_dir = kill_after_checkpoint(t, t.rng.uniform(0.0, 2.0))
    proc, _ = resume(t, run_dir, patience=60)
    resumed_whole(t, run_dir, proc)


def resume_after_crash(t: Trial) -> None:
    """SIGKILL 0-0.5 s after a checkpoint, ``--resume`` at once: accepted, completes."""
    run_dir = kill_after_checkpoint(t, t.rng.uniform(0.0, 0.5))
    proc, _ = resume(t, run_dir, patience=0)
    check("still running" not in proc.stderr(), f"refused: {tail(proc.stderr(), 1)}")
    resumed_whole(t, run_dir, proc)


def crash_run(t: Trial, how: str, code: int, fatal: bool) -> None:
    """Print (flushed), record 50 steps, 0.5 s later crash ``how``: the line in output.log
    (and Python's fatal-error report there and on stderr when ``fatal``), the 50 steps on
    disk, ``runs`` says died, the exit status is what plain Python gives."""
    proc = t.start("run", "crash", "--how", how)
    rc = proc.wait(60)
    check(rc is not None, "still running 60 s after start")
    check(rc == code, f"{exit_name(rc)} instead of {exit_name(code)}: {tail(proc.stderr())}")
    run_dir = t.only_run_dir("crash")
    log = (run_dir / "output.log").read_text(errors="replace")
    check("printed before the crash" in log, f"output.log lacks the printed line ({len(log)} B)")
    if fatal:
        check("Fatal Python error" in log, "output.log lacks 'Fatal Python error'")
        check("Fatal Python error" in proc.stderr(), "stderr lacks 'Fatal Python error'")
    steps_held(run_dir, 50)
    shown = runs_status(t, run_dir)
    check(shown == "died", f"`runs` shows {shown}, not died")


def crash_segfault(t: Trial) -> None:
    """A segfault (``ctypes.string_at(0)``) 0.5 s after printing and recording."""
    crash_run(t, "segfault", -signal.SIGSEGV, fatal=True)


def crash_abort(t: Trial) -> None:
    """``os.abort()`` 0.5 s after printing and recording."""
    crash_run(t, "abort", -signal.SIGABRT, fatal=True)


def crash_os_exit(t: Trial) -> None:
    """``os._exit(3)`` 0.5 s after printing and recording."""
    crash_run(t, "os-exit", 3, fatal=False)


def startup_signal(t: Trial, signum: int) -> None:
    """``signum`` 0-1.5 s after ``pystematic run`` starts (a 0.7 s experiment): 130/143 and
    ``interrupted``, or 0 and ``completed`` when it finished first; every run dir has
    run.json. Killed by the signal itself only when no run dir was made yet (what plain
    Python does before any of pystematic's code runs; a shell shows 130/143 for it too)."""
    proc = t.start("run", "quick")
    time.sleep(t.rng.uniform(0.0, 1.5))
    proc.signal(signum)
    rc = proc.wait(20)
    name = signal.Signals(signum).name
    check(rc is not None, f"still running 20 s after {name}")
    dirs = t.run_dirs("quick")
    for run_dir in dirs:
        check((run_dir / "run.json").exists(), f"{exit_name(rc)}: a run dir without run.json")
    check(len(dirs) <= 1, f"{len(dirs)} run dirs")
    state = status(dirs[0]) if dirs else None
    if rc == 0:
        check(state == "completed", f"exit 0 with status {state}")
    elif rc == CODES[signum]:
        check(state in (None, "interrupted"), f"exit {rc} with status {state}")
    elif rc == -signum:
        check(not dirs, f"killed by {name} with a run dir (status {state})")
    else:
        raise Lost(f"{exit_name(rc)} after {name}: {tail(proc.stderr())}")


def startup_sigterm(t: Trial) -> None:
    """SIGTERM in the start-up window."""
    startup_signal(t, signal.SIGTERM)


def startup_sigint(t: Trial) -> None:
    """SIGINT in the start-up window."""
    startup_signal(t, signal.SIGINT)


def fill_disk(path: Path) -> None:
    """Write zeros to ``path/filler`` until the file system is full."""
    chunk = bytes(1 << 16)
    with open(path / "filler", "wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass


def no_space(text: str) -> bool:
    return "no space left on device" in text.lower()


def disk_full_start(t: Trial) -> None:
    """``--output-dir`` on a full 2 MB tmpfs: exit 2, one ``error:`` line, no run dir."""
    disk = t.tmpfs("2m")
    fill_disk(disk)
    proc = t.run("run", "quick", "--output-dir", str(disk), timeout=60)
    rc = proc.popen.returncode
    lines = [line for line in proc.stderr().splitlines() if line.strip()]
    check(rc == 2, f"{exit_name(rc)} instead of 2: {tail(proc.stderr())}")
    check(len(lines) == 1, f"{len(lines)} lines on stderr instead of 1: {tail(proc.stderr())}")
    check(lines[0].startswith("error:") and no_space(lines[0]), f"stderr: {lines[0][:200]}")
    dirs = t.run_dirs("quick", disk)
    check(not dirs, f"run dir left: {', '.join(d.name for d in dirs)}")


def disk_full_midrun(t: Trial) -> None:
    """Record 50 scalars a step onto a 3 MB tmpfs until it is full: exit 1, run.json
    ``failed`` with "No space left on device", one ``error:`` line ending stderr, whole
    lines in metrics.jsonl, no ``*.tmp``."""
    disk = t.tmpfs("3m")
    proc = t.run("run", "fill", "--output-dir", str(disk), timeout=60)
    rc = proc.popen.returncode
    lines = [line for line in proc.stderr().splitlines() if line.strip()]
    check(rc == 1, f"{exit_name(rc)} instead of 1: {tail(proc.stderr())}")
    run_dir = t.only_run_dir("fill", disk)
    record = run_json(run_dir)
    check(record.get("status") == "failed", f"status {record.get('status')}")
    check(no_space(str(record.get("error"))), f"run.json error: {record.get('error')}")
    errors = [line for line in lines if line.startswith("error:")]
    check(len(errors) == 1, f"{len(errors)} 'error:' lines on stderr: {tail(proc.stderr())}")
    check(lines[-1].startswith("error:"), f"stderr ends with: {lines[-1][:200]}")
    leftovers = tmp_files(run_dir)
    check(not leftovers, f"temporary files left: {', '.join(leftovers[:3])}")
    path = run_dir / "metrics.jsonl"
    text = path.read_text() if path.exists() else ""
    check(not text or text.endswith("\n"), "metrics.jsonl ends with a torn line")
    steps = [json.loads(line)["step"] for line in text.splitlines()]
    check(steps == list(range(len(steps))), "metrics.jsonl: steps missing or repeated")


def dist_failure(t: Trial, how: str) -> None:
    """2 gloo ranks; rank 1 ends by ``how`` while rank 0 waits in a barrier: exit 1 within
    120 s, run.json ``failed`` with ``failed_rank`` 1."""
    proc = t.run("distributed", "dist", "--nproc", "2", "--how", how, timeout=120)
    rc = proc.popen.returncode
    check(rc == 1, f"{exit_name(rc)} instead of 1: {tail(proc.stderr())}")
    record = run_json(t.only_run_dir("dist"))
    check(record.get("status") == "failed", f"status {record.get('status')}")
    check(record.get("failed_rank") == 1, f"failed_rank {record.get('failed_rank')}")


def dist_sys_exit(t: Trial) -> None:
    """Rank 1 calls ``sys.exit(3)``."""
    dist_failure(t, "sys-exit")


def dist_raise(t: Trial) -> None:
    """Rank 1 raises."""
    dist_failure(t, "raise")


def dist_os_exit(t: Trial) -> None:
    """Rank 1 calls ``os._exit(3)``."""
    dist_failure(t, "os-exit")


def dist_sigkill(t: Trial) -> None:
    """Rank 1 is SIGKILLed."""
    dist_failure(t, "sigkill")


def dist_hang_timeout(t: Trial) -> None:
    """Rank 1 hangs, rank 0 waits in a barrier, ``--timeout 3``: ends within 60 s, exit 1,
    run.json ``failed``."""
    proc = t.run(
        "distributed", "dist", "--nproc", "2", "--timeout", "3", "--how", "hang", timeout=60
    )
    rc = proc.popen.returncode
    if rc == 2 and "--timeout" in proc.stderr():
        raise Lost(f"no --timeout option: {tail(proc.stderr(), 1)}")
    check(rc == 1, f"{exit_name(rc)} instead of 1: {tail(proc.stderr())}")
    record = run_json(t.only_run_dir("dist"))
    check(record.get("status") == "failed", f"status {record.get('status')}")


def hung_group_sigint(t: Trial, group: bool) -> None:
    """Rank 1 hangs, rank 0 waits in a barrier; SIGINT 0.3-1 s later to the launcher (or,
    with ``group``, to its whole process group): ends within 10 s, exit 130, run.json
    ``interrupted``, no process left."""
    proc = t.start("distributed", "dist", "--nproc", "2", "--how", "hang")
    t.wait_mark("rank0", proc)
    t.wait_mark("rank1", proc)
    time.sleep(t.rng.uniform(0.3, 1.0))
    if group:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.signal(signal.SIGINT)
    rc = proc.wait(10)
    check(rc is not None, "launcher still running 10 s after SIGINT")
    check(rc == 130, f"{exit_name(rc)} instead of 130: {tail(proc.stderr())}")
    t.leftovers(grace=1.0)
    state = status(t.only_run_dir("dist"))
    check(state == "interrupted", f"status {state}")


def dist_hang_sigint(t: Trial) -> None:
    """SIGINT to the launcher of a hung group (``kill -INT PID``)."""
    hung_group_sigint(t, group=False)


def dist_hang_ctrl_c(t: Trial) -> None:
    """SIGINT to every process of a hung group, as Ctrl-C in a terminal sends it."""
    hung_group_sigint(t, group=True)


@dataclass(frozen=True)
class Attack:
    name: str
    run: Callable[[Trial], None]

    @property
    def what(self) -> str:
        return (self.run.__doc__ or "").split("\n")[0].strip()


ATTACKS = [
    Attack("sigint-dataloader", sigint_dataloader),
    Attack("sigterm-dataloader", sigterm_dataloader),
    Attack("sigint-steploop", sigint_steploop),
    Attack("sigterm-steploop", sigterm_steploop),
    Attack("sigkill-checkpoint-resume", sigkill_checkpoint_resume),
    Attack("resume-after-crash", resume_after_crash),
    Attack("crash-segfault", crash_segfault),
    Attack("crash-abort", crash_abort),
    Attack("crash-os-exit", crash_os_exit),
    Attack("startup-sigterm", startup_sigterm),
    Attack("startup-sigint", startup_sigint),
    Attack("disk-full-start", disk_full_start),
    Attack("disk-full-midrun", disk_full_midrun),
    Attack("dist-sys-exit", dist_sys_exit),
    Attack("dist-raise", dist_raise),
    Attack("dist-os-exit", dist_os_exit),
    Attack("dist-sigkill", dist_sigkill),
    Attack("dist-hang-timeout", dist_hang_timeout),
    Attack("dist-hang-sigint", dist_hang_sigint),
    Attack("dist-hang-ctrl-c", dist_hang_ctrl_c),
]
BY_NAME = {attack.name: attack for attack in ATTACKS}


@dataclass
class Outcome:
    """One trial: held, lost (with the reason) or skipped; and how long it took."""

    attack: str
    index: int
    problem: str | None = None
    skipped: str | None = None
    seconds: float = 0.0

    @property
    def held(self) -> bool:
        return self.problem is None and self.skipped is None


@contextmanager
def trial_dir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pystematic-faults-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def run_trial(name: str, root: Path, seed: object = 0) -> Outcome:
    """One trial of attack ``name`` in the (empty or new) folder ``root``; never raises."""
    attack = BY_NAME[name]
    outcome = Outcome(name, 0)
    trial = Trial(root, random.Random(f"{seed}:{name}"))
    begin = time.monotonic()
    try:
        attack.run(trial)
        trial.leftovers()
    except Lost as exc:
        outcome.problem = str(exc)
    except Skipped as exc:
        outcome.skipped = str(exc)
    except Exception as exc:  # a torn run.json, an unreadable event file: lost, with why
        outcome.problem = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        trial.close()
    outcome.seconds = time.monotonic() - begin
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=20, help="trials per attack (default 20)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME[,NAME]")
    parser.add_argument("--jobs", type=int, default=2, help="trials at a time (default 2)")
    parser.add_argument("--seed", default=None, help="seed of the random moments")
    parser.add_argument("--keep", action="store_true", help="keep the trial folders")
    parser.add_argument("-v", "--verbose", action="store_true", help="a line per lost trial")
    parser.add_argument("--list", action="store_true", help="list the attacks and exit")
    args = parser.parse_args()
    if args.list:
        for attack in ATTACKS:
            print(f"{attack.name:28} {attack.what}")
        return
    names = [n for group in args.only for n in group.split(",") if n] or list(BY_NAME)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown attack {', '.join(unknown)} (see --list)")
    if args.trials < 1 or args.jobs < 1:
        parser.error("--trials and --jobs must be at least 1")
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    lock = threading.Lock()

    def one(name: str, index: int) -> Outcome:
        with trial_dir(args.keep) as root:
            outcome = run_trial(name, root, f"{seed}:{index}")
        outcome.index = index
        with lock:
            if outcome.problem and args.verbose:
                print(f"  lost: {name} #{index}: {outcome.problem}", file=sys.stderr, flush=True)
        return outcome

    begin = time.monotonic()
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {n: [pool.submit(one, n, i) for i in range(args.trials)] for n in names}
        results = {}
        for n in names:
            results[n] = [f.result() for f in futures[n]]
            held = sum(o.held for o in results[n])
            spent = sum(o.seconds for o in results[n]) / len(results[n])
            print(f"{n}: {held}/{len(results[n])} held, {spent:.1f} s a trial", file=sys.stderr)
    elapsed = time.monotonic() - begin
    print(f"\n{args.trials} trials per attack, {args.jobs} at a time, seed {seed}, {elapsed:.0f} s")
    print("| attack | trials | held | lost | notes |")
    print("| --- | --- | --- | --- | --- |")
    any_lost = False
    for name in names:
        outcomes = results[name]
        skipped = [o for o in outcomes if o.skipped]
        if skipped:
            print(f"| {name} | skipped ({skipped[0].skipped}) | | | |")
            continue
        lost = [o for o in outcomes if o.problem]
        any_lost = any_lost or bool(lost)
        held = len(outcomes) - len(lost)
        reasons = Counter(o.problem for o in lost).most_common()
        notes = "; ".join(f"{n}x {r}" for r, n in reasons[:2]).replace("|", "/")[:160]
        if len(reasons) > 2:
            notes += f"; {len(reasons) - 2} more"
        print(f"| {name} | {len(outcomes)} | {held} | {len(lost)} | {notes} |")
    sys.exit(1 if any_lost else 0)


if __name__ == "__main__":
    main()
