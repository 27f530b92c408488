"""TensorBoard's HParams tab, through a real ``tensorboard`` server and the endpoints its
frontend calls: runs of two experiments in one table, with their own parameters, final
scalars and statuses, made by the real CLI."""

from __future__ import annotations

import json
import math
import queue
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Project
from pystematic.recording import Recorder
from pystematic.recording import tensorboard as tbmod

TRAIN = """
import pystematic as ps

@ps.parameter("lr", type=float, default=0.1)
@ps.parameter("optimizer", type=str, default="adam")
@ps.parameter("mode", type=str, default="ok")
@ps.experiment
def train(params, context):
    for s in range(3):
        context.recorder.scalars({"loss": params.lr * (3 - s), "acc": 0.5 + 0.1 * s})
        context.recorder.step()
    if params.mode == "fail":
        raise RuntimeError("diverged")
"""

EVALUATE = """
import time
import pystematic as ps

@ps.parameter("threshold", type=float, default=0.5)
@ps.experiment
def evaluate(params, context):
    context.recorder.scalar("recall", params.threshold)
    context.recorder.step()
    context.recorder.flush()
    print("ready", flush=True)
    time.sleep(600)
"""

STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


def f32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


class TensorBoard:
    """A ``tensorboard --logdir`` server on 127.0.0.1, on a port the OS picked."""

    def __init__(self, logdir: Path) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tensorboard.main",
                "--logdir",
                str(logdir),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--load_fast",
                "false",
                "--reload_interval",
                "0.5",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stderr is not None
        stderr = self.proc.stderr
        self.reader = threading.Thread(target=lambda: [lines.put(x) for x in stderr], daemon=True)
        self.reader.start()
        deadline = time.monotonic() + 60
        seen = []
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"tensorboard did not start: {seen}") from None
            seen.append(line)
            found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
            if found:
                self.url = f"http://127.0.0.1:{found.group(1)}"
                return

    def post(self, route: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            f"{self.url}/data/plugin/hparams/{route}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def experiment(self) -> Any:
        return self.post("experiment", {"experimentName": ""})  # as the HParams dashboard

    def session_groups(self, experiment: Any) -> list[Any]:
        """Every session group with every hparam and metric, as the dashboard asks."""
        cols: list[dict[str, Any]] = [
            {"hparam": h["name"], "includeInResult": True} for h in experiment["hparamInfos"]
        ]
        cols += [
            {"metric": m["name"], "includeInResult": True}
            for m in experiment.get("metricInfos", [])
        ]
        body = {
            "experimentName": "",
            "allowedStatuses": STATUSES,
            "colParams": cols,
            "aggregationType": "AGGREGATION_AVG",
            "startIndex": 0,
            "sliceSize": 100,
        }
        return list(self.post("session_groups", body).get("sessionGroups", []))

    def wait_for(self, done: Callable[[Any, list[Any]], bool]) -> tuple[Any, list[Any]]:
        """Poll until ``done(experiment, groups)`` (TensorBoard loads in the background)."""
        deadline = time.monotonic() + 60
        while True:
            experiment = self.experiment()
            groups = self.session_groups(experiment) if experiment.get("hparamInfos") else []
            if done(experiment, groups) or time.monotonic() > deadline:
                return experiment, groups
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.reader.join(timeout=30)  # it ends at the pipe's end
        assert self.proc.stderr is not None
        self.proc.stderr.close()


@pytest.fixture
def tensorboard_server() -> Iterator[Callable[[Path], TensorBoard]]:
    started: list[TensorBoard] = []

    def start(logdir: Path) -> TensorBoard:
        started.append(TensorBoard(logdir))
        return started[-1]

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def by_session(groups: list[Any]) -> dict[str, Any]:
    """``experiment/run-id`` -> the one session of its group, with the group's hparams."""
    out = {}
    for group in groups:
        (session,) = group["sessions"]
        key = session["name"].removesuffix("/tensorboard")
        out[key] = {**session, "hparams": group["hparams"]}
    return out


@pytest.mark.slow
def test_hparams_table_spans_experiments_with_statuses_and_final_metrics(
    project: Project, tensorboard_server: Callable[[Path], TensorBoard]
) -> None:
    project.write("pystematic.toml", "")
    project.write("train.py", TRAIN)
    project.write("evaluate.py", EVALUATE)
    seed = ["--random-seed", "7"]
    cli = [sys.executable, "-m", "pystematic", "run"]
    waiting = subprocess.Popen(
        [*cli, "evaluate", "--threshold", "0.25", *seed],
        cwd=project.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        good = subprocess.Popen([*cli, "train", *seed], cwd=project.root)
        bad = subprocess.Popen(
            [*cli, "train", "--lr", "0.01", "--mode", "fail", *seed],
            cwd=project.root,
            stderr=subprocess.DEVNULL,
        )
        assert (good.wait(timeout=180), bad.wait(timeout=180)) == (0, 1)
        assert waiting.stdout is not None
        assert waiting.stdout.readline().strip() == "ready"
        (evaluated,) = project.run_dirs("evaluate")
        completed, failed = sorted(
            project.run_dirs("train"),
            key=lambda d: json.loads((d / "run.json").read_text())["status"],
        )
        ids = {d: f"{d.parent.name}/{d.name}" for d in (completed, failed, evaluated)}

        server = tensorboard_server(project.root / "output")
        # A running run is in the table already, with no end: TensorBoard says unknown.
        _, groups = server.wait_for(lambda e, g: len(g) == 3)
        running = by_session(groups)[ids[evaluated]]
        assert running["status"] == "STATUS_UNKNOWN" and running["endTimeSecs"] == 0

        waiting.send_signal(signal.SIGINT)
        assert waiting.wait(timeout=60) == 130
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
        assert waiting.stdout is not None
        waiting.stdout.close()

    def ended(experiment: Any, groups: list[Any]) -> bool:
        return len(groups) == 3 and all(s["endTimeSecs"] > 0 for s in by_session(groups).values())

    experiment, groups = server.wait_for(ended)
    sessions = by_session(groups)
    assert set(sessions) == set(ids.values())

    # One table for both experiments: every parameter, the varying ones marked.
    infos = {h["name"]: h for h in experiment["hparamInfos"]}
    assert {"lr", "optimizer", "mode", "threshold", "random_seed"} <= set(infos)
    differs = {name for name, info in infos.items() if info.get("differs")}
    assert differs == {"lr", "mode"}
    assert {m["name"]["tag"] for m in experiment["metricInfos"]} == {"loss", "acc", "recall"}

    # Each run: its own parameters, its status, its final scalars as metrics.
    def metrics(session: Any) -> dict[str, tuple[int, float]]:
        return {m["name"]["tag"]: (m["trainingStep"], m["value"]) for m in session["metricValues"]}

    done = sessions[ids[completed]]
    assert done["status"] == "STATUS_SUCCESS"
    assert done["hparams"]["lr"] == 0.1 and done["hparams"]["mode"] == "ok"
    assert done["hparams"]["optimizer"] == "adam" and done["hparams"]["random_seed"] == 7
    assert "threshold" not in done["hparams"]
    assert metrics(done) == {"loss": (2, f32(0.1)), "acc": (2, f32(0.5 + 0.2))}

    crashed = sessions[ids[failed]]
    assert crashed["status"] == "STATUS_FAILURE"
    assert crashed["hparams"]["lr"] == 0.01 and crashed["hparams"]["mode"] == "fail"
    assert metrics(crashed) == {"loss": (2, f32(0.01)), "acc": (2, f32(0.5 + 0.2))}

    stopped = sessions[ids[evaluated]]
    assert stopped["status"] == "STATUS_FAILURE"  # TensorBoard has no "aborted"
    assert stopped["hparams"] == {"threshold": 0.25, "random_seed": 7, "deterministic": False}
    assert metrics(stopped) == {"recall": (0, 0.25)}


def hparams_events(run: Path) -> list[tuple[str, Any]]:
    """(tag, parsed plugin data) of every HParams event under ``run/tensorboard``."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    found = []
    for path in sorted((run / "tensorboard").iterdir()):
        for event in LegacyEventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    content = value.metadata.plugin_data.content
                    found.append((value.tag, plugin_data_pb2.HParamsPluginData.FromString(content)))
    return found


def test_session_start_and_end_parse_as_tensorboards_protos(tmp_path: Path) -> None:
    params = {"lr": 0.01, "opt": "adam", "aug": True, "n": 3, "big": 10**400, "nested": {"a": 1}}
    with Recorder(tmp_path) as rec:
        rec.start_run({**params, "skip": None, "dir": Path("x/y"), "xs": [1, 2]}, experiment="e")
        rec.scalar("loss", 1.0)
        rec.step()
    (start_tag, start), (end_tag, end) = hparams_events(tmp_path)
    assert (start_tag, end_tag) == (tbmod.SESSION_START_TAG, tbmod.SESSION_END_TAG)
    hp = start.session_start_info.hparams
    assert hp["lr"].number_value == 0.01 and hp["opt"].string_value == "adam"
    assert hp["aug"].bool_value is True and hp["n"].number_value == 3.0
    assert hp["big"].string_value == str(10**400) and hp["nested.a"].number_value == 1.0
    assert hp["dir"].string_value == "x/y" and hp["xs"].string_value == "[1, 2]"
    assert "skip" not in hp and start.version == 0
    assert math.isclose(start.session_start_info.start_time_secs, time.time(), abs_tol=60)
    assert end.session_end_info.status == 1  # STATUS_SUCCESS: the with-block completed
    assert end.session_end_info.end_time_secs >= start.session_start_info.start_time_secs


def test_a_resumed_run_keeps_only_its_latest_session(tmp_path: Path) -> None:
    """TensorBoard keeps the first start and end it reads in a run: a resume must remove
    the earlier attempt's, or the table would show the old status forever."""
    with pytest.raises(KeyboardInterrupt), Recorder(tmp_path) as rec:
        rec.start_run({"lr": 0.1})
        rec.scalar("loss", 1.0)
        rec.step()
        raise KeyboardInterrupt
    (tmp_path / "tensorboard" / "leftover.tfevents.tmp").write_bytes(b"half")
    with Recorder(tmp_path) as rec:
        rec.start_run({"lr": 0.2}, resumed=True)
        rec.truncate(1)
        rec.scalar("loss", 2.0)
        rec.step()
    events = hparams_events(tmp_path)
    assert [tag for tag, _ in events] == [tbmod.SESSION_START_TAG, tbmod.SESSION_END_TAG]
    assert events[0][1].session_start_info.hparams["lr"].number_value == 0.2
    assert events[1][1].session_end_info.status == 1
    assert not list((tmp_path / "tensorboard").glob("*.tmp"))
