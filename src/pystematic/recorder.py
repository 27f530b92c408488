"""``ps.recorder``: the recorder and the base class for your own backends.

class MyBackend(ps.recorder.Backend):
    name = "mine"

    def write_step(self, record: ps.recorder.StepRecord) -> None: ...

    def start_run(self, run: ps.recorder.RunInfo) -> None: ...   # optional

    def end_run(self, status: str) -> None: ...                  # optional
"""

from __future__ import annotations

from .recording import BACKENDS, Recorder, sanitize_tag
from .recording.base import Backend, Item, RunInfo, StepRecord

__all__ = ["BACKENDS", "Backend", "Item", "Recorder", "RunInfo", "StepRecord", "sanitize_tag"]
