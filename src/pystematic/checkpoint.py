"""Checkpoint files: written atomically, named by step, pruned, found again on resume.

A checkpoint is one ``torch.save`` file in ``<run>/checkpoints/``. pystematic's own
checkpoints are a dict ``{"user": ..., "pystematic": {...}}``; a plain
``torch.save``d object loads too. Files are written through a buffer, fsynced and
renamed into place, so a crash leaves the previous checkpoint intact; the newest
file that opens is "the latest", whatever its name.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import RunDirError
from .rundir import CHECKPOINT_DIR, write_atomic

log = logging.getLogger("pystematic")

SUFFIX = ".pt"
_STEP_NAME = re.compile(r"checkpoint-(\d+)\.pt")


def step_name(step: int) -> str:
    """The name ``save_checkpoint()`` gives a checkpoint: ``checkpoint-<step>.pt``."""
    return f"checkpoint-{step}{SUFFIX}"


def folder(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR


def save(obj: Any, path: Path) -> None:
    """``torch.save`` through a buffer, then an atomic replace: never a half checkpoint."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buffer.getvalue())


def prune(run_dir: Path, keep_last: int) -> None:
    """Keep the *keep_last* newest step-named checkpoints; names given by the user stay."""
    named = sorted(
        (p for p in _files(folder(run_dir)) if _STEP_NAME.fullmatch(p.name)),
        key=_age_key,
        reverse=True,
    )
    for old in named[keep_last:]:
        with contextlib.suppress(OSError):
            old.unlink()


def remove_leftovers(run_dir: Path) -> None:
    """Temporary files of checkpoint writes a crash interrupted."""
    for tmp in folder(run_dir).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def _files(where: Path) -> Iterator[Path]:
    if where.is_dir():
        for path in where.iterdir():
            if path.suffix == SUFFIX and not path.name.startswith(".") and path.is_file():
                yield path


def _age_key(path: Path) -> tuple[int, str]:
    return (path.stat().st_mtime_ns, path.name)


def looks_complete(path: Path) -> bool:
    """Whether a file opens as a ``torch.save`` archive (a truncated one does not)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def candidates(where: Path) -> list[Path]:
    """Checkpoints of a run dir (or a checkpoints folder), newest first."""
    if (where / CHECKPOINT_DIR).is_dir():
        where = where / CHECKPOINT_DIR
    return sorted(_files(where), key=_age_key, reverse=True)


def latest(run_dir: Path) -> Path | None:
    """The newest checkpoint of a run dir that looks complete, or None."""
    return next((p for p in candidates(run_dir) if looks_complete(p)), None)


def load(path: Path) -> Any:
    """What ``torch.save`` wrote to *path*; a file that is not one is a clear error."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise RunDirError(f"no checkpoint at {path}") from None
    except Exception as e:
        raise RunDirError(f"{path} is not a checkpoint torch can load ({e})") from None


def load_latest(where: Path) -> tuple[Path, Any]:
    """The newest checkpoint under *where* that loads; a broken newer one is skipped
    with a warning."""
    found = candidates(where)
    if not found:
        raise RunDirError(f"no checkpoint in {where}")
    for path in found:
        try:
            return path, load(path)
        except RunDirError as e:
            log.warning("skipping checkpoint %s: %s", path, e.message)
    raise RunDirError(f"no checkpoint in {where} can be loaded")


def unwrap(module: Any) -> Any:
    """The plain module under a DDP wrapper, so state dicts have no ``module.`` prefix."""
    if "torch.nn.parallel" not in sys.modules:
        return module  # nothing can be wrapped in DDP before torch's DDP is imported
    from .ddp import unwrap as unwrap_ddp

    return unwrap_ddp(module)


def state_of(objects: dict[str, Any]) -> dict[str, Any]:
    return {name: unwrap(obj).state_dict() for name, obj in objects.items()}


def restore_state(objects: dict[str, Any], states: dict[str, Any]) -> None:
    for name, obj in objects.items():
        if name in states:
            unwrap(obj).load_state_dict(states[name])
