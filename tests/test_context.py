"""The run context: checkpoints that restore everything, and ps.context only inside a run."""

from __future__ import annotations

import inspect
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import pystematic as ps
from conftest import Project
from pystematic import seeding
from pystematic.context import Context
from pystematic.errors import PystematicError
from pystematic.params import Params
from pystematic.recording import Recorder


@pytest.fixture
def contexts(tmp_path: Path) -> Iterator[Any]:
    """Makes contexts on real recorders (jsonl) in tmp_path; closes them afterwards."""
    made: list[Recorder] = []

    def make(name: str = "run", seed: int = 5, resume_from: Path | None = None) -> Context:
        run_dir = tmp_path / name
        run_dir.mkdir(exist_ok=True)
        recorder = Recorder(run_dir, backends=["jsonl"])
        made.append(recorder)
        return Context(
            params=Params({"lr": 0.1}),
            output_dir=run_dir,
            seed=seed,
            recorder=recorder,
            device=torch.device("cpu"),
            resume_from=resume_from,
        )

    yield make
    for recorder in made:
        recorder.close()


@pytest.fixture(autouse=True)
def keep_global_rng() -> Iterator[None]:
    """These tests reseed the global generators: leave them as they were for other tests."""
    state = seeding.capture_rng_state()
    yield
    seeding.restore_rng_state(state)


def draws(ctx: Context) -> dict[str, Any]:
    """The next values of every generator a checkpoint must carry."""
    return {
        "random": random.random(),
        "numpy": float(np.random.random()),
        "torch": torch.rand(4).tolist(),
        "rng": float(ctx.rng.random()),
        "new_seed": ctx.new_seed("after"),
    }


