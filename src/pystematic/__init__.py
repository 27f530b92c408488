"""pystematic: set up, run and keep track of reproducible PyTorch experiments.

Importing this package is cheap: torch, tensorboardX, Typer and rich load only when
a run or a command needs them.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from ._version import __version__
from .context import Context
from .errors import (
    ConfigError,
    DiscoveryError,
    DistributedError,
    ParameterError,
    PystematicError,
    ReproduceError,
    RunDirError,
    UnknownExperimentError,
)
from .experiment import Experiment, Group, experiment, group
from .params import Params, param_group, parameter
from .seeding import worker_init_fn

if _TYPE_CHECKING:
    from . import recording as recorder
    from .recording import Recorder
    from .runs import load_runs, runs_dataframe
    from .sweep import param_matrix, run_parameter_sweep

    # ps.context is the module pystematic.context, which forwards attribute access to
    # the running run's Context: to a type checker it is that Context.
    context: Context
else:
    from . import context  # type: ignore[assignment]

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
    "ReproduceError",
    "RunDirError",
    "UnknownExperimentError",
    "__version__",
    "context",
    "experiment",
    "global_entrypoint",
    "group",
    "load_runs",
    "param_group",
    "param_matrix",
    "parameter",
    "recorder",
    "run_parameter_sweep",
    "runs_dataframe",
    "worker_init_fn",
]


def global_entrypoint(argv: "list[str] | None" = None, exit_on_error: bool = True) -> _Any:
    """The pystematic CLI for the calling script: ``python train.py run train --epochs 5``.

    With ``exit_on_error=False`` it returns the command's result (main's value for
    ``run``) and raises errors instead of exiting.
    """
    from .cli import global_entrypoint as entrypoint

    return entrypoint(argv, exit_on_error)


def __getattr__(name: str) -> _Any:
    # Loaded on first use: the recorder pulls in numpy, runs reads files, sweeps start runs.
    if name == "Recorder":
        from .recording import Recorder

        return Recorder
    if name == "recorder":
        from . import recording

        return recording
    if name == "load_runs":
        from .runs import load_runs

        return load_runs
    if name == "runs_dataframe":
        from .runs import runs_dataframe

        return runs_dataframe
    if name in ("param_matrix", "run_parameter_sweep"):
        from . import sweep

        return getattr(sweep, name)
    raise AttributeError(f"module 'pystematic' has no attribute {name!r}")
