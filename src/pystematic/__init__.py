"""pystematic: set up, run and keep track of reproducible PyTorch experiments.

Importing this package is cheap: torch and tensorboardX load only when a run
needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .context import Context
from .context import context_proxy as context
from .errors import (
    ConfigError,
    DiscoveryError,
    DistributedError,
    ParameterError,
    PystematicError,
    RunDirError,
    UnknownExperimentError,
)
from .experiment import Experiment, Group, experiment, group
from .params import Params, param_group, parameter
from .seeding import worker_init_fn

if TYPE_CHECKING:
    from . import recorder as recorder
    from .recording import Recorder as Recorder
    from .runs import load_runs as load_runs
    from .runs import runs_dataframe as runs_dataframe

__all__ = [
    "ConfigError",
    "Context",
    "DiscoveryError",
    "DistributedError",
    "Experiment",
    "Group",
    "ParameterError",
    "Params",
    "PystematicError",
    "Recorder",
    "RunDirError",
    "UnknownExperimentError",
    "__version__",
    "context",
    "experiment",
    "global_entrypoint",
    "group",
    "load_runs",
    "param_group",
    "parameter",
    "recorder",
    "runs_dataframe",
    "worker_init_fn",
]


def global_entrypoint() -> None:
    """The pystematic CLI for the calling script: ``python train.py run train --epochs 5``."""
    from .cli import global_entrypoint as entrypoint

    entrypoint()


def __getattr__(name: str) -> Any:
    # Loaded on first use: the recorder pulls in numpy, runs pulls in rich.
    if name == "Recorder":
        from .recording import Recorder

        return Recorder
    if name == "recorder":
        import importlib

        return importlib.import_module(".recorder", __name__)
    if name == "load_runs":
        from .runs import load_runs

        return load_runs
    if name == "runs_dataframe":
        from .runs import runs_dataframe

        return runs_dataframe
    raise AttributeError(f"module 'pystematic' has no attribute {name!r}")
