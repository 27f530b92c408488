"""OutputCapture, run inside real child processes so pytest's own capture stays out of it."""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
import termios
import textwrap
from pathlib import Path

import pytest

from pystematic.capture_reader import LogFilter

# Children start block-buffered, as a plain `python` whose stdout is a pipe would.
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}

PRELUDE = """\
import os, signal, subprocess, sys, time
from pathlib import Path
from pystematic.capture import OutputCapture
log = Path(sys.argv[1])
"""


def _script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "child.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    return script


def _run(
    tmp_path: Path, body: str, merge_stderr: bool = False
) -> subprocess.CompletedProcess[bytes]:
    """Runs the child with stdout and stderr on pipes (one shared pipe if merge_stderr)."""
    script = _script(tmp_path, body)
    return subprocess.run(
        [sys.executable, str(script), str(tmp_path / "output.log")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        timeout=60,
        env=CHILD_ENV,
    )


def _run_in_pty(tmp_path: Path, body: str) -> tuple[bytes, int]:
    """Runs the child with a pty (33 rows, 111 columns) as stdout and stderr."""
    script = _script(tmp_path, body)
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "output.log")],
        stdout=slave,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        env=CHILD_ENV,
    )
    os.close(slave)
    screen = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO once the child and its capture closed the slave
            break
        if not data:
            break
        screen += data
    os.close(master)
    return screen, proc.wait(timeout=60)


def test_everything_reaches_terminal_and_log(tmp_path: Path) -> None:
    result = _run(
        tmp_path,
        """
        with OutputCapture(log):
            for i in range(10000):
                print(f"python {i}")
            for i in range(1000):
                os.write(1, f"fd {i}\\n".encode())
            print("to stderr", file=sys.stderr)
            os.write(2, b"fd2 line\\n")
            subprocess.run(["echo", "from a child process"], check=True)
            subprocess.run(["sh", "-c", "echo child stderr >&2"], check=True)
        print("after stop")
        """,
    )
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "output.log").read_text().splitlines()
    expected = {f"python {i}" for i in range(10000)} | {f"fd {i}" for i in range(1000)}
    expected |= {"to stderr", "fd2 line", "from a child process", "child stderr"}
    assert set(log) == expected
    assert len(log) == len(expected)
    # The tee keeps stdout and stderr apart when they are different files.
    stdout = result.stdout.decode().splitlines()
    stderr = result.stderr.decode().splitlines()
    assert stdout[:3] == ["python 0", "python 1", "python 2"]
    assert "from a child process" in stdout and "after stop" in stdout
    assert sorted(stderr) == ["child stderr", "fd2 line", "to stderr"]


def test_shared_stdout_stderr_keep_their_order(tmp_path: Path) -> None:
    result = _run(
        tmp_path,
        """
        with OutputCapture(log):
            for i in range(200):
                print(f"out {i}")
                print(f"err {i}", file=sys.stderr)
                os.write(1, f"raw {i}\\n".encode())
        """,
        merge_stderr=True,
    )
    assert result.returncode == 0
    expected = [f"{kind} {i}" for i in range(200) for kind in ("out", "err", "raw")]
    assert (tmp_path / "output.log").read_text().splitlines() == expected
    assert result.stdout.decode().splitlines() == expected


def test_block_buffered_stdout_is_line_buffered_while_capturing(tmp_path: Path) -> None:
    result = _run(
        tmp_path,
        """
        before = sys.stdout.line_buffering
        with OutputCapture(log):
            during = sys.stdout.line_buffering
        print(before, during, sys.stdout.line_buffering)
        """,
    )
    assert result.stdout.decode().split() == ["False", "True", "False"]


