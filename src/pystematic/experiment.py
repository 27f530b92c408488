"""``@ps.experiment`` and ``ps.group``: what users declare, and how they run it from Python.

An :class:`Experiment` wraps a main function with its parameter declarations;
``exp.run({...})`` (or ``exp({...})``) runs it exactly as the CLI would, ``exp.cli()``
makes a script its command. A :class:`Group` bundles experiments under one CLI name,
nests, and passes its parameters down. Discovery recognises experiments through
``describe()``, so this module sits above discovery, the runner and the CLI.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import update_wrapper
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from .discovery import ExperimentInfo
from .errors import ParameterError
from .params import (
    BUILTIN_NAMES,
    BUILTIN_PARAMETERS,
    PARAMS_ATTR,
    Parameter,
    declared_order,
    resolve_parameters,
)
from .project import project_for_file

if TYPE_CHECKING:
    from .jobs import RunProcess

MainFunction = Callable[..., Any]


def _first_line(text: str | None) -> str:
    text = inspect.cleandoc(text or "")
    return text.splitlines()[0].strip() if text else ""


def _same_declaration(a: Parameter, b: Parameter) -> bool:
    """Two declarations of one name agree when all but their help section do."""
    return replace(a, group=None) == replace(b, group=None)


def _merge(owner: str, sources: Sequence[tuple[str, Sequence[Parameter]]]) -> list[Parameter]:
    """Declarations from several owners, in order; a name declared differently is an error
    naming both owners, the same declaration twice is kept once."""
    merged: dict[str, tuple[str, Parameter]] = {}
    for source, params in sources:
        for param in params:
            if param.name in BUILTIN_NAMES:
                raise ParameterError(
                    f"{source}: parameter {param.name!r} clashes with the built-in parameter "
                    "of that name"
                )
            seen = merged.get(param.name)
            if seen is None:
                merged[param.name] = (source, param)
            elif seen[0] == source:
                raise ParameterError(f"{source}: parameter {param.name!r} is declared twice")
            elif not _same_declaration(seen[1], param):
                raise ParameterError(
                    f"{owner}: parameter {param.name!r} is declared differently by {seen[0]} "
                    f"and {source}"
                )
    return [p for _, p in merged.values()]


def _takes_context(main: MainFunction) -> bool:
    """Whether main takes ``(params, context)`` (True) or ``(params)`` (False).

    Any other signature is an error now, at decoration, not after a run dir exists.
    """
    name = getattr(main, "__qualname__", repr(main))
    try:
        signature = inspect.signature(main)
    except (TypeError, ValueError):
        return True  # a builtin or C callable: assume the documented form
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    required_keyword = [
        p.name
        for p in signature.parameters.values()
        if p.kind is p.KEYWORD_ONLY and p.default is p.empty
    ]
    varargs = any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values())
    required = [p for p in positional if p.default is p.empty]
    if required_keyword or len(required) > 2 or (not positional and not varargs):
        raise ParameterError(
            f"experiment {name}{signature}: a main function takes (params, context) or (params)"
        )
    return varargs or len(positional) >= 2


class Group:
    """Experiments under one CLI name (``pystematic run vision fit``) sharing parameters."""

    def __init__(self, name: str, *, help: str | None = None, parent: Group | None = None) -> None:
        self.name = name.replace("-", "_")
        self.help = help or ""
        self.parent = parent
        self.experiments: list[Experiment] = []
        self.groups: list[Group] = []
        self._applied: list[Parameter] = []

    @property
    def id(self) -> str:
        return f"{self.parent.id}.{self.name}" if self.parent else self.name

    @property
    def path(self) -> list[Group]:
        """This group and the groups around it, outermost first."""
        return [*(self.parent.path if self.parent else []), self]

    @property
    def parameters(self) -> list[Parameter]:
        """Parameters for everything in this group: the enclosing groups' first."""
        return _merge(
            f"group {self.id!r}",
            [(f"group {g.id!r}", declared_order(g._applied)) for g in self.path],
        )

    def add_parameter(self, param: Parameter) -> None:
        self._applied.append(param)
        try:
            self.parameters  # noqa: B018 -- checks the new declaration against the others
            for exp in self.all_experiments():
                exp.parameters  # noqa: B018
        except ParameterError:
            self._applied.pop()
            raise

    def all_experiments(self) -> list[Experiment]:
        """The experiments of this group and of the groups inside it."""
        return [*self.experiments, *(e for g in self.groups for e in g.all_experiments())]

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
        inherit_params: Any = None,
    ) -> Callable[[MainFunction], Experiment]: ...

    def experiment(
        self,
        main: MainFunction | None = None,
        *,
        name: str | None = None,
        help: str | None = None,
        defaults: Mapping[str, Any] | None = None,
        inherit_params: Any = None,
    ) -> Experiment | Callable[[MainFunction], Experiment]:
        """Declare an experiment of this group; same arguments as ``ps.experiment``."""

        def wrap(fn: MainFunction) -> Experiment:
            exp = Experiment(
                fn,
                name=name,
                help=help,
                defaults=defaults,
                group=self,
                inherit_params=inherit_params,
            )
            self.experiments.append(exp)
            return exp

        return wrap(main) if main is not None else wrap

    def group(self, target: MainFunction | str, *, help: str | None = None) -> Group:
        """A group inside this one: ``vision.group("detection")`` (or as a decorator on a
        function) -> ``pystematic run vision detection X``."""
        inner = _new_group(target, help, parent=self)
        self.groups.append(inner)
        return inner

    def cli(self, argv: Sequence[str] | None = None, exit_on_error: bool = True) -> Any:
        """Make the calling script this group's CLI: ``python vision.py fit --epochs 5``."""
        from .cli import experiments_cli

        infos = [e.describe() for e in self.all_experiments()]
        if not infos:
            raise ParameterError(f"group {self.id!r} has no experiments")
        return experiments_cli(infos, argv, exit_on_error, group=tuple(g.name for g in self.path))

    def __repr__(self) -> str:
        return f"<pystematic group {self.id!r}>"


