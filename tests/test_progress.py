"""``context.loop`` progress and the run's log lines on one console, through a real terminal.

The pty test runs ``pystematic run`` with a pseudo-terminal as its stdout and stderr and
replays every byte the terminal received into ``pyte`` (a terminal emulator), checking
the screen at every step of the way and at the end, and output.log's exact text.
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
import subprocess
import sys
import termios

import pyte

from conftest import Project

ROWS, COLUMNS = 40, 100
BAR = "━" * 40  # rich's default bar width, all done

NESTED = """
import sys
import time

import pystematic as ps


@ps.parameter("pause", type=float, default=0.0)
@ps.experiment
def nested(params, context):
    for epoch in context.loop(2, desc="epoch"):
        for step in context.loop(3, desc="step"):
            print(f"print {epoch}.{step}")
            context.logger.info("log %d.%d", epoch, step)
            time.sleep(params.pause)
        print(f"stderr {epoch}", file=sys.stderr)
        context.logger.info("epoch %d done", epoch)
    print("after the loops")
"""


def _body(bar_lines: bool) -> list[str]:
    """What the run writes, in order; each inner loop ends with its bar's final state."""
    lines = []
    for epoch in range(2):
        for step in range(3):
            lines += [f"print {epoch}.{step}", f"<time> INFO pystematic.run: log {epoch}.{step}"]
        if bar_lines:
            lines.append(f"step {BAR} 3/3 <t>")
        lines += [f"stderr {epoch}", f"<time> INFO pystematic.run: epoch {epoch} done"]
    if bar_lines:
        lines.append(f"epoch {BAR} 2/2 <t>")
    return [*lines, "after the loops"]


def _normalize(line: str) -> str:
    line = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", "<time> ", line)
    return re.sub(r" \d+:\d\d:\d\d$", " <t>", line)


def _run_in_pty(project: Project, *args: str) -> tuple[bytes, int]:
    """Run ``python -m pystematic ARGS`` on a fresh pty of ROWS x COLUMNS; all it received."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "", "LINES": ""}
    env = {k: v for k, v in env.items() if v}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pystematic", *args],
        cwd=project.root,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    received = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO once every writer of the slave side is gone
            break
        if not data:
            break
        received += data
    os.close(master)
    return received, proc.wait(timeout=120)


def _screen_lines(screen: pyte.Screen) -> list[str]:
    return [line.rstrip() for line in screen.display if line.strip()]


def test_loops_logs_and_prints_share_the_terminal(project: Project) -> None:
    project.write("pystematic.toml", 'output_dir = "output"\n')
    project.write("exp.py", NESTED)
    received, returncode = _run_in_pty(project, "run", "nested", "--pause", "0.15")
    assert returncode == 0, received.decode(errors="replace")

    # Replay the bytes as the terminal got them, looking at the screen after every chunk.
    screen = pyte.Screen(COLUMNS, ROWS)
    stream = pyte.ByteStream(screen)
    most_live_rows = 0
    for i in range(0, len(received), 64):
        stream.feed(received[i : i + 64])
        lines = _screen_lines(screen)
        live = [line for line in lines if "eta" in line]
        most_live_rows = max(most_live_rows, len(live))
        assert len(live) <= 2, lines  # one row per active loop, never a pile of bars
        for line in lines:
            if "━" in line:  # a bar row (perhaps half drawn) holds nothing else
                assert re.fullmatch(r"(epoch|step) +[━╸╺]*( +[\d/]+[-:\d eta]*)?", line)
    assert most_live_rows == 2  # both loops were drawn live at once

    run_dir = project.only_run_dir("nested")
    final = [_normalize(line) for line in _screen_lines(screen)]
    body = _body(bar_lines=True)
    assert final[-len(body) :] == body
    assert "".join(final[: -len(body)]) == f"run dir: {run_dir}"  # (wrapped when long)
    log = (run_dir / "output.log").read_text()
    assert [_normalize(line) for line in log.splitlines()] == _body(bar_lines=True)
    assert "\x1b" not in log and "\r" not in log


def test_plain_lines_when_not_a_terminal(project: Project) -> None:
    project.write("pystematic.toml", 'output_dir = "output"\n')
    project.write("exp.py", NESTED)
    # stdout and stderr on one pipe (2>&1), so the log keeps their exact order.
    proc = subprocess.run(
        [sys.executable, "-m", "pystematic", "run", "nested"],
        cwd=project.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout
    run_dir = project.only_run_dir("nested")
    expected = []
    for epoch in range(2):
        for step in range(3):
            expected += [
                f"print {epoch}.{step}",
                f"<time> INFO pystematic.run: log {epoch}.{step}",
                f"step {step + 1}/3 (<s>)",
            ]
        expected += [
            f"stderr {epoch}",
            f"<time> INFO pystematic.run: epoch {epoch} done",
            f"epoch {epoch + 1}/2 (<s>)",
        ]
    expected.append("after the loops")
    log = (run_dir / "output.log").read_text()
    assert [_plain(line) for line in log.splitlines()] == expected
    assert [_plain(line) for line in proc.stdout.splitlines()] == [f"run dir: {run_dir}", *expected]


def _plain(line: str) -> str:
    return _normalize(re.sub(r" \(\d+\.\ds\)$", " (<s>)", line))