def test_pty_draws_live_and_log_keeps_final_progress_state(tmp_path: Path) -> None:
    screen, returncode = _run_in_pty(
        tmp_path,
        """
        with OutputCapture(log):
            print("isatty", sys.stdout.isatty(), sys.stderr.isatty())
            size = os.get_terminal_size(1)
            print("size", size.columns, size.lines)
            for i in range(0, 101, 10):
                sys.stderr.write(f"\\rprogress {i:3d}%")
                sys.stderr.flush()
            sys.stderr.write("\\n")
            print("done")
        """,
    )
    assert returncode == 0, screen
    # The terminal saw every redraw ...
    for i in range(0, 101, 10):
        assert f"\rprogress {i:3d}%".encode() in screen
    assert b"isatty True True" in screen
    # ... the log only the final state of the bar.
    assert (tmp_path / "output.log").read_text().splitlines() == [
        "isatty True True",
        "size 111 33",
        "progress 100%",
        "done",
    ]


def test_pty_follows_terminal_resizes(tmp_path: Path) -> None:
    screen, returncode = _run_in_pty(
        tmp_path,
        """
        import fcntl, struct, termios
        with OutputCapture(log) as capture:
            # What the kernel does when the user resizes the real terminal.
            real_terminal = capture._saved[1]
            fcntl.ioctl(real_terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
            os.kill(os.getpid(), signal.SIGWINCH)
            size = os.get_terminal_size(1)
            print("size", size.columns, size.lines)
        print("handler restored", signal.getsignal(signal.SIGWINCH) == signal.SIG_DFL)
        """,
    )
    assert returncode == 0, screen
    assert (tmp_path / "output.log").read_text() == "size 120 40\n"
    assert b"handler restored True" in screen


def test_stop_after_keyboard_interrupt_and_twice(tmp_path: Path) -> None:
    result = _run(
        tmp_path,
        """
        capture = OutputCapture(log)
        try:
            with capture:
                print("before interrupt")
                os.write(1, b"partial line without newline")
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            pass
        capture.stop()
        print("not in the log")
        """,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "output.log").read_text() == (
        "before interrupt\npartial line without newline\n"
    )
    assert result.stdout.decode().endswith("not in the log\n")


def test_stop_in_finally_after_sigterm(tmp_path: Path) -> None:
    result = _run(
        tmp_path,
        """
        def on_term(signum, frame):
            raise SystemExit(143)
        signal.signal(signal.SIGTERM, on_term)
        capture = OutputCapture(log)
        capture.start()
        try:
            print("working")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        finally:
            capture.stop()
        """,
    )
    assert result.returncode == 143
    assert (tmp_path / "output.log").read_text() == "working\n"
    assert result.stdout.decode() == "working\n"


def test_stop_returns_while_a_leftover_process_holds_the_pipe(tmp_path: Path) -> None:
    result = _run(
        tmp_path,
        """
        with OutputCapture(log):
            print("run output")
            leftover = subprocess.Popen(["sleep", "30"])
        leftover.kill()
        leftover.wait()
        print("stopped")
        """,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "output.log").read_text() == "run output\n"
    assert result.stdout.decode() == "run output\nstopped\n"


@pytest.mark.parametrize("crash", ["os._exit(3)", "os.abort()", "ctypes.string_at(0)"])
def test_output_survives_a_process_that_dies_at_once(tmp_path: Path, crash: str) -> None:
    """The reader is a separate process: what was written before the crash, and the
    interpreter's own fatal-error report, reach the terminal and the log."""
    result = _run(
        tmp_path,
        f"""
        import ctypes, faulthandler
        OutputCapture(log).start()
        faulthandler.enable(file=2)
        print("before the crash", flush=True)
        print("to stderr", file=sys.stderr, flush=True)
        {crash}
        """,
    )
    log = (tmp_path / "output.log").read_text()
    assert log.startswith("before the crash\nto stderr\n"), log
    assert result.stdout.decode() == "before the crash\n"
    if crash == "os._exit(3)":
        assert result.returncode == 3
        assert log == "before the crash\nto stderr\n"
    else:
        assert "Fatal Python error" in log
        assert "Fatal Python error" in result.stderr.decode()


def test_buffered_c_stdio_output_is_flushed_into_the_log(tmp_path: Path) -> None:
    result = _run(
        tmp_path,
        """
        import ctypes
        libc = ctypes.CDLL(None)
        with OutputCapture(log):
            libc.printf(b"printed by C\\n")  # fully buffered: stdout is a pipe
        """,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "output.log").read_text() == "printed by C\n"


