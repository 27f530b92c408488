"""Stop signals: never lost in a fork, deferred around writes, recorded from the first moment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Project
from pystematic import interrupts

# A signal that lands where Python cannot raise: inside os.fork()'s at-fork callbacks (the
# callback registered first, before pystematic's, sends it), or inside a finalizer
# (``__del__``, weakref callbacks: multiprocessing's run from the garbage collector).
SWALLOWED = """
import os, signal, sys, time

class Finalized:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        sum(range(1000))  # Python runs the handler here, inside __del__

if sys.argv[2] == "fork":
    os.register_at_fork(after_in_parent=lambda: os.kill(os.getpid(), signal.SIGTERM))
if sys.argv[1] == "pystematic":
    from pystematic import interrupts
    interrupts.install()
    stop = interrupts.Terminated
else:
    def handler(signum, frame):
        raise SystemExit("stopped")
    signal.signal(signal.SIGTERM, handler)
    stop = SystemExit
try:
    if sys.argv[2] == "fork":
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    else:
        Finalized()
    time.sleep(5)
    print("lost")
except stop:
    print("raised")
"""


@pytest.mark.parametrize("where", ["fork", "finalizer"])
def test_a_signal_python_would_drop_is_raised_a_moment_later(tmp_path: Path, where: str) -> None:
    script = tmp_path / "swallowed.py"
    script.write_text(SWALLOWED)
    plain = subprocess.run(
        [sys.executable, str(script), "plain", where], capture_output=True, text=True, timeout=60
    )
    # What 0.1.0 did (a handler that raises): the exception is dropped as "unraisable".
    assert plain.stdout == "lost\n"
    assert "Exception ignored" in plain.stderr
    ours = subprocess.run(
        [sys.executable, str(script), "pystematic", where],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ours.stdout == "raised\n", ours.stderr
    assert ours.stderr == ""


def test_held_signals_are_raised_when_the_block_ends() -> None:
    with interrupts.handling():
        reached = []
        with pytest.raises(interrupts.Terminated), interrupts.held():
            signal.raise_signal(signal.SIGTERM)
            reached.append("after the signal")
        assert reached == ["after the signal"]
        # A second signal while held: at once.
        with pytest.raises(KeyboardInterrupt), interrupts.held():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            reached.append("not reached")
        assert reached == ["after the signal"]
        assert interrupts.received() == signal.SIGINT


def test_handling_puts_the_previous_handlers_back() -> None:
    def mine(signum: int, frame: object) -> None:
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        with interrupts.handling():
            assert signal.getsignal(signal.SIGTERM) is not mine
            with pytest.raises(interrupts.Terminated):
                signal.raise_signal(signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)


# Sends a signal to the process at one exact moment of the start of a run: when an audit
# event (a mkdir, an open) names a path that holds the given part.
AT_MOMENT = """
import os, signal, sys
import pystematic as ps

EVENT, PART, SIG = os.environ["SIGNAL_AT"].split(":")  # audit event:part of the path:signal
sent = []

def hook(event, args):
    if event == EVENT and not sent and args and PART in str(args[0]):
        sent.append(event)
        os.kill(os.getpid(), getattr(signal, SIG))

sys.addaudithook(hook)

@ps.experiment
def exp(params):
    print("main ran")
