"""``@ps.experiment`` and ``ps.group``: the objects discovery collects."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from functools import update_wrapper
from pathlib import Path
from typing import Any, overload

from .errors import ParameterError
from .params import (
    BUILTIN_NAMES,
    BUILTIN_PARAMETERS,
    PARAMS_ATTR,
    Parameter,
    declared_order,
)

MainFunction = Callable[..., Any]


def _first_line(text: str | None) -> str:
    text = inspect.cleandoc(text or "")
    return text.splitlines()[0].strip() if text else ""


def _check_new(owner: str, existing: Sequence[Parameter], param: Parameter) -> None:
    if param.name in BUILTIN_NAMES:
        raise ParameterError(
            f"{owner}: parameter {param.name!r} clashes with the built-in parameter of that name"
        )
    if any(p.name == param.name for p in existing):
        raise ParameterError(f"{owner}: parameter {param.name!r} is declared twice")


class Group:
    """Experiments under one CLI name (``pystematic run vision fit``) sharing parameters."""

    def __init__(self, name: str, *, help: str | None = None) -> None:
        self.name = name
        self.help = help or ""
        self.experiments: list[Experiment] = []
        self._applied: list[Parameter] = []

    @property
    def id(self) -> str:
        return self.name

    @property
    def parameters(self) -> list[Parameter]:
        return declared_order(self._applied)

    def add_parameter(self, param: Parameter) -> None:
        _check_new(f"group {self.name!r}", self._applied, param)
        self._applied.append(param)

    @overload
    def experiment(self, main: MainFunction) -> Experiment: ...

    @overload
    def experiment(
        self,
        main: None = None,
        *,
        name: str | None = None,
        help: str | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> Callable[[MainFunction], Experiment]: ...

    def experiment(
        self,
        main: MainFunction | None = None,
        *,
        name: str | None = None,
        help: str | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> Experiment | Callable[[MainFunction], Experiment]:
        """Declare an experiment of this group; same arguments as ``ps.experiment``."""

        def wrap(fn: MainFunction) -> Experiment:
            exp = Experiment(fn, name=name, help=help, defaults=defaults, group=self)
            self.experiments.append(exp)
            return exp

        return wrap(main) if main is not None else wrap

    def __repr__(self) -> str:
        return f"<pystematic group {self.name!r}>"


class Experiment:
    """A decorated main function plus its parameter declarations."""

    def __init__(
        self,
        main: MainFunction,
        *,
        name: str | None = None,
        help: str | None = None,
        defaults: Mapping[str, Any] | None = None,
        group: Group | None = None,
    ) -> None:
        if isinstance(main, Experiment):
            raise ParameterError(f"{main.id}: @ps.experiment applied twice")
        if not callable(main):
            raise ParameterError(f"@ps.experiment must decorate a function, got {main!r}")
        self.main = main
        self.name = (name or main.__name__).replace("-", "_")
        self.help = inspect.cleandoc(help if help is not None else (main.__doc__ or ""))
        self.defaults = dict(defaults or {})
        self.group = group
        self._applied: list[Parameter] = []
        for param in getattr(main, PARAMS_ATTR, []):
            self.add_parameter(param)
        update_wrapper(self, main)

    @property
    def id(self) -> str:
        return f"{self.group.id}.{self.name}" if self.group else self.name

    @property
    def description(self) -> str:
        return _first_line(self.help)

    @property
    def module(self) -> str:
        return str(getattr(self.main, "__module__", ""))

    @property
    def file(self) -> Path | None:
        try:
            source = inspect.getsourcefile(self.main)
        except TypeError:
            return None
        return Path(source).resolve() if source else None

    def add_parameter(self, param: Parameter) -> None:
        inherited = self.group._applied if self.group else []
        _check_new(f"experiment {self.id!r}", [*self._applied, *inherited], param)
        self._applied.append(param)

    @property
    def parameters(self) -> list[Parameter]:
        """User parameters in source order: the group's first, then the experiment's own."""
        inherited = self.group.parameters if self.group else []
        return [*inherited, *declared_order(self._applied)]

    @property
    def all_parameters(self) -> list[Parameter]:
        return [*self.parameters, *BUILTIN_PARAMETERS]

    def run(self, params: Mapping[str, Any] | None = None) -> Any:
        """Run from Python exactly as the CLI would; returns the main function's value."""
        from .runner import run_from_python

        return run_from_python(self, dict(params or {}))

    def cli(self, argv: Sequence[str] | None = None) -> None:
        """Make the calling script this experiment's own CLI: ``python train.py --epochs 5``."""
        from .cli import single_experiment_main

        single_experiment_main(self, argv)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.main(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<pystematic experiment {self.id!r}>"


@overload
def experiment(main: MainFunction) -> Experiment: ...


@overload
def experiment(
    main: None = None,
    *,
    name: str | None = None,
    help: str | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Callable[[MainFunction], Experiment]: ...


def experiment(
    main: MainFunction | None = None,
    *,
    name: str | None = None,
    help: str | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Experiment | Callable[[MainFunction], Experiment]:
    """Turn ``main(params, context)`` into an experiment; bare or with arguments."""
    if main is not None:
        return Experiment(main, name=name, help=help, defaults=defaults, group=None)
    return lambda fn: Experiment(fn, name=name, help=help, defaults=defaults, group=None)


def group(
    target: MainFunction | str,
    *,
    help: str | None = None,
) -> Group:
    """``vision = ps.group("vision")``, or ``@ps.group`` on a function (docstring = help)."""
    if isinstance(target, str):
        return Group(target, help=help)
    grp = Group(target.__name__, help=help if help is not None else _first_line(target.__doc__))
    for param in getattr(target, PARAMS_ATTR, []):
        grp.add_parameter(param)
    return grp
