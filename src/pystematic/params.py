"""Parameter declarations, value conversion and the precedence chain.

``ps.parameter(...)`` returns a :class:`Parameter`, which is both the record of
the declaration and the decorator that attaches it. :func:`resolve_parameters`
merges every source in the design's precedence order and checks each value once.
This module imports neither Typer nor torch: ``cli.py`` turns declarations into options.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum
from pathlib import Path
from typing import Any

from . import rundir
from .errors import ParameterError, PystematicError, RunDirError, did_you_mean
from .project import Project, read_toml

BUILTIN_TYPES: dict[str, Callable[..., Any]] = {
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "path": Path,
}
TRUE_WORDS = {"1", "true", "yes", "on", "y", "t"}
FALSE_WORDS = {"0", "false", "no", "off", "n", "f"}


class Source(IntEnum):
    """Where a parameter's effective value came from, lowest precedence first."""

    DECORATOR = 0
    EXPERIMENT = 1
    DEFAULTS = 2
    EXPERIMENTS_TABLE = 3
    ENV = 4
    PARAMS_FILE = 5
    CLI = 6


def type_name(type_: Callable[..., Any]) -> str:
    """The short name of a parameter type, as shown by ``show-params``."""
    for name, builtin in BUILTIN_TYPES.items():
        if type_ is builtin:
            return name
    if isinstance(type_, type) and issubclass(type_, Path):
        return "path"
    return getattr(type_, "__name__", type(type_).__name__)


def cli_name(name: str) -> str:
    return name.replace("_", "-")


@dataclass(frozen=True)
class Parameter:
    """One declared parameter; calling it on a function or experiment attaches it."""

    name: str
    type: Callable[..., Any] = str
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] | None = None
    required: bool = False
    multiple: bool = False
    envvar: str | None = None
    group: str | None = None
    builtin: bool = False
    hidden: bool = False
    default_help: str | None = None

    @property
    def computed_default(self) -> bool:
        """``default`` is a zero-argument callable, evaluated when parameters are resolved."""
        return callable(self.default) and not isinstance(self.default, type)

    @property
    def type_name(self) -> str:
        return type_name(self.type)

    @property
    def is_flag(self) -> bool:
        return self.type is bool and not self.multiple

    @property
    def is_custom(self) -> bool:
        return self.type_name not in BUILTIN_TYPES

    @property
    def option(self) -> str:
        return "--" + cli_name(self.name)

    def __call__(self, target: Any) -> Any:
        attach_parameters(target, [self])
        return target


#: Names no user parameter may take: ``--help``, and ``show-params --json / --all``.
RESERVED_NAMES = frozenset({"help", "json", "all"})


def parameter(
    name: str,
    type: Callable[..., Any] = str,
    default: Any = None,
    help: str = "",
    choices: Sequence[Any] | None = None,
    required: bool = False,
    multiple: bool = False,
    envvar: str | None = None,
    hidden: bool = False,
    default_help: str | None = None,
) -> Parameter:
    """Declare a parameter; use as a decorator above or below ``@ps.experiment``.

    ``default`` may be a zero-argument callable (evaluated when parameters are resolved);
    ``hidden`` keeps it out of ``--help`` and ``show-params``; ``default_help`` is shown in
    help instead of the default.
    """
    name = name.replace("-", "_")
    if not name.isidentifier():
        raise ParameterError(f"parameter name {name!r} is not a valid Python identifier")
    if name in RESERVED_NAMES:
        raise ParameterError(
            f"parameter name {name!r} is reserved (--{name} is an option of every command)"
        )
    if type is bool and default is None and not multiple:
        default = False
    return Parameter(
        name=name,
        type=type,
        default=default,
        help=help,
        choices=tuple(choices) if choices is not None else None,
        required=required,
        multiple=multiple,
        envvar=envvar,
        hidden=hidden,
        default_help=default_help,
    )