def model_and_optimizer() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Linear(4, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def test_checkpoint_round_trip_restores_everything(contexts: Any) -> None:
    seeding.seed_all(5)
    first = contexts("first")
    model, optimizer = model_and_optimizer()
    model, optimizer = first.track(model=model, optimizer=optimizer)
    assert isinstance(model, nn.Linear) and isinstance(optimizer, torch.optim.SGD)
    for _ in range(2):  # momentum buffers: optimizer state worth saving
        optimizer.zero_grad()
        model(torch.randn(8, 4)).pow(2).sum().backward()
        optimizer.step()
        first.recorder.scalar("loss", 1.0)
        first.recorder.step()
    first.counter("samples").increment(16)
    first.new_seed("data")
    for epoch in first.loop(5, desc="epoch"):
        if epoch == 2:
            path = first.save_checkpoint()
            saved_weights = {k: v.clone() for k, v in model.state_dict().items()}
            saved_momentum = optimizer.state_dict()["state"][0]["momentum_buffer"].clone()
            expected = draws(first)
            break
    assert path == first.output_dir / "checkpoints" / "checkpoint-2.pt"  # the global step
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint-2.pt"]  # no temp file left

    # A fresh process would start with other weights and other generator states.
    seeding.seed_all(999)
    second = contexts("second", resume_from=first.output_dir)
    model2, optimizer2 = model_and_optimizer()
    model2, optimizer2 = second.track(model=model2, optimizer=optimizer2)
    assert not torch.equal(model2.weight, saved_weights["weight"])
    state = second.load_checkpoint()

    assert set(state) == {"model", "optimizer"}
    for key, value in model2.state_dict().items():
        assert torch.equal(value, saved_weights[key])
    assert torch.equal(optimizer2.state_dict()["state"][0]["momentum_buffer"], saved_momentum)
    assert second.counter("samples").value == 16
    assert second.recorder.global_step == 2
    assert draws(second) == expected  # python, numpy, torch, context.rng and the seed chain
    assert list(second.loop(5, desc="epoch")) == [3, 4]  # saved inside iteration 2


def test_nested_loops_resume_after_the_saved_iteration(contexts: Any) -> None:
    first = contexts("first")
    for epoch in first.loop(3):
        for batch in first.loop(4):
            if (epoch, batch) == (1, 2):
                first.save_checkpoint({"note": "mid"})
                break
        if epoch == 1:
            break
    second = contexts("second", resume_from=first.output_dir)
    assert second.load_checkpoint() == {"note": "mid"}
    seen = [(epoch, batch) for epoch in second.loop(3) for batch in second.loop(4)]
    assert seen == [(1, 3), (2, 0), (2, 1), (2, 2), (2, 3)]


def test_checkpoint_at_the_end_of_an_outer_iteration_resumes_at_the_next(contexts: Any) -> None:
    first = contexts("first")
    for epoch in first.loop(3):
        for _batch in first.loop(4):
            pass
        if epoch == 1:
            first.save_checkpoint({})
            break
    second = contexts("second", resume_from=first.output_dir)
    second.load_checkpoint()
    seen = [(epoch, batch) for epoch in second.loop(3) for batch in second.loop(4)]
    assert seen == [(2, 0), (2, 1), (2, 2), (2, 3)]


def test_checkpoint_after_the_loop_resumes_past_it(contexts: Any) -> None:
    first = contexts("first")
    assert list(first.loop(3)) == [0, 1, 2]
    first.save_checkpoint({})
    second = contexts("second", resume_from=first.output_dir)
    second.load_checkpoint()
    assert list(second.loop(3)) == []


def test_loops_one_after_another_each_run_fully(contexts: Any) -> None:
    ctx = contexts()
    assert list(ctx.loop(3)) == [0, 1, 2]
    assert list(ctx.loop(2)) == [0, 1]
    assert [(a, b) for a in ctx.loop(2) for b in ctx.loop(2)] == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_a_loop_limit_stops_the_outermost_loop_only(tmp_path: Path) -> None:
    """`reproduce --steps N`: the run ends after N iterations of its outermost loop, with
    the recorder's step at that point; inner loops and shorter loops run in full."""
    from pystematic.context import LoopLimitReached

    recorder = Recorder(tmp_path, backends=["memory"])
    ctx = Context(params=Params({}), output_dir=tmp_path, seed=1, recorder=recorder, loop_limit=2)
    assert list(ctx.loop(2)) == [0, 1]  # no more iterations than the limit: not stopped
    seen = []
    with pytest.raises(LoopLimitReached) as stopped:
        for epoch in ctx.loop(5):
            for batch in ctx.loop(3):
                seen.append((epoch, batch))
                recorder.scalar("x", batch)
                recorder.step()
    assert seen == [(e, b) for e in range(2) for b in range(3)]
    assert (stopped.value.iterations, stopped.value.global_step) == (2, 6)
    recorder.close()


def test_load_checkpoint_is_none_when_not_resuming(contexts: Any) -> None:
    ctx = contexts()
    assert ctx.load_checkpoint() is None
    assert list(ctx.loop(3)) == [0, 1, 2]


def test_named_checkpoint_with_an_explicit_path(contexts: Any) -> None:
    ctx = contexts()
    path = ctx.save_checkpoint({"epoch": 7, "w": torch.arange(3)}, name="best.pt")
    assert path == ctx.output_dir / "checkpoints" / "best.pt"
    other = contexts("other")
    loaded = other.load_checkpoint(path)
    assert loaded["epoch"] == 7 and torch.equal(loaded["w"], torch.arange(3))


def test_missing_checkpoint_is_a_pystematic_error(contexts: Any, tmp_path: Path) -> None:
    ctx = contexts()
    with pytest.raises(PystematicError, match="no checkpoint"):
        ctx.load_checkpoint(tmp_path / "nowhere.pt")
    resumed = contexts("resumed", resume_from=ctx.output_dir)  # a run dir without checkpoints
    with pytest.raises(PystematicError, match="no checkpoint"):
        resumed.load_checkpoint()


def test_track_returns_one_object_or_a_tuple(contexts: Any) -> None:
    ctx = contexts()
    model = nn.Linear(2, 2)
    assert ctx.track(model=model) is model
    a, b = ctx.track(a=nn.Linear(1, 1), b=[1, 2])
    assert isinstance(a, nn.Linear) and b == [1, 2]


def test_new_seed_is_logged_and_deterministic(contexts: Any) -> None:
    first, second = contexts("a", seed=11), contexts("b", seed=11)
    values = [first.new_seed("x"), first.new_seed()]
    assert [second.new_seed("x"), second.new_seed()] == values
    assert all(isinstance(v, int) and 0 <= v < 2**32 for v in values)
    assert contexts("c", seed=12).new_seed("x") != values[0]
    log = [json.loads(line) for line in (first.output_dir / "seeds.log").read_text().splitlines()]
    assert [(r["purpose"], r["value"], r["call"]) for r in log] == [
        ("master", 11, 0),
        ("x", values[0], 1),
        ("", values[1], 2),
    ]


def test_context_proxy_outside_a_run_raises() -> None:
    with pytest.raises(PystematicError, match="only available while an experiment runs"):
        _ = ps.context.seed
    # Tools that probe attributes (inspect.unwrap, doctest's finder) still work on it.
    assert not hasattr(ps.context, "__wrapped__")
    assert inspect.unwrap(ps.context) is ps.context  # type: ignore[arg-type]


SCRIPT_EXPERIMENT = """
    import pystematic as ps

    def helper():
        # Code that cannot take the context as an argument.
        ps.context.counter("calls").increment()
        return ps.context.save_checkpoint({"seed": ps.context.seed})

    @ps.experiment
    def ck(params, context):
        path = helper()
        return str(path), context.counter("calls").value
"""

SCRIPT = """
    import pystematic as ps
    from exps.ck import ck

    path, calls = ck.run({"random_seed": 3})
    print("returned", calls, path)
    try:
        ps.context.seed
    except ps.PystematicError as e:
        print("after the run:", e)
"""


def test_context_proxy_inside_and_after_a_run(project: Project) -> None:
    project.write("pystematic.toml", 'modules = ["exps"]\n')
    project.write("exps/__init__.py", "")
    project.write("exps/ck.py", SCRIPT_EXPERIMENT)
    project.write("script.py", SCRIPT)
    result = project.python("script.py")
    assert result.returncode == 0, result.stderr
    run_dir = project.only_run_dir("ck")
    checkpoint = run_dir / "checkpoints" / "checkpoint-0.pt"
    assert f"returned 1 {checkpoint}" in result.stdout
    assert "after the run: ps.context is only available" in result.stdout
    payload = torch.load(checkpoint, weights_only=False)
    assert payload["user"] == {"seed": 3}
    assert payload["pystematic"]["counters"] == {"calls": 1}
