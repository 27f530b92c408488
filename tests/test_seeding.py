from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from pystematic.seeding import (
    SEED_BOUND,
    SeedChain,
    capture_rng_state,
    chain_worker_init_fn,
    draw_seed,
    rank_rng,
    restore_rng_state,
    seed_all,
    seed_sync_problems,
    set_current_rank,
    set_deterministic,
    worker_init_fn,
)

# Python >= 3.12 warns when forking a process that has threads (torch's); harmless here.
fork_ok = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
needs_fork = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method"
)


@pytest.fixture(autouse=True)
def _no_current_rank(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("RANK", raising=False)
    set_current_rank(None)
    yield
    set_current_rank(None)


def draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), torch.rand(1).item()


# --- master seed -----------------------------------------------------------------------------


def test_draw_seed_is_an_int_in_range_and_varies() -> None:
    seeds = [draw_seed() for _ in range(8)]
    assert all(type(s) is int and 0 <= s < SEED_BOUND for s in seeds)
    assert len(set(seeds)) > 1


def test_seed_all_makes_random_numpy_and_torch_repeatable() -> None:
    seed_all(123)
    first = draws()
    seed_all(123)
    assert draws() == first
    seed_all(124)
    assert draws() != first


@pytest.mark.parametrize("bad", [-1, SEED_BOUND, 2**40])
def test_seed_all_rejects_seeds_out_of_range(bad: int) -> None:
    with pytest.raises(ValueError, match=r"\[0, 2\*\*32\)"):
        seed_all(bad)


def test_set_deterministic_toggles_torch() -> None:
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    env_before = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        torch.backends.cudnn.benchmark = True
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        set_deterministic(False)
        assert not torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.deterministic
        # A value the user chose is kept.
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":16:8"
        set_deterministic(True)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1:]
        if env_before is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = env_before


# --- SeedChain ---------------------------------------------------------------------------------


def test_new_seed_sequence_depends_only_on_master() -> None:
    a, b, c = SeedChain(7), SeedChain(7), SeedChain(8)
    seq_a = [a.new_seed("x") for _ in range(5)]
    assert [b.new_seed("other purpose") for _ in range(5)] == seq_a
    assert [c.new_seed("x") for _ in range(5)] != seq_a
    assert len(set(seq_a)) == 5


def test_new_seed_values_are_known_and_match_a_seed_sequence_spawn_chain() -> None:
    # Pinned values: a change here breaks the reproducibility of every recorded run.
    chain = SeedChain(0)
    values = [chain.new_seed() for _ in range(3)]
    assert values == [3757552657, 673228719, 3241444873]
    children = np.random.SeedSequence(0).spawn(3)
    assert values == [int(ch.generate_state(1, dtype=np.uint32)[0]) for ch in children]


