"""The run's context: everything the main function needs besides its parameters.

One :class:`Context` exists per run (per rank in a distributed run). It is
passed to the main function and also reachable as ``ps.context``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import seeding
from .errors import PystematicError
from .params import Params
from .progress import progress
from .training import Counter, LoopState, load_torch, restore_state, save_torch, state_of

if TYPE_CHECKING:
    import numpy as np

    from .recording import Recorder

CHECKPOINT_DIR = "checkpoints"
DEFAULT_CHECKPOINT = "checkpoint.pt"


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
        self._loops = LoopState()
        self._resume_loops: list[int] = []  # positions from load_checkpoint, used once
        self._depth = 0
        self._tracked: dict[str, Any] = {}
        self._samplers: list[Any] = []
        self._resume_from = resume_from

    # ------------------------------------------------------------ seeds

    def new_seed(self, purpose: str = "") -> int:
        """A further seed derived from the master seed, identical on every rank."""
        return self._chain.new_seed(purpose)

    def seed_problems(self) -> str | None:
        """Compare every rank's ``new_seed`` calls; a warning text when they diverged."""
        if not self.is_distributed:
            return None
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, list(self._chain.purposes))
        return seeding.seed_sync_problems(gathered)

    # ------------------------------------------------------------ distributed

    def barrier(self) -> None:
        """Wait for every rank; also checks that the ranks drew the same seeds."""
        if not self.is_distributed:
            return
        import torch.distributed as dist

        dist.barrier()
        problem = self.seed_problems()
        if problem:
            self.logger.warning(problem)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's value on every rank (any picklable object)."""
        if not self.is_distributed:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def to_device(self, *tensors: Any) -> Any:
        moved = tuple(t.to(self.device) for t in tensors)
        return moved[0] if len(moved) == 1 else moved

    def ddp(self, model: Any, **kwargs: Any) -> Any:
        """Move to this rank's device and wrap in DDP when distributed; else just move."""
        model = model.to(self.device)
        if not self.is_distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if self.device is not None and getattr(self.device, "type", "cpu") == "cuda":
            kwargs.setdefault("device_ids", [self.device.index])
        return DistributedDataParallel(model, **kwargs)

    def distributed_sampler(self, dataset: Any, shuffle: bool = True) -> Any:
        """A sampler that partitions the data across ranks; ``loop`` calls ``set_epoch``."""
        if self.is_distributed:
            from torch.utils.data.distributed import DistributedSampler

            sampler: Any = DistributedSampler(
                dataset,
                num_replicas=self.world_size,
                rank=self.rank,
                shuffle=shuffle,
                seed=self.new_seed("distributed_sampler"),
            )
            self._samplers.append(sampler)
            return sampler
        from torch.utils.data import RandomSampler, SequentialSampler

        if not shuffle:
            return SequentialSampler(dataset)
        import torch

        generator = torch.Generator()
        generator.manual_seed(self.new_seed("sampler"))
        return RandomSampler(dataset, generator=generator)

    def dataloader(self, dataset: Any, **kwargs: Any) -> Any:
        """``torch.utils.data.DataLoader`` with reproducible, rank-mixed worker seeds."""
        from torch.utils.data import DataLoader

        kwargs.setdefault("worker_init_fn", seeding.worker_init_fn)
        if "generator" not in kwargs and "sampler" not in kwargs:
            import torch

            generator = torch.Generator()
            generator.manual_seed(self.new_seed("dataloader"))
            kwargs["generator"] = generator
        return DataLoader(dataset, **kwargs)

    # ------------------------------------------------------------ training state

    def track(self, **objects: Any) -> Any:
        """Register the training state; modules move to the device (and DDP when distributed)."""
        out = []
        for name, obj in objects.items():
            if hasattr(obj, "parameters") and hasattr(obj, "to"):
                obj = self.ddp(obj)
            self._tracked[name] = obj
            out.append(obj)
        return out[0] if len(out) == 1 else tuple(out)

    def loop(self, n: int, desc: str = "") -> Iterator[int]:
        """``range(n)`` with progress; restores its position on resume; calls ``set_epoch``.

        On resume the innermost loop that was saved continues after its saved iteration and
        the loops around it repeat theirs (the rest of that iteration had not run yet).
        """
        depth = self._depth
        positions = self._loops.positions
        pending = self._resume_loops
        start = 0
        if depth < len(pending):
            innermost = depth == len(pending) - 1
            start = pending[depth] + 1 if innermost else pending[depth]
            if innermost:
                pending.clear()
        del positions[depth:]
        self._depth += 1
        try:
            for i in progress(n, desc, start=start, enabled=self.is_master):
                for sampler in self._samplers:
                    if depth == 0:
                        sampler.set_epoch(i)
                del positions[depth:]
                positions.append(i)
                yield i
            if depth > 0:
                # Finished: a checkpoint saved later in the enclosing iteration resumes
                # after that iteration, not inside it.
                del positions[depth:]
        finally:
            self._depth -= 1

    def counter(self, name: str) -> Counter:
        if name not in self._counters:
            self._counters[name] = Counter(name)
        return self._counters[name]

    def save_checkpoint(self, obj: Any = None, name: str = DEFAULT_CHECKPOINT) -> Path:
        """Save *obj* (default: the tracked objects' state) plus pystematic's own state.

        Call it on every rank: each rank's RNG state is saved (rank 0 writes the
        shared part), so a resumed run continues bit for bit.
        """
        path = self.output_dir / CHECKPOINT_DIR / name
        payload = {
            "user": state_of(self._tracked) if obj is None else obj,
            "pystematic": {
                "counters": {k: c.value for k, c in self._counters.items()},
                "global_step": self.recorder.global_step,
                "loops": list(self._loops.positions),
                "seed_chain": self._chain.state_dict(),
                "rng": seeding.capture_rng_state(),
                "rank_rng": self.rng.bit_generator.state,
            },
        }
        if self.is_master:
            save_torch(payload, path)
        if self.is_distributed:
            rank_path = path.with_name(f"{path.stem}.rank{self.rank}.rng{path.suffix}")
            save_torch(payload["pystematic"]["rng"], rank_path)
            self.barrier()
        return path

    def load_checkpoint(self, path: str | Path | None = None) -> Any:
        """Restore the tracked objects and RNG state; ``None`` when not resuming."""
        resuming = path is None
        if path is None:
            if self._resume_from is None:
                return None
            path = self._resume_from
        path = Path(path)
        if path.is_dir():
            path = path / CHECKPOINT_DIR / DEFAULT_CHECKPOINT
        if not path.is_file():
            raise PystematicError(f"no checkpoint at {path}")
        payload = load_torch(path, map_location="cpu")
        own = payload.get("pystematic", {})
        user = payload.get("user")
        if isinstance(user, dict) and self._tracked:
            restore_state(self._tracked, user)
        for key, value in own.get("counters", {}).items():
            self.counter(key).value = value
        step = int(own.get("global_step", 0))
        if resuming:
            # Drops what the interrupted run recorded after the checkpoint.
            self.recorder.truncate(step)
        else:
            self.recorder.global_step = step
        self._loops.positions[:] = own.get("loops", [])
        self._resume_loops[:] = self._loops.positions
        if "seed_chain" in own:
            self._chain.load_state_dict(own["seed_chain"])
        rng = own.get("rng")
        if self.is_distributed:
            rank_path = path.with_name(f"{path.stem}.rank{self.rank}.rng{path.suffix}")
            if rank_path.is_file():
                rng = load_torch(rank_path)
        if rng is not None:
            seeding.restore_rng_state(rng)
        if "rank_rng" in own and not self.is_distributed:
            self.rng.bit_generator.state = own["rank_rng"]
        return user


_current: Context | None = None


def set_current(ctx: Context | None) -> None:
    global _current
    _current = ctx


class _ContextProxy:
    """``ps.context``: the current run's context, for code that cannot take it as an argument."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            # Tools probe dunders (inspect.unwrap, doctest, copy): they expect AttributeError.
            raise AttributeError(name)
        if _current is None:
            raise PystematicError("ps.context is only available while an experiment runs")
        return getattr(_current, name)

    def __repr__(self) -> str:
        return f"<pystematic context proxy for {_current!r}>"


context_proxy = _ContextProxy()