"""


@pytest.mark.parametrize(
    ("moment", "code"),
    [("os.mkdir:/exp/2:SIGTERM", 143), ("open:parameters.toml:SIGINT", 130)],
    ids=["sigterm-at-mkdir", "sigint-at-parameters"],
)
def test_a_signal_while_the_run_dir_is_made_leaves_an_interrupted_run(
    project: Project, moment: str, code: int
) -> None:
    project.write("exps.py", AT_MOMENT)
    result = project.run("run", "exp", env={"SIGNAL_AT": moment})
    assert result.returncode == code, result.stderr
    assert "main ran" not in result.stdout
    assert "Traceback" not in result.stderr
    run = json.loads((project.only_run_dir("exp") / "run.json").read_text())
    assert run["status"] == "interrupted"
    assert run["error"] == ("SIGTERM" if code == 143 else "KeyboardInterrupt")


def test_sigterm_before_the_run_dir_exits_143_and_makes_nothing(project: Project) -> None:
    project.write(
        "exps.py",
        """
        import os, signal
        import pystematic as ps

        os.kill(os.getpid(), signal.SIGTERM)  # while the experiment's module is imported

        @ps.experiment
        def exp(params):
            print("main ran")
        """,
    )
    result = project.run("run", "exp")
    assert result.returncode == 143
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert not (project.root / "output").exists()


DATALOADER = """
import time
import torch
from torch.utils.data import DataLoader, TensorDataset
import pystematic as ps

@ps.experiment
def loader(params, context):
    data = TensorDataset(torch.arange(64.0))
    print("training", flush=True)
    while True:  # workers fork at every pass
        for (x,) in DataLoader(data, batch_size=16, num_workers=2):
            context.recorder.scalar("x", float(x.sum()))
            context.recorder.step()
"""


@pytest.mark.slow
def test_sigterm_to_the_whole_job_with_dataloader_workers_is_interrupted(
    project: Project,
) -> None:
    """A scheduler stops a job by sending SIGTERM to all its processes: the workers die of
    it too, and torch's SIGCHLD handler raises about them; the run is still interrupted."""
    project.write("exps.py", DATALOADER)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pystematic", "run", "loader"],
        cwd=project.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "training\n"
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    run_dir = project.only_run_dir("loader")
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "interrupted"
    steps = [
        json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(len(steps))) and steps
    assert "Traceback" not in stderr


def test_a_stop_during_the_import_of_an_experiment_waits_for_the_import_to_end(
    project: Project,
) -> None:
    project.write(
        "exps.py",
        """
        import os, signal
        from pathlib import Path
        import pystematic as ps

        os.kill(os.getpid(), signal.SIGTERM)
        sum(range(100_000))  # torch's C++ start-up would be here: no exception inside it
        Path("import-ended").write_text("yes")

        @ps.experiment
        def exp(params):
            print("main ran")
        """,
    )
    result = project.run("run", "exp")
    assert result.returncode == 143, result.stderr
    assert (project.root / "import-ended").read_text() == "yes"
    assert "main ran" not in result.stdout
    assert not (project.root / "output").exists()


def test_a_stop_that_an_import_turns_into_another_error_still_stops(project: Project) -> None:
    project.write(
        "exps.py",
        """
        import os, signal
        import pystematic as ps

        try:  # as some imports do (torch's): the stop comes out as an ImportError
            os.kill(os.getpid(), signal.SIGTERM)  # held until the import ends
            os.kill(os.getpid(), signal.SIGTERM)  # a second one: at once
            sum(range(1000))
        except BaseException as e:
            raise ImportError("cannot load module more than once per process") from e

        @ps.experiment
        def exp(params):
            print("main ran")
        """,
    )
    result = project.run("run", "exp")
    assert result.returncode == 143, result.stderr
    assert "unknown experiment" not in result.stderr
    assert not (project.root / "output").exists()


def test_after_a_stop_a_hung_exit_handler_does_not_keep_the_process(project: Project) -> None:
    project.write(
        "exps.py",
        """
        import atexit, threading
        import pystematic as ps

        @ps.experiment
        def exp(params):
            lock = threading.Lock()
            lock.acquire()  # left held, as an exception inside `with lock:` can leave it
            atexit.register(lock.acquire)
            raise KeyboardInterrupt
        """,
    )
    result = project.run("run", "exp", timeout=60)
    assert result.returncode == 130, result.stderr
    run = json.loads((project.only_run_dir("exp") / "run.json").read_text())
    assert run["status"] == "interrupted"
