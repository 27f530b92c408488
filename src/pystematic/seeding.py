"""One seed to rule them all: seeding, derived seeds, per-rank streams and RNG state.

The master seed seeds ``random``, ``numpy`` and ``torch`` identically on every rank
(:func:`seed_all`). Further seeds come from a :class:`SeedChain`, a
``numpy.random.SeedSequence`` spawn chain that gives every rank the same values in the
same order. Streams that should differ per rank (``context.rng``, DataLoader workers) mix
the rank in (:func:`rank_rng`, :func:`worker_init_fn`). :func:`capture_rng_state` and
:func:`restore_rng_state` carry the global generators through a checkpoint.

numpy and torch are imported inside the functions that need them, so importing this module
(as ``import pystematic`` does, for ``ps.worker_init_fn``) costs nothing at CLI startup.
"""

from __future__ import annotations

import functools
import json
import operator
import os
import random
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "SEED_BOUND",
    "SeedChain",
    "SeedRecord",
    "capture_rng_state",
    "chain_worker_init_fn",
    "draw_seed",
    "rank_rng",
    "restore_rng_state",
    "seed_all",
    "seed_sync_problems",
    "set_current_rank",
    "set_deterministic",
    "snapshot_determinism",
    "worker_init_fn",
]

#: Seeds are plain ints in ``[0, SEED_BOUND)``: valid for torch, numpy's legacy API and random.
SEED_BOUND = 2**32

# Spawn-key tags keep the per-rank and per-worker streams apart from the chain's children
# (whose spawn keys are ``(call_index,)``) and from ``np.random.default_rng(master)``.
_RANK_STREAM_TAG = 0x52414E4B  # "RANK"
_WORKER_STREAM_TAG = 0x574B5253  # "WKRS"

_current_rank: int | None = None


def _check_seed(seed: int, what: str = "seed") -> int:
    if isinstance(seed, bool) or not hasattr(seed, "__index__"):
        raise TypeError(f"{what} must be an int, got {type(seed).__name__}")
    value = operator.index(seed)  # accepts numpy integers too
    if not 0 <= value < SEED_BOUND:
        raise ValueError(f"{what} must be in [0, 2**32), got {value}")
    return value


def draw_seed() -> int:
    """A fresh master seed from the OS's entropy source, in ``[0, 2**32)``."""
    return int.from_bytes(os.urandom(4), "little")


def seed_all(seed: int) -> None:
    """Seed ``random``, numpy's global (legacy) generator and torch (CPU and every CUDA device).

    Called with the same seed on every rank, so models built right after it start with
    identical weights everywhere. Safe without CUDA (torch seeds CUDA lazily).
    """
    import numpy as np
    import torch

    seed = _check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def set_deterministic(enabled: bool) -> None:
    """Switch torch to deterministic algorithms (or back) for bit-identical reruns.

    Enabling also sets ``cudnn.deterministic``, turns ``cudnn.benchmark`` off (its autotuner
    picks kernels by timing) and sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` when unset, which
    older torch/CUDA versions need for deterministic cuBLAS; it must be set before CUDA is
    initialised, so call this early. Disabling leaves ``cudnn.benchmark`` and the environment
    alone, and costs nothing when deterministic mode is already off.
    """
    import torch

    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = enabled
    # use_deterministic_algorithms imports torch._inductor.config (about 1 s with torch 2.13):
    # skip it when there is nothing to switch off, so a default run does not pay for it.
    if (
        enabled
        or torch.are_deterministic_algorithms_enabled()
        or "torch._inductor.config" in sys.modules
    ):
        torch.use_deterministic_algorithms(enabled)


def snapshot_determinism() -> Callable[[], None]:
    """Remember torch's determinism switches; the function returned puts them back.

    Covers what :func:`set_deterministic` touches: ``use_deterministic_algorithms`` (and
    its ``warn_only``), ``cudnn.deterministic``, ``cudnn.benchmark`` and
    ``CUBLAS_WORKSPACE_CONFIG``, so a notebook that ran an experiment with
    ``deterministic=True`` is not left in deterministic mode.
    """
    import torch

    cudnn = torch.backends.cudnn
    algorithms = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    flags = (cudnn.deterministic, cudnn.benchmark)
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")

    def restore() -> None:
        cudnn.deterministic, cudnn.benchmark = flags
        now = (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        )
        if now != algorithms:  # (the call costs ~1 s the first time: only when needed)
            torch.use_deterministic_algorithms(algorithms[0], warn_only=algorithms[1])
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas

    return restore