@dataclass(frozen=True)
class ParamGroup:
    """Parameters shared by several experiments, applied as one decorator."""

    name: str
    parameters: tuple[Parameter, ...]

    def __call__(self, target: Any) -> Any:
        attach_parameters(target, [replace(p, group=self.name) for p in self.parameters])
        return target


def param_group(name: str, *parameters: Parameter) -> ParamGroup:
    """Bundle parameters under a titled ``--help`` section; names are not prefixed."""
    for p in parameters:
        if not isinstance(p, Parameter):
            raise ParameterError(f"param_group {name!r} takes ps.parameter(...) objects, got {p!r}")
    # Stored in application order (bottom-up), like single decorators.
    return ParamGroup(name=name, parameters=tuple(reversed(parameters)))


PARAMS_ATTR = "__pystematic_params__"


def attach_parameters(target: Any, params: Sequence[Parameter]) -> None:
    """Record declarations on a function or an experiment/group object.

    Decorators apply bottom-up; lists keep application order and are reversed
    when read, so the order on screen is the order in the source.
    """
    adder = getattr(target, "add_parameter", None)
    if callable(adder):
        for p in params:
            adder(p)
        return
    if not callable(target):
        raise ParameterError(f"ps.parameter must decorate a function, got {target!r}")
    existing: list[Parameter] = list(getattr(target, PARAMS_ATTR, []))
    existing.extend(params)
    setattr(target, PARAMS_ATTR, existing)


def declared_order(applied: Sequence[Parameter]) -> list[Parameter]:
    return list(reversed(applied))


def _builtin(
    name: str, type_: Callable[..., Any], default: Any, help_: str, **kw: Any
) -> Parameter:
    return Parameter(
        name=name, type=type_, default=default, help=help_, builtin=True, group="pystematic", **kw
    )


BUILTIN_PARAMETERS: tuple[Parameter, ...] = (
    _builtin("output_dir", Path, None, "Folder that holds the run folders (default: config)."),
    _builtin("params_file", Path, None, "Read parameter values from this TOML file."),
    _builtin("random_seed", int, None, "Master seed (drawn from the OS when not given)."),
    _builtin("deterministic", bool, False, "Use torch's deterministic algorithms."),
    _builtin("debug", bool, False, "Log at DEBUG level."),
    _builtin("pdb", bool, False, "Start the post-mortem debugger on an exception."),
    _builtin("recorder", str, None, "Recorder backend(s) for this run.", multiple=True),
    _builtin("tag", str, None, "A label kept in run.json.", multiple=True),
    _builtin("resume", Path, None, "Run folder or checkpoint to continue."),
)
BUILTIN_NAMES = frozenset(p.name for p in BUILTIN_PARAMETERS)
# Built-ins that belong to the run's identity and go into parameters.toml.
SNAPSHOT_BUILTINS = ("random_seed", "deterministic")


