"""The recorder: values round-trip through TensorBoard's own reader and metrics.jsonl."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import pystematic as ps
from pystematic.errors import ParameterError
from pystematic.recording import (
    Backend,
    MemoryBackend,
    Recorder,
    StepRecord,
    _resolve_tensors,
    sanitize_tag,
)
from pystematic.recording import tensorboard as tbmod

SRC = str(Path(__file__).resolve().parents[1] / "src")


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0] if math.isfinite(x) else x


def read_jsonl(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def read_events(run: Path) -> list[Any]:
    """Every event of every file in <run>/tensorboard, through tensorboard's reader."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    events = []
    for path in sorted((run / "tensorboard").iterdir()):
        events.extend(LegacyEventFileLoader(str(path)).Load())
    return events


def tb_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for ev in read_events(run):
        for v in ev.summary.value:
            if v.WhichOneof("value") == "simple_value":
                out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return out


def accumulator(run: Path) -> Any:
    """TensorBoard's own loading (purging included), nothing sampled away."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(run / "tensorboard"), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    return acc


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


# -- round trips ------------------------------------------------------------------------


def test_every_tag_step_and_value_reads_back(tmp_path: Path) -> None:
    recorded: dict[int, dict[str, float]] = {}
    with Recorder(tmp_path, batch_steps=64) as rec:
        for s in range(500):
            values = {"loss": 1.0 / (s + 1), "acc": s * 0.001 + 1e-9, "lr": 0.1 * 0.99**s}
            if s % 50 == 0:
                values["val/acc"] = s / 1000
            rec.scalars(values)
            recorded[s] = values
            rec.step()
        assert rec.global_step == 500

    lines = read_jsonl(tmp_path)
    assert [line["step"] for line in lines] == list(range(500))
    times = [line["time"] for line in lines]
    assert times == sorted(times) and abs(times[-1] - time.time()) < 3600
    for line in lines:
        assert {k: v for k, v in line.items() if k not in ("step", "time")} == recorded[
            line["step"]
        ]

    got = tb_scalars(tmp_path)
    want: dict[str, list[tuple[int, float]]] = {}
    for s, values in recorded.items():
        for tag, v in values.items():
            want.setdefault(tag, []).append((s, f32(v)))
    assert got == want
    # one event per step, not one per value
    assert sum(1 for ev in read_events(tmp_path) if ev.HasField("summary")) == 500
    acc = accumulator(tmp_path)
    assert len(acc.Scalars("loss")) == 500 and len(acc.Scalars("val/acc")) == 10


def test_jsonl_values_are_the_exact_floats_given(tmp_path: Path) -> None:
    values = [0.1, 1 / 3, 2.0**-1074, 1e308, -0.0, 123456789.123456789]
    with Recorder(tmp_path, backends=["jsonl"]) as rec:
        for v in values:
            rec.scalar("x", v)
            rec.step()
    got = [line["x"] for line in read_jsonl(tmp_path)]
    assert [struct.pack("<d", g) for g in got] == [struct.pack("<d", v) for v in values]
    assert (
        (tmp_path / "metrics.jsonl").read_text().splitlines()[0].startswith('{"step": 0, "time": ')
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, 3.0),
        (True, 1.0),
        (np.float32(0.1), float(np.float32(0.1))),
        (np.float64(0.1), 0.1),
        (np.int64(7), 7.0),
        (np.array(2.5), 2.5),
        (torch.tensor(0.25, dtype=torch.float64), 0.25),
        (torch.tensor([1.5]), 1.5),
        (torch.tensor(3), 3.0),
        (torch.tensor(0.1, requires_grad=True) * 1, float(torch.tensor(0.1).item())),
    ],
)
def test_value_types(tmp_path: Path, value: Any, expected: float) -> None:
    with Recorder(tmp_path, backends=["jsonl"]) as rec:
        rec.scalar("v", value)
        rec.step()
        assert rec.last_scalars == {"v": expected}
    line = read_jsonl(tmp_path)[0]
    assert line["v"] == expected and type(line["v"]) is float


@pytest.mark.parametrize("value", ["1.0", b"1", [1.0, 2.0], torch.zeros(2), None])
def test_non_numbers_are_refused(tmp_path: Path, value: Any) -> None:
    with Recorder(tmp_path, backends=["memory"]) as rec, pytest.raises(TypeError, match="'v'"):
        rec.scalar("v", value)


def test_cpu_tensor_is_captured_when_added(tmp_path: Path) -> None:
    running = torch.zeros(())
    with Recorder(tmp_path, backends=["memory"]) as rec:
        running += 2.0
        rec.scalar("sum", running)
        running += 5.0  # an in-place update after the call must not change what was recorded
        rec.step()
    (memory,) = rec.backends
    assert isinstance(memory, MemoryBackend)
    assert memory.scalars("sum") == [(0, 2.0)]


def test_deferred_tensors_are_resolved_in_one_batch() -> None:
    # what scalar() keeps for GPU tensors (CPU ones here: the conversion is the same)
    values: list[dict[str, Any]] = [
        {"a": torch.tensor(1.5), "b": 2.0},
        {"a": torch.tensor(float("nan"), dtype=torch.float16)},
        {"a": torch.tensor([7], dtype=torch.int32)},
    ]
    records = [StepRecord(i, 0.0, v, []) for i, v in enumerate(values)]
    flagged: list[str] = []
    _resolve_tensors(records, flagged.append)
    assert records[0].scalars == {"a": 1.5, "b": 2.0}
    assert math.isnan(records[1].scalars["a"]) and records[2].scalars["a"] == 7.0
    assert all(type(v) is float for r in records for v in r.scalars.values())
    assert flagged == ["a"]


# -- the awkward cases --------------------------------------------------------------------


def test_a_tag_added_twice_keeps_the_last_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "pystematic.recording"), Recorder(tmp_path) as rec:
        for s in range(3):
            rec.scalar("loss", 1.0)
            rec.scalar("loss", 2.0 + s)
            rec.step()
    assert [line["loss"] for line in read_jsonl(tmp_path)] == [2.0, 3.0, 4.0]
    assert tb_scalars(tmp_path)["loss"] == [(0, 2.0), (1, 3.0), (2, 4.0)]
    assert sum("added twice" in r.getMessage() for r in caplog.records) == 1


def test_non_finite_values_are_recorded_and_warned_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    values = [math.nan, math.inf, -math.inf, 1e39, 1.0]
    with caplog.at_level(logging.WARNING, "pystematic.recording"), Recorder(tmp_path) as rec:
        for v in values:
            rec.scalar("x", v)
            rec.step()
    text = (tmp_path / "metrics.jsonl").read_text()
    assert '"x": NaN' in text and '"x": Infinity' in text and '"x": -Infinity' in text
    got = [line["x"] for line in read_jsonl(tmp_path)]
    assert len(got) == len(values) and all(same(g, values[i]) for i, g in enumerate(got))
    tb = [v for _, v in tb_scalars(tmp_path)["x"]]
    assert math.isnan(tb[0]) and tb[1:] == [math.inf, -math.inf, math.inf, 1.0]
    assert sum("not finite" in r.getMessage() for r in caplog.records) == 1


def test_tags_are_sanitised_predictably(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert sanitize_tag("val acc") == "val_acc"
    assert sanitize_tag("/train/loss") == "train/loss"
    assert sanitize_tag("a:b(c)%") == "a_b_c__"
    assert sanitize_tag("ok/tag-1.x_y") == "ok/tag-1.x_y"
    assert sanitize_tag("é") == "_" and sanitize_tag("") == "_" and sanitize_tag("//") == "_"
    with caplog.at_level(logging.WARNING, "pystematic.recording"), Recorder(tmp_path) as rec:
        for _ in range(2):
            rec.scalar("val acc", 0.5)
            rec.step()
        assert rec.last_scalars == {"val_acc": 0.5}
    assert read_jsonl(tmp_path)[0]["val_acc"] == 0.5
    assert list(tb_scalars(tmp_path)) == ["val_acc"]
    assert sum("'val acc' is recorded as 'val_acc'" in r.getMessage() for r in caplog.records) == 1


def test_tags_that_clean_to_the_same_name_are_an_error_naming_both(tmp_path: Path) -> None:
    with Recorder(tmp_path, backends=["memory"]) as rec:
        rec.scalar("val acc", 1.0)
        rec.scalar("val acc", 2.0)  # the same tag again is fine
        with pytest.raises(ValueError, match=r"tags 'val acc' and 'val_acc' are both recorded"):
            rec.scalar("val_acc", 1.0)
        with pytest.raises(ValueError, match=r"tags 'val acc' and 'val:acc' are both"):
            rec.text("val:acc", "x")
        rec.step()
    assert [r.scalars for r in rec.backends[0].records] == [{"val_acc": 2.0}]  # type: ignore[attr-defined]


@pytest.mark.parametrize("tag", ["step", "time"])
def test_reserved_tags_are_refused(tmp_path: Path, tag: str) -> None:
    with Recorder(tmp_path) as rec, pytest.raises(ValueError, match="reserved"):
        rec.scalar(tag, 1.0)


def test_unknown_backend_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(
        ParameterError, match=r"'wandb' \(known: console, jsonl, memory, mlflow, tensorboard\)"
    ):
        Recorder(tmp_path, backends=["jsonl", "wandb"])
    assert not any(tmp_path.iterdir())


def test_writing_after_close_warns_once_and_writes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder(tmp_path)
    rec.scalar("a", 1.0)
    rec.step()
    rec.close()
    rec.close()  # idempotent
    with caplog.at_level(logging.WARNING, "pystematic.recording"):
        rec.scalar("a", 2.0)
        rec.scalars({"b": 1.0})
        rec.text("t", "x")
        rec.histogram("h", [1.0])
        rec.image("i", np.zeros((3, 2, 2)))
        rec.step()
        rec.flush()
        rec.start_run({"lr": 0.1})
        rec.end_run("completed")
        rec.close()
    assert sum("closed" in r.getMessage() for r in caplog.records) == 1
    assert len(read_jsonl(tmp_path)) == 1 and tb_scalars(tmp_path) == {"a": [(0, 1.0)]}
    assert rec.global_step == 1 and rec.last_scalars == {"a": 1.0}


def test_close_commits_values_added_after_the_last_step(tmp_path: Path) -> None:
    with Recorder(tmp_path) as rec:
        rec.scalar("a", 1.0)
        rec.step()
        rec.scalar("final", 0.5)
    assert read_jsonl(tmp_path)[-1] == {
        "step": 1,
        "time": read_jsonl(tmp_path)[-1]["time"],
        "final": 0.5,
    }
    assert rec.last_scalars == {"a": 1.0, "final": 0.5}


def test_global_step_is_settable_and_steps_without_values_write_nothing(tmp_path: Path) -> None:
    with Recorder(tmp_path, global_step=10) as rec:
        rec.step()  # nothing recorded: no line, no event
        rec.text("note", "only text")
        rec.step()  # text only: an event, no jsonl line
        rec.global_step = 100
        rec.scalar("a", 1.0)
        rec.step()
        assert rec.global_step == 101
        with pytest.raises(ValueError):
            rec.global_step = -1
        with pytest.raises(TypeError):
            rec.global_step = 1.5  # type: ignore[assignment]
    assert [line["step"] for line in read_jsonl(tmp_path)] == [100]
    steps = [ev.step for ev in read_events(tmp_path) if ev.HasField("summary")]
    assert steps == [11, 100]


def test_last_scalars_is_the_last_committed_value_per_tag(tmp_path: Path) -> None:
    with Recorder(tmp_path, backends=["memory"]) as rec:
        rec.scalars({"loss": 1.0, "val": 0.5})
        rec.step()
        rec.scalar("loss", 0.7)
        assert rec.last_scalars == {"loss": 1.0, "val": 0.5}  # not committed yet
        rec.step()
        assert rec.last_scalars == {"loss": 0.7, "val": 0.5}


# -- text, histograms, images ------------------------------------------------------------


def test_text_histogram_and_image_read_back(tmp_path: Path) -> None:
    gray = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    with Recorder(tmp_path) as rec:
        rec.scalar("loss", 1.0)
        rec.text("notes", "**hello**")
        rec.histogram("weights", torch.arange(100, dtype=torch.float32), bins=10)
        rec.histogram("with nan", [1.0, float("nan"), 3.0])
        rec.image("rgb", torch.zeros(3, 5, 7))
        rec.image("gray", gray, dataformats="HW")
        rec.image("hwc", np.full((4, 6, 3), 255, dtype=np.uint8), dataformats="HWC")
        rec.step()
        with pytest.raises(ValueError, match="dataformats"):
            rec.image("bad", np.zeros((2, 3)), dataformats="CHW")
    (ev,) = [ev for ev in read_events(tmp_path) if ev.HasField("summary")]
    values = {v.tag: v for v in ev.summary.value}
    assert set(values) == {
        "loss",
        "notes/text_summary",
        "weights",
        "with_nan",
        "rgb",
        "gray",
        "hwc",
    }
    assert values["notes/text_summary"].tensor.string_val == [b"**hello**"]
    histo = values["weights"].histo
    assert (histo.num, histo.min, histo.max, histo.sum) == (100, 0.0, 99.0, 4950.0)
    assert values["with_nan"].histo.num == 2
    for tag, (h, w) in {"rgb": (5, 7), "gray": (3, 4), "hwc": (4, 6)}.items():
        image = values[tag].image
        assert (image.height, image.width) == (h, w)
        assert image.encoded_image_string.startswith(b"\x89PNG")


def test_figure_is_recorded_as_an_image(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1), dpi=50)
    fig.add_subplot().plot([0, 1], [1, 0])
    with Recorder(tmp_path) as rec:
        rec.figure("plot", fig)
        rec.step()
    (ev,) = [ev for ev in read_events(tmp_path) if ev.HasField("summary")]
    assert (ev.summary.value[0].image.width, ev.summary.value[0].image.height) == (100, 50)


# -- encoding -----------------------------------------------------------------------------


@pytest.mark.parametrize("step", [0, 1, 127, 128, 300, 2**31, 2**40])
def test_hand_encoded_events_equal_protobuf(step: int) -> None:
    from tensorboardX.proto.event_pb2 import Event, SessionLog
    from tensorboardX.proto.summary_pb2 import Summary

    scalars = {"a": 0.5, "val/acc": -1e-20, "x" * 200: math.nan, "big": 1e39, "z": -math.inf}
    mine = tbmod.event(step, 1732540000.25, tbmod.ScalarEncoder().summary(scalars))
    want = Event(
        wall_time=1732540000.25,
        step=step,
        summary=Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in scalars.items()]),
    )
    got = Event.FromString(mine)
    assert str(got) == str(want)  # nan != nan, so compare the text form
    assert Event.FromString(tbmod.file_version_event(5.0)) == Event(
        wall_time=5.0, file_version="brain.Event:2"
    )
    assert Event.FromString(tbmod.purge_event(step, 5.0)) == Event(
        wall_time=5.0, step=step, session_log=SessionLog(status=SessionLog.START)
    )
    assert tbmod.event_step(mine) == (step, False)
    assert tbmod.event_step(tbmod.file_version_event(1.0)) == (0, True)


def test_framing_matches_tensorboardx_record_writer(tmp_path: Path) -> None:
    from tensorboardX.record_writer import RecordWriter

    data = tbmod.event(3, 1.0, tbmod.ScalarEncoder().summary({"a": 1.0}))
    writer = RecordWriter(str(tmp_path / "ref"))
    writer.write(data)
    writer.close()
    assert (tmp_path / "ref").read_bytes() == tbmod.frame(data)


def test_scalars_only_never_import_tensorboardx(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from pystematic.recording import Recorder
        with Recorder({str(tmp_path)!r}) as rec:
            for s in range(10):
                rec.scalar("a", s)
                rec.step()
        print("tensorboardX" in sys.modules, "torch" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    assert len(tb_scalars(tmp_path)["a"]) == 10


# -- batching, flushing, crashes ------------------------------------------------------------


def test_steps_are_written_in_batches_without_close(tmp_path: Path) -> None:
    memory = MemoryBackend()
    rec = Recorder(tmp_path, backends=[memory, "jsonl"], batch_steps=100, flush_secs=3600)
    for s in range(250):
        rec.scalar("a", float(s))
        rec.step()
    assert len(memory.records) == 200  # two full batches written, the rest waits
    assert len(read_jsonl(tmp_path)) == 200
    rec.flush()
    assert len(memory.records) == 250 and len(read_jsonl(tmp_path)) == 250 and memory.flushes == 1
    rec.close()
    assert memory.closed


def test_a_stalled_loop_still_gets_its_steps_on_disk(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, backends=["jsonl"], flush_secs=0.05)
    for s in range(3):
        rec.scalar("a", float(s))
        rec.step()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        path = tmp_path / "metrics.jsonl"
        if path.exists() and len(path.read_text().splitlines()) == 3:
            break
        time.sleep(0.02)
    assert len(read_jsonl(tmp_path)) == 3  # written by the flush thread, before close()
    rec.close()


CRASH_SCRIPT = """
import signal, sys, time
from pystematic.recording import Recorder

