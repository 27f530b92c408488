"""``ps.recorder``: the recorder and the base class for your own backends.

class MyBackend(ps.recorder.Backend):
    name = "mine"

    def write_step(self, record: ps.recorder.StepRecord) -> None: ...
"""

from __future__ import annotations

from .recording import BACKENDS, Recorder, sanitize_tag
from .recording.base import Backend, Item, StepRecord

__all__ = ["BACKENDS", "Backend", "Item", "Recorder", "StepRecord", "sanitize_tag"]