class Params(Mapping[str, Any]):
    """Read-only parameter values with attribute and item access."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy/pickle probe dunders before _values is set
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no parameter named {name!r}") from None

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable (spawned DataLoader workers, copy.deepcopy) despite __setattr__ refusing.
        return (Params, (self._values,))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("params are read-only")

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def to_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def __repr__(self) -> str:
        return f"Params({self._values!r})"


def _describe(value: Any) -> str:
    return repr(value) if not isinstance(value, str) else f"'{value}'"


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise ValueError("a boolean (true/false)")


def _convert_one(param: Parameter, value: Any) -> Any:
    """Convert one raw value (a CLI/env string or a TOML/Python value) to the declared type."""
    kind = param.type_name
    if kind == "bool":
        return _parse_bool(value)
    if kind == "int":
        if isinstance(value, bool):
            raise ValueError("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return (
                    int(value.strip(), 0)
                    if value.strip()[:2].lower() in ("0x", "0b")
                    else int(value)
                )
            except ValueError:
                pass
        raise ValueError("an integer")
    if kind == "float":
        if isinstance(value, bool):
            raise ValueError("a float")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError("a float")
    if kind == "str":
        if isinstance(value, str):
            return _utf8(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError("a string")
    if kind == "path":
        if isinstance(value, (str, os.PathLike)):
            return Path(_utf8(os.fspath(value)))
        raise ValueError("a path")
    # A custom parse callable takes the input string; other values pass through it too.
    try:
        return param.type(value)
    except Exception as e:  # the callable's own message says what it expected
        raise ValueError(f"accepted by {param.type_name} ({e})") from None


def _utf8(text: Any) -> Any:
    """Text that parameters.toml and run.json can hold: undecodable bytes from the command
    line (surrogates) are refused, not written as a broken file later."""
    if isinstance(text, str):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("valid UTF-8 text") from None
    return text


def convert(param: Parameter, value: Any, origin: str) -> Any:
    """Convert and check a value; errors name the parameter, the value and what was expected."""
    if value is None:
        return None
    if param.multiple:
        items = list(value) if isinstance(value, (list, tuple)) else _split(value)
        return [convert(replace(param, multiple=False), item, origin) for item in items]
    try:
        converted = _convert_one(param, value)
    except ValueError as e:
        raise ParameterError(
            f"invalid value for {param.option}: {_describe(value)} is not {e} (from {origin})"
        ) from None
    if param.choices is not None and converted not in param.choices:
        allowed = [str(c) for c in param.choices]
        raise ParameterError(
            f"invalid value for {param.option}: {_describe(value)} is not one of "
            f"{', '.join(allowed)} (from {origin})" + did_you_mean(str(value), allowed)
        )
    return converted


def _split(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [v for v in value.replace(",", " ").split() if v]
    return [value]


@dataclass
class Resolved:
    """The effective value of every parameter, where it came from, and its snapshot form."""

    values: dict[str, Any]
    sources: dict[str, str]
    parameters: dict[str, Parameter]
    raw: dict[str, Any] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        """Flat TOML-ready values for parameters.toml (None left out, custom types as input)."""
        out: dict[str, Any] = {}
        for name, param in self.parameters.items():
            if param.builtin and name not in SNAPSHOT_BUILTINS:
                continue
            value = self.raw.get(name, self.values.get(name))
            if value is None:
                continue
            out[name] = to_toml_value(value)
        return out


def to_toml_value(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [to_toml_value(v) for v in value]
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


@dataclass(frozen=True)
class Layer:
    """A set of values from one source, e.g. ``[defaults]`` or a params file."""

    source: Source
    label: str
    values: Mapping[str, Any]
    strict: bool  # unknown keys are an error
    where: str = ""  # e.g. the params file's path, for error messages

    @property
    def origin(self) -> str:
        return f"{self.label} {self.where}" if self.where else self.label


def resolve(
    parameters: Sequence[Parameter],
    layers: Sequence[Layer],
    *,
    environ: Mapping[str, str] | None = None,
    compute: bool = True,
) -> Resolved:
    """Merge every source in precedence order, then convert and check each value once.

    ``compute=False`` leaves callable defaults uncalled (their value is None): help text
    must not run user code, nor draw a value the run would not get.
    """
    environ = os.environ if environ is None else environ
    by_name = {p.name: p for p in parameters}
    # name -> (value, source label, origin for error messages)
    chosen: dict[str, tuple[Any, str, str]] = {
        p.name: (p.default, "decorator", "decorator") for p in parameters
    }
    ordered = sorted(layers, key=lambda layer: layer.source)
    env_done = False
    for layer in ordered:
        if layer.source > Source.ENV and not env_done:
            _apply_env(by_name, chosen, environ)
            env_done = True
        for key, value in layer.values.items():
            name = key.replace("-", "_")
            if name not in by_name:
                if layer.strict:
                    names = sorted(n for n, p in by_name.items() if not p.builtin)
                    hint = did_you_mean(name, names) or f" (known: {', '.join(names) or 'none'})"
                    raise ParameterError(f"unknown parameter {key!r} in {layer.origin}{hint}")
                continue
            chosen[name] = (value, layer.label, layer.origin)
    if not env_done:
        _apply_env(by_name, chosen, environ)

    values: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, (value, label, origin) in chosen.items():
        param = by_name[name]
        if label == "decorator" and param.computed_default:
            value = param.default() if compute else None
        values[name] = convert(param, value, origin)
        if param.is_custom and isinstance(value, str):
            raw[name] = value
        sources[name] = label
        if param.required and values[name] is None:
            raise ParameterError(f"missing value for required parameter {param.option}")
    return Resolved(values=values, sources=sources, parameters=by_name, raw=raw)


def _apply_env(
    by_name: Mapping[str, Parameter],
    chosen: dict[str, tuple[Any, str, str]],
    environ: Mapping[str, str],
) -> None:
    for name, param in by_name.items():
        if param.envvar and param.envvar in environ:
            label = f"env:{param.envvar}"
            chosen[name] = (environ[param.envvar], label, label)


# ---------------------------------------------------------------- the design's precedence


def params_file_layer(path: Path, experiment_id: str) -> Layer:
    """The values of a parameters.toml; one from another experiment's run is refused."""
    if not path.is_file():
        raise ParameterError(f"params file not found: {path}")
    try:
        values = read_toml(path)
    except PystematicError as e:
        raise ParameterError(e.message) from None
    if (path.parent / rundir.RUN_JSON).is_file():
        try:
            other = rundir.read_run_json(path.parent).get("experiment")
        except RunDirError:
            other = None
        if other and other != experiment_id:
            raise ParameterError(
                f"params file {path} belongs to a run of {other!r}, not {experiment_id!r}"
            )
    return Layer(Source.PARAMS_FILE, "params-file", values, strict=True, where=str(path))


