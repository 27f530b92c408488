"""``context.dataloader`` and ``distributed_sampler``: seeded epochs, split by rank, resumable.

Contexts are made in-process for rank r of W: the loaders need no process group (the
sampler is told its rank), so the split of one epoch among ranks is checked here at no
cost; tests/test_transparent.py does it with real 2-rank groups.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset

from pystematic import seeding
from pystematic.context import Context
from pystematic.data import EpochLoader, EpochSampler
from pystematic.params import Params
from pystematic.recording import Recorder

N = 12


@pytest.fixture
def contexts(tmp_path: Path) -> Iterator[Any]:
    """Makes a context for rank ``rank`` of ``world_size`` (jsonl recorder in tmp_path)."""
    made: list[Recorder] = []

    def make(
        name: str = "run",
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 5,
        resume_from: Path | None = None,
    ) -> Context:
        run_dir = tmp_path / name
        run_dir.mkdir(exist_ok=True)
        recorder = Recorder(run_dir, backends=["jsonl"], rank=rank, world_size=world_size)
        made.append(recorder)
        return Context(
            params=Params({}),
            output_dir=run_dir,
            seed=seed,
            recorder=recorder,
            rank=rank,
            world_size=world_size,
            device=torch.device("cpu"),
            resume_from=resume_from,
        )

    yield make
    for recorder in made:
        recorder.close()


@pytest.fixture(autouse=True)
def keep_global_rng() -> Iterator[None]:
    state = seeding.capture_rng_state()
    yield
    seeding.restore_rng_state(state)


def epochs(loader: Any, n: int) -> list[list[int]]:
    """The sample order of ``n`` passes over ``loader``."""
    return [[int(i) for batch in loader for i in batch] for _ in range(n)]


def test_every_pass_is_a_new_seeded_permutation(contexts: Any) -> None:
    ctx = contexts()
    loader = ctx.dataloader(list(range(N)), batch_size=5, shuffle=True)
    assert isinstance(loader, DataLoader)
    seen = epochs(loader, 3)
    assert all(sorted(order) == list(range(N)) for order in seen)
    assert len({tuple(order) for order in seen}) == 3  # no context.loop, no set_epoch
    assert loader.epoch == 3
    # The same seed gives the same epochs; an unshuffled loader keeps the data's order.
    again = contexts("again").dataloader(list(range(N)), batch_size=5, shuffle=True)
    assert epochs(again, 3) == seen
    plain = contexts("plain").dataloader(list(range(N)), batch_size=5)
    assert epochs(plain, 2) == [list(range(N))] * 2


def test_ranks_split_the_one_rank_permutation(contexts: Any) -> None:
    """Each rank gets a disjoint share; together they are what one process walks."""
    single = contexts("single").dataloader(list(range(N)), batch_size=2, shuffle=True)
    ranks = [
        contexts(f"rank{r}", rank=r, world_size=2).dataloader(
            list(range(N)), batch_size=2, shuffle=True
        )
        for r in (0, 1)
    ]
    whole = epochs(single, 3)
    shares = [epochs(loader, 3) for loader in ranks]
    for epoch, order in enumerate(whole):
        first, second = shares[0][epoch], shares[1][epoch]
        assert len(first) == len(second) == N // 2 and not set(first) & set(second)
        assert first == order[0::2] and second == order[1::2]
    assert shares[0][0] != shares[0][1]


@pytest.mark.parametrize(
    ("drop_last", "per_rank", "distinct"),
    [(False, 3, 10), (True, 2, 8)],
)
def test_drop_last_when_ranks_do_not_divide_the_data(
    contexts: Any, drop_last: bool, per_rank: int, distinct: int
) -> None:
    """10 samples on 4 ranks: padded to 12 (every sample, 2 twice) or cut to 8."""
    shares = []
    for r in range(4):
        ctx = contexts(f"r{r}", rank=r, world_size=4)
        loader = ctx.dataloader(list(range(10)), batch_size=2, shuffle=True, drop_last=drop_last)
        shares.append(epochs(loader, 1)[0])
    assert [len(s) for s in shares] == [per_rank] * 4
    union = [i for s in shares for i in s]
    assert len(set(union)) == distinct
    if not drop_last:
        assert set(union) == set(range(10))


def test_batches_drop_last_as_in_torch(contexts: Any) -> None:
    ctx = contexts()
    kept = ctx.dataloader(list(range(10)), batch_size=4)
    cut = ctx.dataloader(list(range(10)), batch_size=4, drop_last=True)
    assert [len(b) for b in kept] == [4, 4, 2]
    assert [len(b) for b in cut] == [4, 4]


def test_unsharded_loaders_and_samplers_of_your_own(contexts: Any) -> None:
    ctx = contexts(rank=1, world_size=2)
    everything = ctx.dataloader(list(range(N)), batch_size=4, shard=False)
    assert epochs(everything, 1) == [list(range(N))]
    # A sampler of your own is used as it is, and gets set_epoch before every pass.
    mine = DistributedSampler(list(range(N)), num_replicas=3, rank=0, shuffle=True, seed=1)
    loader = ctx.dataloader(list(range(N)), batch_size=4, sampler=mine)
    first, second = epochs(loader, 2)
    assert len(first) == N // 3 and first != second and mine.epoch == 1


def test_iterable_datasets_are_left_to_themselves(contexts: Any) -> None:
    class Stream(IterableDataset):  # type: ignore[type-arg]
        def __iter__(self) -> Iterator[int]:
            return iter(range(5))

    loader = contexts(rank=1, world_size=2).dataloader(Stream(), batch_size=2)
    assert epochs(loader, 2) == [list(range(5))] * 2


def test_distributed_sampler_advances_by_itself_and_matches_the_loader(contexts: Any) -> None:
    ctx = contexts(rank=1, world_size=2)
    sampler = ctx.distributed_sampler(list(range(N)))
    assert isinstance(sampler, EpochSampler)
    plain = DataLoader(list(range(N)), batch_size=3, sampler=sampler)  # torch's own loader
    by_torch = epochs(plain, 2)
    assert by_torch[0] != by_torch[1] and sampler.epoch == 2
    # Handed to context.dataloader, the same seed walks the same epochs.
    other = contexts("other", rank=1, world_size=2)
    loader = other.dataloader(
        list(range(N)), batch_size=3, sampler=other.distributed_sampler(list(range(N)))
    )
    assert epochs(loader, 2) == by_torch


class Noisy(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Draws in the worker: the values depend on the worker's seed."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> tuple[int, float]:
        return i, float(torch.rand(()))


def _passes(loader: Any, n: int) -> list[list[tuple[int, float]]]:
    return [
        [(int(i), float(v)) for idx, val in loader for i, v in zip(idx, val, strict=True)]
        for _ in range(n)
    ]


@pytest.mark.parametrize("built", ["before", "after"])
def test_resume_continues_the_permutations_and_worker_seeds(contexts: Any, built: str) -> None:
    """Two passes, a checkpoint, two more: a resumed run gives the last two again, and the
    next derived seed too, whether it builds its loader before or after load_checkpoint."""
    first = contexts("first")
    loader = first.dataloader(Noisy(), batch_size=4, shuffle=True, num_workers=1)
    straight = _passes(loader, 2)
    first.save_checkpoint({})
    straight += _passes(loader, 2)
    next_seed = first.new_seed("after")
    assert len({tuple(p) for p in straight}) == 4

    second = contexts("second", resume_from=first.output_dir)
    if built == "before":
        resumed_loader = second.dataloader(Noisy(), batch_size=4, shuffle=True, num_workers=1)
        second.load_checkpoint()
    else:
        second.load_checkpoint()
        resumed_loader = second.dataloader(Noisy(), batch_size=4, shuffle=True, num_workers=1)
    assert isinstance(resumed_loader, EpochLoader) and resumed_loader.epoch == 2
    assert _passes(resumed_loader, 2) == straight[2:]
    assert second.new_seed("after") == next_seed
