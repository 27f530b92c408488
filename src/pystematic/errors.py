"""User-facing errors.

Everything a user can fix themselves is a :class:`PystematicError`; the CLI
catches it once and prints one line (``error: ...``) with its ``exit_code``.
Anything else is a bug in pystematic or in the experiment and keeps its traceback.

    PystematicError                 exit 2 unless said otherwise
    ├── ConfigError                 bad pystematic.toml / pyproject.toml
    ├── DiscoveryError              duplicate experiments, unimportable modules
    ├── UnknownExperimentError      with a "did you mean"
    ├── ParameterError              a bad value, choice, missing required, bad params file
    ├── RunDirError                 output dir not writable, run dir in use
    ├── DistributedError            too few GPUs, bad launch options
    └── ReproduceError              a past run whose code or environment cannot be rebuilt
"""

from __future__ import annotations

from collections.abc import Iterable


class PystematicError(Exception):
    """An error the user can fix; rendered by the CLI as one line."""

    exit_code: int = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code

    def format_message(self) -> str:
        return self.message


class ConfigError(PystematicError):
    """A configuration file that cannot be read or holds bad values."""


class DiscoveryError(PystematicError):
    """Experiments that cannot be collected (duplicates, import failures)."""


class UnknownExperimentError(PystematicError):
    """An experiment name that matches nothing discovered."""


class ParameterError(PystematicError):
    """A parameter value, declaration or params file that is not valid."""


class RunDirError(PystematicError):
    """A run directory that cannot be created, read or continued."""


class DistributedError(PystematicError):
    """A distributed launch that cannot start, or a rank that failed."""


class ReproduceError(PystematicError):
    """A past run that ``pystematic reproduce`` cannot rebuild: no git information, a
    missing commit, a git.diff that does not apply, another Python or torch."""


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest candidate, or ``""`` when none is close."""
    import difflib

    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


for _cls in (
    PystematicError,
    ConfigError,
    DiscoveryError,
    UnknownExperimentError,
    ParameterError,
    RunDirError,
    DistributedError,
    ReproduceError,
):
    _cls.__module__ = "pystematic"