def test_new_seed_is_the_same_in_another_process() -> None:
    code = (
        "from pystematic.seeding import SeedChain; c = SeedChain(2024, rank=3); "
        "print([c.new_seed(p) for p in ('init', 'sampler', 'aug')])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    chain = SeedChain(2024)
    assert json.loads(out) == [chain.new_seed() for _ in range(3)]


def test_new_seed_values_are_plain_ints_usable_everywhere() -> None:
    for master in (0, 1, SEED_BOUND - 1):
        chain = SeedChain(master)
        for _ in range(50):
            value = chain.new_seed()
            assert type(value) is int and 0 <= value < SEED_BOUND
        random.seed(value)
        np.random.seed(value)
        torch.manual_seed(value)


def test_seed_chain_calls_and_purposes() -> None:
    chain = SeedChain(1)
    assert chain.calls == 0 and chain.purposes == []
    chain.new_seed("init")
    chain.new_seed()
    assert chain.calls == 2
    assert chain.purposes == ["init", ""]
    chain.purposes.append("not kept")
    assert chain.calls == 2
    with pytest.raises(TypeError):
        chain.new_seed(3)  # type: ignore[arg-type]


def test_seeds_log_holds_master_and_every_derived_seed(tmp_path: Path) -> None:
    log = tmp_path / "seeds.log"
    chain = SeedChain(99, log_path=log)
    values = [chain.new_seed("init"), chain.new_seed("sampler"), chain.new_seed()]
    lines = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert lines == [
        {"rank": 0, "purpose": "master", "value": 99, "call": 0},
        {"rank": 0, "purpose": "init", "value": values[0], "call": 1},
        {"rank": 0, "purpose": "sampler", "value": values[1], "call": 2},
        {"rank": 0, "purpose": "", "value": values[2], "call": 3},
    ]
    assert [r.value for r in chain.records] == [99, *values]


def test_only_rank_zero_writes_seeds_log(tmp_path: Path) -> None:
    log = tmp_path / "seeds.log"
    other = SeedChain(99, rank=1, log_path=log)
    other.new_seed("init")
    assert not log.exists()
    assert [(r.rank, r.purpose, r.call) for r in other.records] == [
        (1, "master", 0),
        (1, "init", 1),
    ]


def test_seed_chain_state_dict_round_trip_continues_the_chain(tmp_path: Path) -> None:
    straight = SeedChain(5)
    expected = [straight.new_seed(f"s{i}") for i in range(6)]

    first = SeedChain(5)
    head = [first.new_seed(f"s{i}") for i in range(3)]
    state = json.loads(json.dumps(first.state_dict()))  # plain data
    log = tmp_path / "seeds.log"
    resumed = SeedChain(5, log_path=log)
    resumed.load_state_dict(state)
    tail = [resumed.new_seed(f"s{i}") for i in range(3, 6)]

    assert head + tail == expected
    assert resumed.calls == 6
    assert resumed.purposes == [f"s{i}" for i in range(6)]
    assert json.loads(log.read_text().splitlines()[-1])["call"] == 6


def test_seed_chain_rejects_bad_master_and_inconsistent_state() -> None:
    with pytest.raises(ValueError):
        SeedChain(-3)
    with pytest.raises(TypeError):
        SeedChain(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="inconsistent"):
        SeedChain(1).load_state_dict({"master": 1, "calls": 2, "purposes": ["a"]})


# --- seed_sync_problems ------------------------------------------------------------------------


def test_seed_sync_problems_is_none_when_ranks_agree() -> None:
    assert seed_sync_problems([["init", "aug"], ["init", "aug"], ["init", "aug"]]) is None
    assert seed_sync_problems([["init"]]) is None
    assert seed_sync_problems([[], []]) is None


def test_seed_sync_problems_names_a_rank_conditional_new_seed() -> None:
    purposes_per_rank = []
    for rank in range(3):
        chain = SeedChain(0, rank=rank)
        chain.new_seed("init")
        if rank == 1:  # the classic pitfall: a seed drawn on some ranks only
            chain.new_seed("aug")
            chain.new_seed("aug")
        if rank != 2:
            chain.new_seed()
        chain.new_seed("sampler")
        purposes_per_rank.append(chain.purposes)
    message = seed_sync_problems(purposes_per_rank)
    assert message is not None
    assert "rank 1 called new_seed('aug') 2 times more than rank 0" in message
    assert "rank 2 called new_seed() 1 time fewer than rank 0" in message
    assert "rank 1 called new_seed('init')" not in message
    assert "\n" not in message


def test_seed_sync_problems_reports_a_different_order() -> None:
    message = seed_sync_problems([["init", "aug"], ["aug", "init"]])
    assert message is not None
    assert "different order" in message
    assert "call 1 was new_seed('aug') on rank 1 but new_seed('init') on rank 0" in message


# --- per-rank streams ----------------------------------------------------------------------------


def test_rank_rng_differs_by_rank_and_is_reproducible() -> None:
    r0, r1 = rank_rng(11, 0).random(4), rank_rng(11, 1).random(4)
    assert not np.array_equal(r0, r1)
    assert np.array_equal(rank_rng(11, 0).random(4), r0)
    assert np.array_equal(rank_rng(11, 1).random(4), r1)
    assert not np.array_equal(rank_rng(12, 0).random(4), r0)
    # Not the stream a user gets from the master seed directly.
    assert not np.array_equal(np.random.default_rng(11).random(4), r0)


class Augment(Dataset[Any]):
    """Every item draws from the three global generators, as augmentation code does."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(
            [index, random.random(), float(np.random.rand()), torch.rand(()).item()],
            dtype=torch.float64,
        )


def load(seed: int, init: Any = worker_init_fn, context: str = "fork") -> torch.Tensor:
    """All batches of one pass, with the parent seeded the way the runner seeds every rank."""
    seed_all(seed)
    loader = DataLoader(
        Augment(),
        batch_size=2,
        num_workers=2,
        worker_init_fn=init,
        multiprocessing_context=context,
    )
    return torch.cat(list(loader))


@fork_ok
@needs_fork
def test_worker_init_fn_same_seed_gives_identical_batches() -> None:
    first = load(3)
    assert torch.equal(load(3), first)
    assert not torch.equal(load(4)[:, 1:], first[:, 1:])
    # Each worker (items 0-1, 4-5 on worker 0; 2-3, 6-7 on worker 1) draws its own values.
    assert not torch.equal(first[0:2, 1:], first[2:4, 1:])


@fork_ok
@needs_fork
def test_worker_init_fn_mixes_in_the_rank() -> None:
    set_current_rank(0)
    rank0 = load(3)
    set_current_rank(1)
    rank1 = load(3)
    for column in (1, 2, 3):  # random, numpy, torch all differ between ranks
        assert not torch.equal(rank0[:, column], rank1[:, column])
    assert torch.equal(load(3), rank1)


@fork_ok
@needs_fork
def test_without_worker_init_fn_ranks_draw_the_same_augmentations() -> None:
    # The pitfall worker_init_fn fixes: torch seeds workers with base_seed + worker_id, where
    # base_seed comes from the parent's torch RNG. Every rank is seeded with the same master
    # seed (identical model init), so every rank's workers draw the same "random" values.
    set_current_rank(0)
    rank0 = load(3, init=None)
    set_current_rank(1)
    rank1 = load(3, init=None)
    assert torch.equal(rank0, rank1)


def test_worker_init_fn_reads_rank_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    def worker_draws() -> tuple[float, float, float]:
        torch.manual_seed(1000)  # what torch does in a worker before calling worker_init_fn
        worker_init_fn(0)
        return draws()

    default = worker_draws()
    monkeypatch.setenv("RANK", "0")
    assert worker_draws() == default
    monkeypatch.setenv("RANK", "2")
    from_env = worker_draws()
    assert from_env != default
    set_current_rank(2)  # the runner's value wins over the environment
    monkeypatch.setenv("RANK", "5")
    assert worker_draws() == from_env


@pytest.mark.slow
def test_worker_init_fn_with_spawn_workers_uses_env_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    # spawn workers re-import pystematic.seeding, so the module's current rank is lost and
    # RANK from the environment decides.
    assert pickle.loads(pickle.dumps(worker_init_fn)) is worker_init_fn
    monkeypatch.setenv("RANK", "0")
    rank0 = load(3, context="spawn")
    monkeypatch.setenv("RANK", "1")
    set_current_rank(0)  # not inherited by spawn workers
    rank1 = load(3, context="spawn")
    assert not torch.equal(rank0[:, 1:], rank1[:, 1:])


def _user_init(worker_id: int) -> None:
    np.random.seed(worker_id)


def test_chain_worker_init_fn_runs_user_function_after_seeding() -> None:
    assert chain_worker_init_fn(None) is worker_init_fn
    chained = pickle.loads(pickle.dumps(chain_worker_init_fn(_user_init)))
    torch.manual_seed(1000)
    chained(1)
    after = (random.random(), float(np.random.rand()))
    torch.manual_seed(1000)
    worker_init_fn(1)
    seeded_python = random.random()
    np.random.seed(1)
    assert after == (seeded_python, float(np.random.rand()))


# --- RNG state for checkpoints ------------------------------------------------------------------


def test_capture_and_restore_rng_state_round_trip() -> None:
    seed_all(17)
    draws()
    state = capture_rng_state()
    expected = [draws() for _ in range(3)]
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    restore_rng_state(state)
    assert [draws() for _ in range(3)] == expected


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path: Path) -> None:
    seed_all(5)
    np.random.standard_normal()  # odd number of gaussians: has_gauss = 1
    state = capture_rng_state()
    assert state["cuda"] == [] or torch.cuda.is_available()
    expected = (draws(), float(np.random.standard_normal()))
    path = tmp_path / "ckpt.pt"
    torch.save({"rng": state}, path)
    seed_all(6)
    restore_rng_state(torch.load(path, weights_only=True)["rng"])
    assert (draws(), float(np.random.standard_normal())) == expected


def test_restore_rng_state_skips_absent_keys() -> None:
    seed_all(8)
    state = capture_rng_state()
    expected_python = random.random()
    seed_all(9)
    expected_numpy = float(np.random.rand())
    seed_all(9)
    restore_rng_state({"python": state["python"]})
    assert random.random() == expected_python
    assert float(np.random.rand()) == expected_numpy  # numpy left alone


# --- cost ------------------------------------------------------------------------------------


def test_importing_seeding_and_default_run_setup_stay_cheap() -> None:
    # `import pystematic` (the CLI) must not pull in numpy or torch, and a run that is not
    # deterministic must not import torch._inductor (about 1 s) through
    # torch.use_deterministic_algorithms.
    code = (
        "import sys; import pystematic.seeding as s; "
        "print('numpy' in sys.modules, 'torch' in sys.modules); "
        "s.seed_all(1); s.set_deterministic(False); "
        "print('torch._inductor.config' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "False", "False"]