def resolve_parameters(
    experiment_id: str,
    parameters: Sequence[Parameter],
    experiment_defaults: Mapping[str, Any],
    project: Project,
    cli_values: Mapping[str, Any],
    *,
    compute: bool = True,
) -> Resolved:
    """Every source in the design's precedence order, checked once.

    decorator -> ``defaults=`` -> ``[defaults]`` -> ``[experiments.ID]`` -> env ->
    ``--params-file`` or the resumed run's parameters.toml -> CLI flags.
    """
    table = project.experiments.get(experiment_id, {})
    layers = [
        Layer(Source.EXPERIMENT, "experiment", experiment_defaults, strict=True),
        Layer(
            Source.DEFAULTS,
            "[defaults]",
            {"recorder": list(project.recorder), **project.defaults},
            strict=False,
        ),
        Layer(Source.EXPERIMENTS_TABLE, f"[experiments.{experiment_id}]", table, strict=True),
        Layer(Source.CLI, "cli", cli_values, strict=True),
    ]
    params_file = cli_values.get("params_file")
    if params_file is not None:
        layers.append(params_file_layer(Path(params_file), experiment_id))
    resume = cli_values.get("resume")
    if resume is not None:
        folder = rundir.resume_dir(Path(resume))
        layers.append(params_file_layer(folder / rundir.PARAMETERS_TOML, experiment_id))
    resolved = resolve(parameters, layers, compute=compute)
    seed = resolved.values.get("random_seed")
    if seed is not None and not 0 <= seed < 2**32:
        raise ParameterError(
            f"invalid value for --random-seed: {seed} is not in 0..2**32-1 "
            f"(from {resolved.sources.get('random_seed')})"
        )
    # The recorder default comes from the config, not from the decorator.
    if resolved.sources.get("recorder") == "[defaults]" and "recorder" not in project.defaults:
        resolved.sources["recorder"] = "config"
    return resolved
