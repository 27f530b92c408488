"""Data loading that is the same under ``run`` and ``distributed``: seeded epochs, split by rank.

:class:`EpochSampler` is torch's ``DistributedSampler`` that starts a new epoch by itself
on every pass, so a second pass is a new permutation whether or not anyone calls
``set_epoch``. :class:`EpochLoader` is a ``DataLoader`` that counts its passes: each
``iter()`` is a new epoch, whose number it hands to its sampler (``set_epoch``) and from
which it seeds its own generator (the DataLoader workers' base seed). A loader's whole
random state is then ``(seed, epoch)``, which ``context`` keeps in its checkpoints.

This module imports torch; ``context`` imports it when a run asks for a loader.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, DistributedSampler

__all__ = ["EpochLoader", "EpochSampler", "epoch_seed"]

# Spawn-key tag that keeps the loaders' per-epoch generator seeds apart from other streams.
_LOADER_STREAM_TAG = 0x4C4F4144  # "LOAD"


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of a loader's generator in ``epoch``: a function of (seed, epoch) only."""
    seq = np.random.SeedSequence(seed, spawn_key=(_LOADER_STREAM_TAG, epoch))
    return int(seq.generate_state(1, dtype=np.uint64)[0])


class EpochSampler(DistributedSampler):
    """One seeded permutation of the whole data set per epoch, split among the ranks.

    Rank ``r`` of ``W`` takes positions ``r, r + W, r + 2W, ...`` of the epoch's
    permutation (torch's ``DistributedSampler``: ``randperm`` seeded with
    ``seed + epoch``). With one rank that is the whole permutation, so ``run`` and
    ``distributed`` walk the same order. Each pass starts a new epoch: the pass uses
    :attr:`epoch` and advances it. ``drop_last`` as torch has it: ``False`` pads the
    permutation with its first few indices until it divides by ``W``, ``True`` leaves
    its last ``len % W`` indices out.
    """

    def state_dict(self) -> dict[str, int]:
        """``seed`` and ``epoch``: all the state a resume needs."""
        return {"seed": int(self.seed), "epoch": int(self.epoch)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])

    def __iter__(self) -> Iterator[int]:
        # A generator: the epoch advances when a pass really starts, not when a
        # DataLoader merely asks for an iterator it may throw away.
        indices = list(super().__iter__())
        self.set_epoch(self.epoch + 1)
        yield from indices


class EpochLoader(DataLoader):
    """A ``DataLoader`` whose every pass is a new, seeded epoch.

    ``iter(loader)`` uses epoch :attr:`epoch` and advances it: the sampler (and batch
    sampler) get ``set_epoch(epoch)`` when they have one, and the loader's own generator,
    which gives the DataLoader workers their base seed, is seeded from ``(seed, epoch)``.
    ``set_epoch(n)`` makes the next pass epoch ``n``.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        seed: int,
        owns_generator: bool,
        owns_sampler: bool,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, **kwargs)
        self.seed = seed
        self.epoch = 0
        self._owns_generator = owns_generator
        self._owns_sampler = owns_sampler

    def set_epoch(self, epoch: int) -> None:
        """The next pass is epoch ``epoch``."""
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        """``seed`` and ``epoch``: all the state a resume needs."""
        return {"seed": int(self.seed), "epoch": int(self.epoch)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at ``state``'s epoch with its seed (the sampler made for it too)."""
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
        if self._owns_sampler and isinstance(self.sampler, EpochSampler):
            self.sampler.load_state_dict(state)

    def __iter__(self) -> Any:
        epoch = self.epoch
        self.epoch = epoch + 1
        for sampler in self._epoch_samplers():
            sampler.set_epoch(epoch)
        if self._owns_generator and self.generator is not None:
            self.generator.manual_seed(epoch_seed(self.seed, epoch))
        return super().__iter__()

    def _epoch_samplers(self) -> list[Any]:
        found: list[Any] = []
        batch_sampler = self.batch_sampler
        for candidate in (self.sampler, batch_sampler, getattr(batch_sampler, "sampler", None)):
            if hasattr(candidate, "set_epoch") and all(candidate is not s for s in found):
                found.append(candidate)
        return found
