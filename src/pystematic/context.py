"""The run's context: everything the main function needs besides its parameters.

One :class:`Context` exists per run (per rank in a distributed run). It is passed
to the main function and is also reachable as ``ps.context``: this module is that
name, and its module-level ``__getattr__`` forwards to the running context, so
``import pystematic.context`` gives the module and ``ps.context.params`` the
running run's parameters.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import checkpoint as checkpoints
from . import collectives, seeding
from .errors import PystematicError
from .params import Params
from .progress import progress

if TYPE_CHECKING:
    import numpy as np

    from .recording import Recorder

_log = logging.getLogger("pystematic")

#: Internal: a positive integer N makes the run stop after N iterations of its outermost
#: ``context.loop`` (``pystematic reproduce --steps N`` sets it for the rerun; the runner
#: reads it once).
LOOP_LIMIT_ENV = "PYSTEMATIC_LOOP_LIMIT"


class LoopLimitReached(BaseException):
    """Raised out of the outermost ``context.loop`` when its iteration limit is reached.

    A BaseException, so a user's ``except Exception`` does not swallow it; the runner
    ends the run ``completed``. ``global_step`` is the recorder's step at the stop: the
    steps below it are the ones the limited run recorded in full.
    """

    def __init__(self, iterations: int, global_step: int) -> None:
        super().__init__(f"stopped after {iterations} iterations of the outermost loop")
        self.iterations = iterations
        self.global_step = global_step


@dataclass
class Counter:
    """A named integer that survives checkpoints (``context.counter("samples")``)."""

    name: str
    value: int = 0

    def increment(self, by: int = 1) -> int:
        self.value += by
        return self.value

    def __int__(self) -> int:
        return self.value


@dataclass(eq=False)  # frames are told apart by identity: two may hold equal values
class _Loop:
    """One running ``context.loop``: where it was called, its order among its siblings,
    its current iteration and how many loops inside that iteration have finished."""

    site: str | None
    ordinal: int
    position: int = -1
    inner_done: int = 0
    resuming: bool = False


@dataclass
class _Resume:
    """The loop stack a checkpoint saved, consumed as the resumed run re-enters its loops."""

    path: list[dict[str, Any]] = field(default_factory=list)
    done: int = 0


def _caller_site(depth: int = 2) -> str | None:
    """The function a loop is written in (file name and function, not lines: an edit that
    moves code must not make a resume start over; the order tells loops in one function
    apart)."""
    code = sys._getframe(depth).f_code
    return f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_name}"


class Context:
    """State of one run on one rank."""

    def __init__(
        self,
        *,
        params: Params,
        output_dir: Path,
        seed: int,
        recorder: Recorder,
        rank: int = 0,
        local_rank: int = 0,
        world_size: int = 1,
        device: Any = None,
        resume_from: Path | None = None,
        loop_limit: int | None = None,
    ) -> None:
        self.params = params
        self.output_dir = output_dir
        self.seed = seed
        self.recorder = recorder
        self.rank = rank
        self.local_rank = local_rank
        self.world_size = world_size
        self.is_distributed = world_size > 1
        self.is_master = rank == 0
        self.device = device
        self.logger = logging.getLogger("pystematic.run")
        self._chain = seeding.SeedChain(
            seed, rank=rank, log_path=output_dir / "seeds.log" if rank == 0 else None
        )
        self.rng: np.random.Generator = seeding.rank_rng(seed, rank)
        self._counters: dict[str, Counter] = {}
        self._loops: list[_Loop] = [_Loop(site=None, ordinal=0)]  # a root holds the top level
        self._resume: _Resume | None = None
        self._tracked: dict[str, Any] = {}
        # Loaders and samplers made here, in order: their (seed, epoch) go into checkpoints.
        self._epoch_objects: list[Any] = []
        self._restored_epochs: list[dict[str, Any]] = []
        self._seed_warning_given = False
        self._resume_from = resume_from
        self._loop_limit = loop_limit  # iterations of the outermost loop (--steps)

    # ------------------------------------------------------------ seeds

    def new_seed(self, purpose: str = "") -> int:
        """A further seed derived from the master seed, identical on every rank."""
        return self._chain.new_seed(purpose)

    def seed_problems(self) -> str | None:
        """Compare every rank's ``new_seed`` calls; a warning text when they diverged."""
        if not self.is_distributed:
            return None
        return seeding.seed_sync_problems(self._gather(self._chain.purposes))

    # ------------------------------------------------------------ distributed

    def barrier(self) -> None:
        """Wait for every rank; also checks that the ranks drew the same seeds."""
        if not self.is_distributed:
            return
        collectives.barrier()
        self.check_seeds()

    def check_seeds(self) -> None:
        """Warn, once per run and on rank 0 only, when the ranks drew different seeds.

        Called by every rank (it gathers each rank's ``new_seed`` calls): at ``barrier()``
        and when main returns.
        """
        problem = self.seed_problems()
        if problem and self.is_master and not self._seed_warning_given:
            self._seed_warning_given = True
            self.logger.warning(problem)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's value on every rank (any picklable object)."""
        if not self.is_distributed:
            return value
        return collectives.broadcast_object(value)

    def _gather(self, value: Any) -> list[Any]:
        if not self.is_distributed:
            return [value]
        return collectives.all_gather_objects(value)

    def to_device(self, *tensors: Any) -> Any:
        moved = tuple(t.to(self.device) for t in tensors)
        return moved[0] if len(moved) == 1 else moved

    def ddp(self, model: Any, **kwargs: Any) -> Any:
        """The model on this rank's device; in a distributed run wrapped for DDP.

        The wrapper (:class:`pystematic.ddp.DistributedModel`) is still the model for
        everything but ``forward``: its methods, attributes and plain ``state_dict()``.
        A module without trainable parameters is only moved (DDP would raise); one that is
        already DDP is returned as it is. ``kwargs`` go to DDP.
        """
        model = model.to(self.device)
        if not self.is_distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        from .ddp import DistributedModel, wants_ddp

        if isinstance(model, DistributedDataParallel) or not wants_ddp(model):
            return model
        if self.device is not None and getattr(self.device, "type", "cpu") == "cuda":
            kwargs.setdefault("device_ids", [self.device.index])
        return DistributedModel(model, **kwargs)

    def distributed_sampler(
        self, dataset: Any, shuffle: bool = True, drop_last: bool = False
    ) -> Any:
        """A sampler that splits each epoch's seeded permutation among the ranks.

        The same sampler in every mode (one rank: the whole permutation). Every pass over
        it is a new epoch (a new permutation), with or without ``set_epoch``; its epoch is
        kept in checkpoints. Prefer ``context.dataloader(dataset, shuffle=True)``, which
        makes one itself.
        """
        from .data import EpochSampler

        seed, state = self._epoch_seed("distributed_sampler")
        sampler = EpochSampler(
            dataset,
            num_replicas=self.world_size,
            rank=self.rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        if state is not None:
            sampler.load_state_dict(state)
        self._epoch_objects.append(sampler)
        return sampler

    def dataloader(
        self,
        dataset: Any,
        *,
        shuffle: bool = False,
        shard: bool = True,
        drop_last: bool = False,
        **kwargs: Any,
    ) -> Any:
        """A ``torch.utils.data.DataLoader`` that behaves the same under ``run`` and
        ``distributed``.

        - In a distributed run each rank gets its share of the data (a sampler that
          splits one permutation among the ranks), unless a ``sampler``/``batch_sampler``
          is given or ``shard=False`` (every rank then sees all of it).
        - ``shuffle=True``: every pass over the loader is a new epoch with a new
          permutation drawn from the run's seed, inside or outside ``context.loop``.
        - ``drop_last``: as in torch, for batches; in a distributed run also for the
          split: ``False`` repeats a few samples so every rank gets as many, ``True``
          leaves the last ``len % world_size`` of the epoch's permutation out.
        - DataLoader workers are seeded from the seed, the epoch, the worker id and the
          rank; a ``worker_init_fn`` of your own runs after that.

        The loader's epoch is saved in checkpoints and restored by ``load_checkpoint()``,
        whether the loader is made before or after that call.
        """
        from torch.utils.data import IterableDataset

        from .data import EpochLoader, EpochSampler

        kwargs["worker_init_fn"] = seeding.chain_worker_init_fn(kwargs.get("worker_init_fn"))
        seed, state = self._epoch_seed("dataloader")
        own_sampler = (
            kwargs.get("sampler") is None
            and kwargs.get("batch_sampler") is None
            and not isinstance(dataset, IterableDataset)
        )
        if own_sampler:
            sharded = shard and self.is_distributed
            kwargs["sampler"] = EpochSampler(
                dataset,
                num_replicas=self.world_size if sharded else 1,
                rank=self.rank if sharded else 0,
                shuffle=shuffle,
                seed=seed,
                drop_last=drop_last,
            )
        elif shuffle:
            kwargs["shuffle"] = shuffle  # torch says what it thinks of it with a sampler
        if kwargs.get("batch_sampler") is None or drop_last:
            kwargs["drop_last"] = drop_last
        owns_generator = kwargs.get("generator") is None
        if owns_generator:
            import torch

            kwargs["generator"] = torch.Generator()
        loader = EpochLoader(
            dataset,
            seed=seed,
            owns_generator=owns_generator,
            owns_sampler=own_sampler,
            **kwargs,
        )
        if state is not None:
            loader.load_state_dict(state)
        self._epoch_objects.append(loader)
        return loader

    def _epoch_seed(self, purpose: str) -> tuple[int, dict[str, Any] | None]:
        """The seed of the next loader or sampler, and its state when a checkpoint restored
        one for it already (then no seed is drawn: the restored seed chain counts it)."""
        index = len(self._epoch_objects)
        if index < len(self._restored_epochs):
            state = self._restored_epochs[index]
            return int(state["seed"]), state
        return self.new_seed(purpose), None

    # ------------------------------------------------------------ training state

    def track(self, **objects: Any) -> Any:
        """Register the training state; modules move to the device (and DDP when distributed)."""
        from torch import nn

        out = []
        for name, obj in objects.items():
            if isinstance(obj, nn.Module):
                obj = self.ddp(obj)
            self._tracked[name] = obj
            out.append(obj)
        return out[0] if len(out) == 1 else tuple(out)

    def loop(self, n: int, desc: str = "") -> Iterator[int]:
        """``range(n)`` with progress; on resume it continues where the checkpoint was saved.

        Loops are told apart by their call site and their order among the loops of the
        enclosing iteration, so a train loop followed by an eval loop resumes right. A
        checkpoint saved inside iteration k of the innermost running loop resumes at
        k + 1; the loops around it repeat their iteration (the rest of it had not run),
        and loops that had finished before the checkpoint are skipped.
        """
        return self._loop(n, desc, _caller_site())

    def _loop(self, n: int, desc: str, site: str | None) -> Iterator[int]:
        parent = self._loops[-1]
        frame = _Loop(site=site, ordinal=parent.inner_done)
        depth = len(self._loops) - 1
        start, skip = self._resume_start(frame, depth)
        self._loops.append(frame)
        try:
            if skip:
                return
            first = True
            for i in progress(n, desc, start=start, enabled=self.is_master):
                if depth == 0 and self._loop_limit is not None and i >= self._loop_limit:
                    raise LoopLimitReached(self._loop_limit, self.recorder.global_step)
                if not first and frame.resuming:
                    frame.resuming = False
                    self._resume = None  # past the resumed iteration: inner loops start fresh
                first = False
                frame.position, frame.inner_done = i, 0
                yield i
        finally:
            # Loops left by a ``return`` close when they are collected, outer ones possibly
            # first: take this one out wherever it is.
            self._loops = [f for f in self._loops if f is not frame]
            parent.inner_done += 1

    def _resume_start(self, frame: _Loop, depth: int) -> tuple[int, bool]:
        """(first iteration, skip the loop entirely) for a loop entered while resuming."""
        resume = self._resume
        if resume is None:
            return 0, False
        if depth >= len(resume.path):
            if depth == len(resume.path) and frame.ordinal < resume.done:
                return 0, True  # finished before the checkpoint was saved
            self._resume = None
            return 0, False
        target = resume.path[depth]
        if frame.ordinal < target["ordinal"]:
            return 0, True
        if frame.ordinal > target["ordinal"]:
            self._resume = None  # the saved loop was not reached: the code changed
            return 0, False
        site = target.get("site")
        if site and frame.site and site != frame.site:
            _log.warning(
                "resume: loop %d at depth %d is now in %s, the checkpoint's was in %s",
                frame.ordinal,
                depth,
                frame.site,
                site,
            )
        if depth == len(resume.path) - 1:
            self._resume = None
            return int(target["position"]) + 1, False
        frame.resuming = True
        return int(target["position"]), False

    def _loop_state(self) -> dict[str, Any]:
        return {
            "path": [
                {"site": f.site, "ordinal": f.ordinal, "position": f.position}
                for f in self._loops[1:]
            ],
            "done": self._loops[-1].inner_done,
        }

    def counter(self, name: str) -> Counter:
        if name not in self._counters:
            self._counters[name] = Counter(name)
        return self._counters[name]

    def save_checkpoint(
        self, obj: Any = None, name: str | None = None, keep_last: int | None = None
    ) -> Path:
        """Save *obj* (default: the tracked objects' state) plus pystematic's own state.

        Named ``checkpoint-<global step>.pt`` unless *name* is given; ``keep_last=K``
        removes all but the K newest step-named checkpoints once the new one is on disk.
        Call it on every rank: each rank's RNG state goes into the file rank 0 writes, so
        a resumed run continues bit for bit. The recorder is flushed first, so a resume
        after a crash has every step recorded up to the checkpoint.
        """
        if keep_last is not None and keep_last < 1:
            raise PystematicError(f"save_checkpoint(keep_last={keep_last}): keep at least 1")
        path = checkpoints.folder(self.output_dir) / (
            name or checkpoints.step_name(self.recorder.global_step)
        )
        own_rng = {"rng": seeding.capture_rng_state(), "rank_rng": self.rng.bit_generator.state}
        ranks = self._gather(own_rng)
        self.recorder.flush()
        if self.is_master:
            payload = {
                "user": checkpoints.state_of(self._tracked) if obj is None else obj,
                "pystematic": {
                    "counters": {k: c.value for k, c in self._counters.items()},
                    "global_step": self.recorder.global_step,
                    "loops": self._loop_state(),
                    "seed_chain": self._chain.state_dict(),
                    "loaders": [obj.state_dict() for obj in self._epoch_objects],
                    "ranks": ranks,
                    **own_rng,
                },
            }
            checkpoints.save(payload, path)
            if keep_last is not None:
                checkpoints.prune(self.output_dir, keep_last)
        if self.is_distributed:
            self.barrier()
        return path

    def load_checkpoint(self, path: str | Path | None = None) -> Any:
        """Restore the tracked objects, counters, loops and RNG state; return the saved object.

        Without *path*: the latest checkpoint of the run being resumed (None when not
        resuming). A run folder or a checkpoint file may be given; a plain ``torch.save``
        file is returned as it is.
        """
        resuming = path is None
        if path is None:
            if self._resume_from is None:
                return None
            path = self._resume_from
        path = Path(path)
        if path.is_dir():
            path, payload = checkpoints.load_latest(path)
        else:
            payload = checkpoints.load(path)
        if not (isinstance(payload, dict) and isinstance(payload.get("pystematic"), dict)):
            return payload  # a plain torch.save file: nothing of pystematic's to restore
        own = payload["pystematic"]
        user = payload.get("user")
        if isinstance(user, dict) and self._tracked:
            checkpoints.restore_state(self._tracked, user)
        for key, value in own.get("counters", {}).items():
            self.counter(key).value = value
        step = int(own.get("global_step", 0))
        if resuming:
            # Drops what the interrupted run recorded after the checkpoint.
            self.recorder.truncate(step)
        else:
            self.recorder.global_step = step
        self._resume = _resume_state(own.get("loops"))
        if "seed_chain" in own:
            self._chain.load_state_dict(own["seed_chain"])
        self._restored_epochs = [dict(state) for state in own.get("loaders") or []]
        for obj, state in zip(self._epoch_objects, self._restored_epochs, strict=False):
            obj.load_state_dict(state)
        ranks = own.get("ranks") or []
        mine = ranks[self.rank] if self.rank < len(ranks) else own
        if mine.get("rng") is not None:
            seeding.restore_rng_state(mine["rng"])
        if mine.get("rank_rng") is not None:
            self.rng.bit_generator.state = mine["rank_rng"]
        return user


def _resume_state(loops: Any) -> _Resume | None:
    if isinstance(loops, dict):
        return _Resume(path=list(loops.get("path", [])), done=int(loops.get("done", 0)))
    if isinstance(loops, list) and loops:  # 0.1.0: positions by depth
        return _Resume(path=[{"site": None, "ordinal": 0, "position": p} for p in loops])
    return None


# ------------------------------------------------------------------ the running context

_current: Context | None = None


def current() -> Context | None:
    """The context of the run going on in this process, if any."""
    return _current


def set_current(ctx: Context | None) -> None:
    global _current
    _current = ctx


_CONTEXT_ATTRIBUTES = frozenset(
    name for name in dir(Context) if not name.startswith("_")
) | frozenset(
    {
        "params",
        "output_dir",
        "seed",
        "recorder",
        "rank",
        "local_rank",
        "world_size",
        "is_distributed",
        "is_master",
        "device",
        "logger",
        "rng",
    }
)


def __getattr__(name: str) -> Any:
    """``ps.context.X``: attribute X of the running run's context."""
    if name in _CONTEXT_ATTRIBUTES:
        if _current is None:
            raise PystematicError("ps.context is only available while an experiment runs")
        return getattr(_current, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
