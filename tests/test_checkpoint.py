"""Checkpoint files: names, pruning, the latest complete one, plain torch.save files."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from pystematic.context import Context
from pystematic.errors import PystematicError
from pystematic.params import Params
from pystematic.recording import Recorder


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    recorders: list[Recorder] = []

    def context(name: str = "run", resume_from: Path | None = None) -> Context:
        run_dir = tmp_path / name
        run_dir.mkdir(exist_ok=True)
        recorder = Recorder(run_dir, backends=["jsonl"])
        recorders.append(recorder)
        return Context(
            params=Params({}),
            output_dir=run_dir,
            seed=1,
            recorder=recorder,
            device=torch.device("cpu"),
            resume_from=resume_from,
        )

    yield context
    for recorder in recorders:
        recorder.close()


def names(ctx: Context) -> list[str]:
    return sorted(p.name for p in (ctx.output_dir / "checkpoints").iterdir())


def test_step_names_and_keep_last(make: Any) -> None:
    ctx = make()
    ctx.save_checkpoint({"best": True}, name="best.pt")
    for _ in range(4):
        ctx.recorder.scalar("loss", 1.0)
        ctx.recorder.step()
        ctx.save_checkpoint({"step": ctx.recorder.global_step}, keep_last=2)
    assert names(ctx) == ["best.pt", "checkpoint-3.pt", "checkpoint-4.pt"]
    with pytest.raises(PystematicError, match="keep at least 1"):
        ctx.save_checkpoint({}, keep_last=0)


def test_resume_picks_the_newest_checkpoint_whatever_its_name(make: Any) -> None:
    first = make("first")
    for name in ("checkpoint-9.pt", "a.pt", "zz.pt"):
        first.save_checkpoint({"name": name}, name=name)
        time.sleep(0.01)  # distinct modification times
    second = make("second", resume_from=first.output_dir)
    assert second.load_checkpoint() == {"name": "zz.pt"}


def test_a_broken_newest_checkpoint_falls_back_with_a_warning(
    make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    first = make("first")
    first.save_checkpoint({"good": 1}, name="good.pt")
    broken = first.output_dir / "checkpoints" / "newer.pt"
    broken.write_bytes(b"not a checkpoint")
    later = time.time() + 5
    os.utime(broken, (later, later))
    second = make("second", resume_from=first.output_dir)
    with caplog.at_level(logging.WARNING, logger="pystematic"):
        assert second.load_checkpoint() == {"good": 1}
    assert any(
        "skipping checkpoint" in r.getMessage() and "newer.pt" in r.getMessage()
        for r in caplog.records
    )


def test_a_plain_torch_save_file_loads_as_it_is(make: Any, tmp_path: Path) -> None:
    plain = tmp_path / "weights.pt"
    torch.save({"weight": torch.ones(2)}, plain)
    ctx = make()
    ctx.recorder.global_step = 7
    loaded = ctx.load_checkpoint(plain)
    assert torch.equal(loaded["weight"], torch.ones(2))
    assert ctx.recorder.global_step == 7  # nothing of pystematic's was restored


def test_a_file_that_is_no_checkpoint_is_a_clear_error(make: Any, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(PystematicError, match=r"notes.txt is not a checkpoint torch can load"):
        make().load_checkpoint(text)
