"""Training helpers: counters, loop positions and atomic checkpoints."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .rundir import write_atomic


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


@dataclass
class LoopState:
    """Positions of the run's loops, outermost first; saved in checkpoints."""

    positions: list[int] = field(default_factory=list)


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` through a buffer, then an atomic replace: never a half checkpoint."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buffer.getvalue())


def load_torch(path: Path, map_location: Any = None) -> Any:
    import torch

    return torch.load(path, map_location=map_location, weights_only=False)


def unwrap(module: Any) -> Any:
    """The plain module under a DDP wrapper, so state dicts have no ``module.`` prefix."""
    return (
        getattr(module, "module", module)
        if type(module).__name__ == "DistributedDataParallel"
        else module
    )


def state_of(objects: dict[str, Any]) -> dict[str, Any]:
    return {name: unwrap(obj).state_dict() for name, obj in objects.items()}


def restore_state(objects: dict[str, Any], states: dict[str, Any]) -> None:
    for name, obj in objects.items():
        if name in states:
            unwrap(obj).load_state_dict(states[name])