class Experiment:
    """A decorated main function plus its parameter declarations.

    ``exp(params)`` and ``exp.run(params)`` run it as the CLI would; ``exp.main`` is the
    undecorated function.
    """

    def __init__(
        self,
        main: MainFunction,
        *,
        name: str | None = None,
        help: str | None = None,
        defaults: Mapping[str, Any] | None = None,
        group: Group | None = None,
        inherit_params: Any = None,
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
        self.takes_context = _takes_context(main)
        self._inherited = _inheritance(inherit_params)
        self._applied: list[Parameter] = []
        for param in getattr(main, PARAMS_ATTR, []):
            self._applied.append(param)
        self.parameters  # noqa: B018 -- clashes are errors now, naming both owners
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
        self._applied.append(param)
        try:
            self.parameters  # noqa: B018
        except ParameterError:
            self._applied.pop()
            raise

    @property
    def parameters(self) -> list[Parameter]:
        """User parameters: the groups' first, then inherited ones, then its own."""
        sources: list[tuple[str, Sequence[Parameter]]] = []
        if self.group is not None:
            sources.append((f"group {self.group.id!r}", self.group.parameters))
        for owner in self._inherited:
            sources.append((repr(owner), owner.parameters))
        sources.append((f"experiment {self.id!r}", declared_order(self._applied)))
        return _merge(f"experiment {self.id!r}", sources)

    @property
    def all_parameters(self) -> list[Parameter]:
        return [*self.parameters, *BUILTIN_PARAMETERS]

    def describe(self) -> ExperimentInfo:
        """The declarations discovery, the CLI and the runner work from."""
        return ExperimentInfo(
            id=self.id,
            name=self.name,
            groups=[(g.name, g.help) for g in (self.group.path if self.group else [])],
            module=self.module,
            file=str(self.file) if self.file else "",
            description=self.description,
            help=self.help,
            parameters=self.parameters,
            defaults=self.defaults,
            main=self.main,
            takes_context=self.takes_context,
        )

    __pystematic_describe__ = describe

    def run(self, params: Mapping[str, Any] | None = None) -> Any:
        """Run from Python exactly as the CLI would; returns the main function's value and
        raises what it raised."""
        from .runner import run_experiment

        info = self.describe()
        project = project_for_file(info.file)
        resolved = resolve_parameters(
            info.id, self.all_parameters, info.defaults, project, dict(params or {})
        )
        outcome = run_experiment(info, project, resolved.values, resolved.snapshot(), [info.id])
        if outcome.error is not None:
            raise outcome.error
        return outcome.value

    def run_in_new_process(self, params: Mapping[str, Any] | None = None) -> RunProcess:
        """Start a run in a child process and return at once: a handle with ``join()``,
        ``exitcode`` and ``run_dir`` (which exists already). Bad values raise here."""
        from .jobs import start_in_new_process

        info = self.describe()
        return start_in_new_process(info, project_for_file(info.file), dict(params or {}))

    def __call__(self, params: Mapping[str, Any] | None = None) -> Any:
        """The same as :meth:`run`."""
        return self.run(params)

    def cli(self, argv: Sequence[str] | None = None, exit_on_error: bool = True) -> Any:
        """Make the calling script this experiment's own CLI: ``python train.py --epochs 5``.

        With ``exit_on_error=False`` it returns main's value and raises main's exception
        (or a PystematicError for bad input) instead of exiting.
        """
        from .cli import experiments_cli

        return experiments_cli([self.describe()], argv, exit_on_error)

    def __repr__(self) -> str:
        return f"<pystematic experiment {self.id!r}>"


def _inheritance(value: Any) -> list[Experiment | Group]:
    if value is None:
        return []
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if not isinstance(item, (Experiment, Group)):
            raise ParameterError(f"inherit_params takes experiments and groups, got {item!r}")
    return items


@overload
def experiment(main: MainFunction) -> Experiment: ...


@overload
def experiment(
    main: None = None,
    *,
    name: str | None = None,
    help: str | None = None,
    defaults: Mapping[str, Any] | None = None,
    inherit_params: Any = None,
) -> Callable[[MainFunction], Experiment]: ...


def experiment(
    main: MainFunction | None = None,
    *,
    name: str | None = None,
    help: str | None = None,
    defaults: Mapping[str, Any] | None = None,
    inherit_params: Any = None,
) -> Experiment | Callable[[MainFunction], Experiment]:
    """Turn ``main(params, context)`` (or ``main(params)``) into an experiment.

    Bare (``@ps.experiment``) or with arguments; ``inherit_params`` takes the parameter
    declarations of an experiment, a group or a list of them.
    """

    def wrap(fn: MainFunction) -> Experiment:
        return Experiment(
            fn, name=name, help=help, defaults=defaults, group=None, inherit_params=inherit_params
        )

    return wrap(main) if main is not None else wrap


def group(
    target: MainFunction | str,
    *,
    help: str | None = None,
) -> Group:
    """``vision = ps.group("vision")``, or ``@ps.group`` on a function (docstring = help)."""
    return _new_group(target, help, parent=None)


def _new_group(target: MainFunction | str, help: str | None, parent: Group | None) -> Group:
    if isinstance(target, str):
        return Group(target, help=help, parent=parent)
    doc = help if help is not None else _first_line(target.__doc__)
    grp = Group(target.__name__, help=doc, parent=parent)
    for param in getattr(target, PARAMS_ATTR, []):
        grp.add_parameter(param)
    return grp