def test_forked_child_exiting_does_not_stop_the_parents_capture(tmp_path: Path) -> None:
    result = _run(
        tmp_path,
        """
        import warnings
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        with OutputCapture(log):
            pid = os.fork()
            if pid == 0:
                print("from the forked child")
                sys.exit(0)  # runs atexit handlers in the child
            os.waitpid(pid, 0)
            time.sleep(0.5)  # the parent's reader would stop within 0.2 s if woken
            print("parent after fork")
        """,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "output.log").read_text().splitlines() == [
        "from the forked child",
        "parent after fork",
    ]


def test_log_is_appended_to(tmp_path: Path) -> None:
    (tmp_path / "output.log").write_text("first run\n")
    _run(tmp_path, "with OutputCapture(log):\n    print('resumed')\n")
    assert (tmp_path / "output.log").read_text() == "first run\nresumed\n"


def test_undecodable_bytes_pass_through(tmp_path: Path) -> None:
    _run(tmp_path, "with OutputCapture(log):\n    os.write(1, b'\\xff\\xfe bytes\\n')\n")
    assert (tmp_path / "output.log").read_bytes() == b"\xff\xfe bytes\n"


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 1000])
def test_carriage_return_filter_across_chunks(chunk_size: int) -> None:
    stream = (
        b"plain\n"
        b"\r 10%\r 50%\r100%\n"
        b"windows line\r\n"
        b"bar\r\r\n"
        b"overwritten\rfinal\r\n"
        b"\xe2\x94\x81 \xe2\x94\x81\r\xe2\x94\x81 done\n"
        b"tail\rlast words"
    )
    crf = LogFilter()
    out = b"".join(crf.feed(stream[i : i + chunk_size]) for i in range(0, len(stream), chunk_size))
    out += crf.flush()
    assert out == (b"plain\n100%\nwindows line\nbar\nfinal\n\xe2\x94\x81 done\nlast words\n")


def test_carriage_return_filter_keeps_only_the_last_redraw_in_memory() -> None:
    crf = LogFilter()
    for i in range(100_000):
        assert crf.feed(f"\rstep {i}".encode()) == b""
    assert len(crf._pending) < 20
    assert crf.feed(b"\n") == b"step 99999\n"
    assert crf.flush() == b""


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 1000])
def test_log_filter_drops_escape_codes_and_live_display_redraws(chunk_size: int) -> None:
    erase_two_rows = b"\r\x1b[2K\x1b[1A\x1b[2K"  # what rich writes before each redraw
    stream = (
        b"\x1b[1mbold\x1b[0m and \x1b]8;;https://x.org\x1b\\a link\x1b]8;;\x1b\\\n"
        b"\x1b(Bcharset \x1b[38;5;196mred\x1b[0m\n"
        b"\x1b[?25l"  # a live display starts: the cursor is hidden
        b"row A 0%\nrow B 0%"
        + erase_two_rows
        + b"printed above\nrow A 50%\nrow B 10%"
        + erase_two_rows
        + b"row A 50%\nrow B 90%"
        + erase_two_rows
        + b"B final\nrow A 100%"  # row B is done: its final state goes above
        + b"\r\x1b[2K"  # the display is erased
        + b"\x1b[?25h\r"  # and the cursor shown again
        + b"after\n"
        + b"spinner\x1b[K\r\x1b[Kdone\n"
    )
    crf = LogFilter()
    out = b"".join(crf.feed(stream[i : i + chunk_size]) for i in range(0, len(stream), chunk_size))
    out += crf.flush()
    assert out.decode() == ("bold and a link\ncharset red\nprinted above\nB final\nafter\ndone\n")


def test_log_filter_holds_a_bounded_number_of_rows_while_the_cursor_is_hidden() -> None:
    crf = LogFilter()
    out = crf.feed(b"\x1b[?25l")
    for i in range(5000):
        out += crf.feed(f"line {i}\n".encode())
        assert len(crf._above) <= 1000
    out += crf.flush()  # a display that never ended (a crash): what it showed last
    assert out.decode().splitlines() == [f"line {i}" for i in range(5000)]