@dataclass(frozen=True)
class SeedRecord:
    """One line of ``seeds.log``: ``call`` 0 is the master seed, 1.. the derived seeds."""

    rank: int
    purpose: str
    value: int
    call: int

    def to_json(self) -> str:
        return json.dumps(asdict(self))


class SeedChain:
    """Derives further seeds deterministically from the master seed.

    The n-th :meth:`new_seed` returns the first word of the n-th child of
    ``SeedSequence(master)`` (what ``SeedSequence.spawn`` would hand out), so the sequence
    depends only on the master seed and the number of calls: identical on every rank, in
    every process and across resumes (:meth:`state_dict`).

    ``seeds.log`` is one file per run dir, shared by all ranks, so only rank 0 writes it
    (when ``log_path`` is given); every rank keeps its :attr:`records` in memory, and the
    ranks' :attr:`purposes` are compared with :func:`seed_sync_problems`.
    """

    def __init__(self, master: int, *, rank: int = 0, log_path: Path | None = None) -> None:
        self._master = _check_seed(master, "master seed")
        self._rank = rank
        self._log_path = Path(log_path) if log_path is not None and rank == 0 else None
        self._purposes: list[str] = []
        self.records: list[SeedRecord] = []
        self._record(SeedRecord(rank, "master", self._master, 0))

    @property
    def master(self) -> int:
        return self._master

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def calls(self) -> int:
        """How many seeds have been derived so far (the master seed is not counted)."""
        return len(self._purposes)

    @property
    def purposes(self) -> list[str]:
        """The purpose of every derived seed, in call order (a copy)."""
        return list(self._purposes)

    def new_seed(self, purpose: str = "") -> int:
        """The next seed of the chain, a plain int in ``[0, 2**32)``, logged with its purpose."""
        if not isinstance(purpose, str):
            raise TypeError(f"purpose must be a str, got {type(purpose).__name__}")
        value = _child_seed(self._master, len(self._purposes))
        self._purposes.append(purpose)
        self._record(SeedRecord(self._rank, purpose, value, len(self._purposes)))
        return value

    def state_dict(self) -> dict[str, Any]:
        """Plain data (JSON- and ``torch.load(weights_only=True)``-safe) for checkpoints."""
        return {"master": self._master, "calls": self.calls, "purposes": self.purposes}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the chain where ``state`` left it (the next call is ``calls + 1``)."""
        purposes = [str(p) for p in state["purposes"]]
        if int(state["calls"]) != len(purposes):
            raise ValueError(
                f"seed chain state is inconsistent: calls={state['calls']} but "
                f"{len(purposes)} purposes"
            )
        self._master = _check_seed(state["master"], "master seed")
        self._purposes = purposes

    def _record(self, record: SeedRecord) -> None:
        self.records.append(record)
        if self._log_path is not None:
            # One append per line, flushed at once: the log survives a crash.
            with self._log_path.open("a", encoding="utf-8") as f:
                f.write(record.to_json() + "\n")


def _child_seed(master: int, index: int) -> int:
    import numpy as np

    child = np.random.SeedSequence(master, spawn_key=(index,))
    return int(child.generate_state(1, dtype=np.uint32)[0])


def rank_rng(master: int, rank: int) -> np.random.Generator:
    """``context.rng``: a numpy Generator that differs per rank and is reproducible.

    Independent of the :class:`SeedChain` values and of ``np.random.default_rng(master)``.
    """
    import numpy as np

    master = _check_seed(master, "master seed")
    if rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    return np.random.default_rng(np.random.SeedSequence(master, spawn_key=(_RANK_STREAM_TAG, rank)))


def set_current_rank(rank: int | None) -> None:
    """Tell :func:`worker_init_fn` this process's global rank (``None`` forgets it).

    Workers started with ``fork`` inherit it; ``spawn`` workers re-import this module and
    fall back to the ``RANK`` environment variable, which the runner exports.
    """
    global _current_rank
    _current_rank = rank


def _worker_rank() -> int:
    if _current_rank is not None:
        return _current_rank
    env = os.environ.get("RANK", "")
    return int(env) if env.strip().isdigit() else 0


def worker_init_fn(worker_id: int) -> None:
    """Seed ``random``, numpy and torch in a DataLoader worker from its seed, id and rank.

    torch seeds each worker with ``base_seed + worker_id``, where ``base_seed`` comes from the
    parent's torch RNG. With the same master seed on every rank that is the same on every
    rank, so without this function all ranks draw the same augmentations. Reproducible:
    the same master seed gives the same worker seeds. Pass it as
    ``DataLoader(..., worker_init_fn=ps.worker_init_fn)`` (``context.dataloader`` does).
    """
    import numpy as np
    import torch

    seq = np.random.SeedSequence(
        torch.initial_seed(), spawn_key=(_WORKER_STREAM_TAG, worker_id, _worker_rank())
    )
    torch_seed, python_seed = (int(w) for w in seq.generate_state(2, dtype=np.uint64))
    torch.manual_seed(torch_seed)
    random.seed(python_seed)
    np.random.seed(seq.generate_state(4, dtype=np.uint32))


def _chained_worker_init(worker_id: int, *, user_fn: Callable[[int], None]) -> None:
    worker_init_fn(worker_id)
    user_fn(worker_id)


def chain_worker_init_fn(user_fn: Callable[[int], None] | None) -> Callable[[int], None]:
    """:func:`worker_init_fn` followed by ``user_fn`` (if any); picklable when ``user_fn`` is.

    For ``context.dataloader(..., worker_init_fn=fn)``: the user's function runs after the
    seeding, so it sees (and may override) the seeded generators.
    """
    if user_fn is None:
        return worker_init_fn
    return functools.partial(_chained_worker_init, user_fn=user_fn)


def capture_rng_state() -> dict[str, Any]:
    """The state of the global generators: python, numpy, torch CPU and every CUDA device.

    Plain data and tensors only (no numpy arrays), so a checkpoint holding it loads with
    ``torch.load(weights_only=True)``. ``"cuda"`` is ``[]`` without CUDA.
    """
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    assert isinstance(np_state, dict)  # legacy=False always gives a dict
    return {
        "python": [version, list(internal), gauss],
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": [int(k) for k in np_state["state"]["key"]],
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back what :func:`capture_rng_state` returned; keys that are absent are skipped.

    CUDA states are restored for the devices present (a checkpoint from a machine with more
    GPUs restores the first ones; one without CUDA states leaves CUDA alone).
    """
    import numpy as np
    import torch

    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    if "numpy" in state:
        s = state["numpy"]
        key = np.asarray(s["key"], dtype=np.uint32)
        np.random.set_state(
            (str(s["bit_generator"]), key, int(s["pos"]), int(s["has_gauss"]), float(s["gauss"]))
        )
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8))
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        for device, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(torch.as_tensor(cuda_state, dtype=torch.uint8), device)


