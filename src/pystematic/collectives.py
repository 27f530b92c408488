"""The collectives pystematic itself runs across ranks: gathers, broadcasts, a barrier and
the recorder's reductions, each retired on the calling thread.

Why not ``dist.all_gather_object`` and friends: torch's gloo worker thread frees a finished
collective's work, and when Python has already let go of the work's tensors that free
takes the GIL from a thread that has no Python thread state. Making one takes the
interpreter's HEAD_LOCK, and a process that forks at that moment (a DataLoader starting
its workers, as the next epoch does right after a checkpoint) leaves its child deadlocked
in ``os.fork()`` on Python before 3.11.10 / 3.12 (CPython gh-112275; seen here in about 1 of
30 two-rank runs of 5 epochs under load, and in CI). So each collective here is started
with ``async_op=True``, and its work and tensors are kept until a few later ones have
run: the last reference is then dropped by the caller, with the GIL, not by gloo.

torch is imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import pickle
from collections import deque
from typing import Any

__all__ = ["all_gather_objects", "all_reduce", "barrier", "broadcast_object"]

# Works (and their tensors) of the last few collectives. Each collective waits for its own
# works, and gloo's thread drops its reference right after it finishes one, so a work a few
# collectives old is no longer referenced there.
_RETIRE_AFTER = 8
_kept: deque[tuple[Any, ...]] = deque(maxlen=_RETIRE_AFTER)


def _run(work: Any, *tensors: Any) -> None:
    """Wait for *work* (what an ``async_op=True`` call returned); keep it and *tensors*."""
    work.wait()
    _kept.append((work, *tensors))


def barrier() -> None:
    """Every rank waits for the others (``dist.barrier``)."""
    import torch.distributed as dist

    _run(dist.barrier(async_op=True))


def all_reduce(tensor: Any, op: Any) -> None:
    """``dist.all_reduce(tensor, op)``, in place."""
    import torch.distributed as dist

    _run(dist.all_reduce(tensor, op=op, async_op=True), tensor)


def all_gather_objects(value: Any, device: Any = None) -> list[Any]:
    """Every rank's *value* (picklable), in rank order, on every rank."""
    import torch
    import torch.distributed as dist

    device = _device(device)
    world_size = dist.get_world_size()
    data = _encode(value, device)
    size = torch.tensor([data.numel()], dtype=torch.long, device=device)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size)]
    _run(dist.all_gather(sizes, size, async_op=True), size, *sizes)
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: data.numel()] = data
    gathered = [torch.empty(longest, dtype=torch.uint8, device=device) for _ in sizes]
    _run(dist.all_gather(gathered, padded, async_op=True), data, padded, *gathered)
    return [_decode(g[: int(s.item())]) for g, s in zip(gathered, sizes, strict=True)]


def broadcast_object(value: Any, device: Any = None) -> Any:
    """Rank 0's *value* (picklable) on every rank."""
    import torch
    import torch.distributed as dist

    device = _device(device)
    data = _encode(value, device) if dist.get_rank() == 0 else None
    size = torch.tensor([0 if data is None else data.numel()], dtype=torch.long, device=device)
    _run(dist.broadcast(size, src=0, async_op=True), size)
    buffer = data if data is not None else torch.empty(int(size.item()), dtype=torch.uint8)
    buffer = buffer.to(device)
    _run(dist.broadcast(buffer, src=0, async_op=True), buffer)
    return _decode(buffer)


def _device(device: Any) -> Any:
    """Where the tensors go: the given device, else the rank's GPU under nccl, else CPU."""
    import torch
    import torch.distributed as dist

    if device is not None:
        return torch.device(device)
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _encode(value: Any, device: Any) -> Any:
    import torch

    return torch.frombuffer(bytearray(pickle.dumps(value)), dtype=torch.uint8).to(device)


def _decode(tensor: Any) -> Any:
    return pickle.loads(tensor.cpu().numpy().tobytes())
