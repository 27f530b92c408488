"""Experiments defined and run in a real Jupyter kernel, driven through ``jupyter_client``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import start_new_kernel

from conftest import Project


@dataclass
class Cell:
    """What executing one cell gave: its status, text per stream and its value."""

    status: str
    streams: dict[str, str] = field(default_factory=dict)
    result: str | None = None
    error: str = ""


def execute(client: BlockingKernelClient, code: str) -> Cell:
    cell = Cell(status="")

    def on_message(msg: dict[str, Any]) -> None:
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            cell.streams[content["name"]] = cell.streams.get(content["name"], "") + content["text"]
        elif kind == "execute_result":
            cell.result = content["data"]["text/plain"]
        elif kind == "error":
            cell.error = "\n".join(content["traceback"])

    reply = client.execute_interactive(code, output_hook=on_message, timeout=120)
    cell.status = reply["content"]["status"]
    assert cell.status == "ok", cell.error
    return cell


def _run_dir(cell: Cell) -> Path:
    """The run dir that ``run`` announced on the cell's stderr."""
    found = re.search(r"^run dir: (.+)$", cell.streams["stderr"], re.MULTILINE)
    assert found, cell.streams
    return Path(found.group(1))


@pytest.fixture
def kernel(project: Project, monkeypatch: pytest.MonkeyPatch) -> Iterator[BlockingKernelClient]:
    """A fresh IPython kernel whose working folder is the project; always shut down."""
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")  # (jupyter_core warns without it)
    manager, client = start_new_kernel(kernel_name="python3", cwd=str(project.root))
    try:
        yield client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


DEFINE = """
import json, logging, signal, torch
import pystematic as ps

def global_state():
    root = logging.getLogger()
    return (
        root.level,
        list(root.handlers),
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        signal.getsignal(signal.SIGUSR1),
        signal.getsignal(signal.SIGTERM),
        signal.getsignal(signal.SIGINT),
    )

before = global_state()

@ps.parameter("n", type=int, default=1)
@ps.experiment
def notebook(params, context):
    print(f"printed in the cell {params.n}")
    print("deterministic", torch.are_deterministic_algorithms_enabled())
    context.logger.info("logged %d", params.n)
    signal.signal(signal.SIGUSR1, lambda signum, frame: None)  # a handler of main's own
    return params.n * 10
"""


@pytest.mark.slow
def test_experiment_defined_and_run_in_a_notebook(
    project: Project, kernel: BlockingKernelClient
) -> None:
    project.write("pystematic.toml", 'output_dir = "output"\n')
    execute(kernel, DEFINE)

    first = execute(kernel, 'notebook.run({"n": 1})')
    second = execute(kernel, 'notebook.run({"n": 2, "deterministic": True})')
    assert (first.result, second.result) == ("10", "20")
    # The notebook still shows what the cell printed.
    assert first.streams["stdout"] == "printed in the cell 1\ndeterministic False\n"
    assert second.streams["stdout"] == "printed in the cell 2\ndeterministic True\n"

    # The runs are under the project's output dir (not the kernel's temp folder) ...
    run_dirs = [_run_dir(cell) for cell in (first, second)]
    assert sorted(run_dirs) == project.run_dirs("notebook")
    for n, run_dir in enumerate(run_dirs, start=1):
        log = (run_dir / "output.log").read_text()
        log = re.sub(r"(?m)^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", "<time> ", log)
        assert log == (
            f"printed in the cell {n}\n"
            f"deterministic {n == 2}\n"
            f"<time> INFO pystematic.run: logged {n}\n"
        )

    # ... where load_runs() finds them; and the notebook's global state is as it was.
    after = execute(
        kernel,
        'print(json.dumps({"same": global_state() == before,'
        ' "runs": [[r["path"], r["status"]] for r in ps.load_runs()]}))',
    )
    report = json.loads(after.streams["stdout"])
    assert sorted(report["runs"]) == sorted([str(d), "completed"] for d in run_dirs)
    assert report["same"] is True