def _call(purpose: str) -> str:
    return f"new_seed({purpose!r})" if purpose else "new_seed()"


def _times(n: int) -> str:
    return f"{n} time" if n == 1 else f"{n} times"


def seed_sync_problems(counts_per_rank: list[list[str]]) -> str | None:
    """A one-paragraph warning when ranks derived different seeds, else ``None``.

    ``counts_per_rank[r]`` is rank r's :attr:`SeedChain.purposes` (gathered by the caller,
    e.g. with ``all_gather_object``). Each rank is compared with rank 0: per purpose, how
    many more or fewer calls it made, or, when the counts agree, where the order differs.
    """
    if len(counts_per_rank) < 2:
        return None
    reference = list(counts_per_rank[0])
    ref_counts = Counter(reference)
    problems: list[str] = []
    for rank, purposes in enumerate(counts_per_rank[1:], start=1):
        purposes = list(purposes)
        if purposes == reference:
            continue
        counts = Counter(purposes)
        differing = False
        # Purposes in order of first appearance, rank 0's first, for a stable message.
        for purpose in dict.fromkeys(reference + purposes):
            diff = counts[purpose] - ref_counts[purpose]
            if diff:
                differing = True
                more = "more" if diff > 0 else "fewer"
                problems.append(
                    f"rank {rank} called {_call(purpose)} {_times(abs(diff))} {more} than rank 0"
                )
        if not differing:
            index = next(
                i for i, (a, b) in enumerate(zip(purposes, reference, strict=False)) if a != b
            )
            problems.append(
                f"rank {rank} called new_seed() in a different order than rank 0 (call "
                f"{index + 1} was {_call(purposes[index])} on rank {rank} but "
                f"{_call(reference[index])} on rank 0)"
            )
    if not problems:
        return None
    return (
        "new_seed() was not called identically on every rank, so the ranks' derived seeds no "
        "longer match (the model-init or sampler seed may now differ between ranks): "
        + "; ".join(problems)
        + ". Call new_seed() on every rank in the same order, outside code that runs only on "
        "some ranks (such as `if context.is_master:`), and branch after drawing the seed."
    )