def on_term(signum, frame):
    raise SystemExit(143)

signal.signal(signal.SIGTERM, on_term)
mode, out = sys.argv[1], sys.argv[2]
rec = Recorder(out)
try:
    for s in range(10**9):
        rec.scalars({"loss": 1.0 / (s + 1), "s": float(s)})
        rec.step()
        if s == 999:
            if mode == "raise":
                raise RuntimeError("boom")
            print("ready", flush=True)
            time.sleep(0.001)
        elif s > 999:
            time.sleep(0.0005)
finally:
    rec.close()
    print("recorded", rec.global_step, flush=True)
"""


@pytest.mark.parametrize("mode", ["raise", "sigint", "sigterm"])
def test_everything_recorded_before_a_crash_is_on_disk(tmp_path: Path, mode: str) -> None:
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen(
        [sys.executable, str(script), mode, str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    if mode != "raise":
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT if mode == "sigint" else signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert {"raise": "RuntimeError: boom", "sigint": "KeyboardInterrupt"}.get(mode, "") in err
    recorded = int(out.split("recorded")[-1])
    assert recorded >= 1000
    lines = read_jsonl(run)
    assert [line["step"] for line in lines] == list(range(recorded))
    assert all(line["s"] == line["step"] for line in lines)
    tb = tb_scalars(run)
    assert tb["s"] == [(s, float(s)) for s in range(recorded)]


def test_a_recorder_dropped_without_close_is_still_written(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, backends=["jsonl"], flush_secs=0.05)
    for s in range(5):
        rec.scalar("a", float(s))
        rec.step()
    del rec
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        path = tmp_path / "metrics.jsonl"
        if path.exists() and len(path.read_text().splitlines()) == 5:
            break
        time.sleep(0.02)
    assert len(read_jsonl(tmp_path)) == 5


# -- resume -----------------------------------------------------------------------------


def test_truncate_drops_later_steps_everywhere(tmp_path: Path) -> None:
    with Recorder(tmp_path) as rec:
        for s in range(100):
            rec.scalar("a", float(s))
            rec.step()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 100, "time": 1.0, "a": 1')  # a torn line, as after a crash
    # what a kill in the middle of an earlier resume's rewrite leaves behind
    (tmp_path / "metrics.jsonl.tmp").write_text('{"step": 0')
    (tmp_path / "tensorboard" / "events.out.tfevents.1.host.0000.tmp").write_bytes(b"x")
    with Recorder(tmp_path) as rec:
        rec.truncate(50)
        assert rec.global_step == 50
        for s in range(50, 80):
            rec.scalar("a", s + 0.5)
            rec.step()
    want = [float(s) for s in range(50)] + [s + 0.5 for s in range(50, 80)]
    assert [line["a"] for line in read_jsonl(tmp_path)] == want
    assert [line["step"] for line in read_jsonl(tmp_path)] == list(range(80))
    assert tb_scalars(tmp_path)["a"] == list(enumerate(want))  # old points really gone
    assert [(e.step, e.value) for e in accumulator(tmp_path).Scalars("a")] == list(enumerate(want))
    assert len(list((tmp_path / "tensorboard").iterdir())) == 2
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_torn_last_line_is_cut_before_appending(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "time": 1.0, "a": 1.0}\n{"step": 1, "ti')
    with Recorder(tmp_path, backends=["jsonl"], global_step=5) as rec:
        rec.scalar("a", 2.0)
        rec.step()
    assert [line["step"] for line in read_jsonl(tmp_path)] == [0, 5]


# -- run lifecycle ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raised", "status"),
    [(None, "completed"), (RuntimeError, "failed"), (KeyboardInterrupt, "interrupted")],
)
def test_a_started_run_ends_with_the_status_of_its_with_block(
    tmp_path: Path, raised: type[BaseException] | None, status: str
) -> None:
    memory = MemoryBackend()
    expect = pytest.raises(raised) if raised else contextlib.nullcontext()
    with expect, Recorder(tmp_path / "run-7", backends=[memory]) as rec:
        rec.start_run({"lr": 0.1}, experiment="train", tags=["a"], git_commit="abc")
        rec.scalar("loss", 1.0)  # not stepped: committed before the end
        if raised:
            raise raised()
    (run,) = memory.runs
    assert (run.params, run.run_id, run.experiment, run.tags) == (
        {"lr": 0.1},
        "run-7",
        "train",
        ("a",),
    )
    assert (run.git_commit, run.resumed, run.run_dir) == ("abc", False, tmp_path / "run-7")
    assert memory.ended == [status] and memory.closed
    assert [(r.step, r.scalars) for r in memory.records] == [(0, {"loss": 1.0})]


def test_end_run_raises_a_write_failure_then_ends_the_others(tmp_path: Path) -> None:
    memory = MemoryBackend()
    rec = Recorder(tmp_path, backends=[BrokenBackend(), memory], flush_secs=3600)
    rec.start_run({})
    rec.scalar("a", 1.0)
    with pytest.raises(OSError, match="disk full"):
        rec.end_run("completed")
    assert memory.ended == []  # no end is written over steps that were not
    rec.end_run("failed")
    rec.end_run("failed")  # once only
    rec.close()
    assert memory.ended == ["failed"] and len(memory.records) == 1
    with pytest.raises(ValueError, match="status must be one of"):
        rec.end_run("done")


# -- backends ----------------------------------------------------------------------------


class ListBackend(Backend):
    name = "list"

    def __init__(self) -> None:
        self.seen: list[tuple[int, dict[str, float]]] = []

    def write_step(self, record: StepRecord) -> None:
        self.seen.append((record.step, dict(record.scalars)))


class BrokenBackend(Backend):
    name = "broken"

    def write_step(self, record: StepRecord) -> None:
        raise OSError("disk full")


def test_user_backends_plug_in_and_a_failing_one_raises_in_the_loop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mine = ListBackend()
    backends: list[str | Backend] = [BrokenBackend(), mine, "jsonl"]
    rec = Recorder(tmp_path, backends, flush_secs=3600)
    with caplog.at_level(logging.ERROR, "pystematic.recording"):
        for s in range(3):
            rec.scalar("a", float(s))
            rec.step()
        with pytest.raises(OSError, match="disk full") as raised:
            rec.flush()
        rec.scalar("a", 3.0)
        rec.step()
        rec.close()  # the failure was raised once; the others go on
    assert mine.seen == [(s, {"a": float(s)}) for s in range(4)]
    assert len(read_jsonl(tmp_path)) == 4
    # The raised error says where it came from; nothing is logged at ERROR on top.
    assert getattr(raised.value, "__notes__", None) == [
        "(recorder backend 'broken' in write_steps(); it records nothing more in this run)"
    ]
    assert caplog.records == []
    assert ps.recorder.Backend is Backend and ps.recorder.Recorder is Recorder


def test_console_prints_every_n_steps_and_the_last(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pystematic.recording import ConsoleBackend

    with Recorder(tmp_path, backends=[ConsoleBackend(every=4)]) as rec:
        for s in range(10):
            rec.scalars({"loss": 1.0 / (s + 1), "val acc": 0.5})
            rec.step()
    err = capsys.readouterr().err
    printed = [line.split()[1] for line in err.splitlines() if line.startswith("step ")]
    assert printed == ["0", "4", "8", "9"]
    assert "loss 0.1" in err and "val_acc 0.5" in err
    assert not any(tmp_path.iterdir())


def test_other_ranks_write_nothing(tmp_path: Path) -> None:
    memory = MemoryBackend()
    with Recorder(tmp_path, backends=[memory, "tensorboard", "jsonl"], rank=1, world_size=2) as rec:
        for _ in range(5):
            rec.scalar("a", 1.0)
            rec.text("t", "x")
            rec.step()
        rec.start_run({"lr": 1})
        rec.end_run("completed")
        assert rec.global_step == 5 and rec.last_scalars == {}
    assert not any(tmp_path.iterdir()) and memory.output_dir is None and memory.records == []


DIST_SCRIPT = """
import sys
import torch
import torch.distributed as dist
from pystematic.recording import Recorder

dist.init_process_group("gloo")
rank = dist.get_rank()
rec = Recorder(sys.argv[1], rank=rank, world_size=dist.get_world_size())
for s in range(5):
    rec.scalar("x", float(rank + 1) * (s + 1), reduce="mean")
    rec.scalars({"a": float(rank), "b": torch.tensor(10.0 * rank)}, reduce="sum")
    rec.scalar("hi", rank, reduce="max")
    rec.scalar("r", rank)
    rec.step()
rec.close()
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_reduce_across_two_gloo_ranks_and_only_rank0_writes(tmp_path: Path) -> None:
    script = tmp_path / "dist.py"
    script.write_text(DIST_SCRIPT)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    proc = subprocess.run(
        [*cmd, str(script), str(run)], capture_output=True, text=True, env=env, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = read_jsonl(run)
    assert [line["step"] for line in lines] == list(range(5))
    for s, line in enumerate(lines):
        assert line["x"] == 1.5 * (s + 1)
        assert (line["a"], line["b"], line["hi"], line["r"]) == (1.0, 10.0, 1.0, 0.0)
    assert tb_scalars(run)["x"] == [(s, 1.5 * (s + 1)) for s in range(5)]
    assert len(list((run / "tensorboard").iterdir())) == 1
