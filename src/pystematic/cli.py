"""The ``pystematic`` command line: a Typer app whose experiment commands are built on demand.

``run``, ``show-params`` and ``distributed`` are groups with one command per
experiment (``ps.group`` members nest). Their commands are made by one factory,
:func:`experiment_command`, from the declarations, and only the command that is asked
for is built: from the discovery cache, so ``--help``, ``list``, ``show-params`` and
shell completion import no user module and no torch. A ``run`` imports the one
module that defines the experiment. Typer parses; pystematic validates; every user
error becomes one ``error:`` line in :func:`invoke`.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from typer._click import Context as ClickContext
from typer._click import exceptions as click_exceptions
from typer.core import TyperGroup
from typer.models import CommandInfo

from . import interrupts
from ._version import __version__
from .discovery import Discovered, ExperimentInfo, describe_type, discover, discover_for_run
from .errors import DistributedError, ParameterError, PystematicError, UnknownExperimentError
from .errors import did_you_mean as _did_you_mean
from .params import (
    BUILTIN_PARAMETERS,
    Parameter,
    cli_name,
    resolve_parameters,
    to_toml_value,
)
from .project import Project, check_experiment_tables, load_project, project_for_file

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON.")]
CONTEXT_SETTINGS: dict[str, Any] = {
    "help_option_names": ["-h", "--help"],
    # Names are snake_case in Python: --batch_size is --batch-size, run my_exp is my-exp.
    "token_normalize_func": lambda token: token.replace("_", "-"),
}
EXPERIMENT_COMMANDS = {
    "run": "Run an experiment in a new run folder.",
    "show-params": "Show an experiment's parameters, values and their sources.",
    "distributed": "Run an experiment on several ranks (elastic launcher).",
    "sweep": "Run an experiment over a grid or random samples of its parameters.",
}


# ---------------------------------------------------------------- per-invocation state


@dataclass
class CliState:
    """What one invocation knows: where the project is and what it holds (no globals)."""

    argv: list[str] = field(default_factory=list)
    script: Path | None = None
    only: list[ExperimentInfo] | None = None  # exp.cli() / group.cli(): these, no discovery
    raise_errors: bool = False  # exit_on_error=False: main's value and errors come back
    ends_process: bool = False  # the process exits after the command (the console script)
    project_flag: Path | None = None
    _project: Project | None = None
    _found: Discovered | None = None
    _probes: Any = None
    _warned: bool = False

    def project(self) -> Project:
        if self._project is None:
            if self.project_flag is not None:
                self._project = load_project(explicit_root=self.project_flag)
            elif self.only:
                self._project = project_for_file(self.only[0].file)
            else:
                self._project = load_project(script=self.script)
        return self._project

    def discovered(self, *, importing: bool = False, warn: bool = True) -> Discovered:
        """The project's experiments, from the cache when it is valid.

        ``importing``: the command will import user code, so start git and the package
        listing first, to finish in the shadow of that import. ``warn``: name the modules
        that failed to import on stderr (once).
        """
        if self._found is None:
            if self.only is not None:
                self._found = Discovered({i.id: i for i in self.only})
                return self._found
            project = self.project()
            before = self.start_probes if importing else None
            self._found = discover(project, script=self.script, before_import=before)
            if self._found.failures and warn and not self._warned:
                self._warned = True
                for failure in self._found.failures:
                    print(f"warning: {failure.file}: {failure.message}", file=sys.stderr)
        return self._found

    def start_probes(self) -> Any:
        from .start import Probes

        if self._probes is None:
            self._probes = Probes.start(self.project())
        return self._probes

    def imported(self, info: ExperimentInfo) -> ExperimentInfo:
        """*info* with its main function: its module imported for real."""
        if info.main is not None:
            return info
        self.start_probes()
        found = discover_for_run(self.project(), info.id, script=self.script)
        real = found.experiments.get(info.id)
        if real is None or real.main is None:
            raise UnknownExperimentError(
                f"experiment {info.id!r} is gone from {info.file}" + found.failures_note()
            )
        self._found = found
        return real


def _state(ctx: ClickContext) -> CliState:
    root = ctx.find_root()
    state = root.obj
    assert isinstance(state, CliState)
    if state.project_flag is None and root.params.get("project") is not None:
        state.project_flag = Path(root.params["project"])
    return state


# ---------------------------------------------------------------- experiment commands


class ExperimentCommands(TyperGroup):
    """A group with one command per experiment at this level of ``ps.group`` nesting.

    Commands are built when asked for (``get_command``), from the declarations.
    """

    def __init__(self, *, kind: str, prefix: tuple[str, ...] = (), **kwargs: Any) -> None:
        kwargs.setdefault("context_settings", CONTEXT_SETTINGS)
        super().__init__(**kwargs)
        self.kind = kind
        self.prefix = prefix

    def _level(self, ctx: ClickContext) -> tuple[dict[str, ExperimentInfo], dict[str, str]]:
        """(experiments, subgroups with their help) directly at this level, by CLI name."""
        # Each run of a sweep asks git in its own process (jobs.py): no probes here.
        found = _state(ctx).discovered(importing=self.kind not in ("show-params", "sweep"))
        depth = len(self.prefix)
        experiments: dict[str, ExperimentInfo] = {}
        groups: dict[str, str] = {}
        for info in found.experiments.values():
            names = tuple(g[0] for g in info.groups)
            if names[:depth] != self.prefix:
                continue
            if len(names) == depth:
                experiments[cli_name(info.name)] = info
            else:
                groups.setdefault(cli_name(names[depth]), info.groups[depth][1])
        return experiments, groups

    def list_commands(self, ctx: ClickContext) -> list[str]:
        experiments, groups = self._level(ctx)
        return sorted([*experiments, *groups])

    def get_command(self, ctx: ClickContext, name: str) -> Any:
        experiments, groups = self._level(ctx)
        if name in groups:
            return ExperimentCommands(
                kind=self.kind,
                prefix=(*self.prefix, name.replace("-", "_")),
                name=name,
                help=groups[name],
                no_args_is_help=True,
            )
        info = experiments.get(name)
        if info is None:
            return None
        return experiment_command(self.kind, info, _effective_defaults(info, _state(ctx).project()))

    def resolve_command(self, ctx: ClickContext, args: list[str]) -> Any:
        """The command for ``args[0]``; an unknown name is one line with a did-you-mean."""
        if not args or args[0].startswith("-"):
            return super().resolve_command(ctx, args)
        name = ctx.token_normalize_func(args[0]) if ctx.token_normalize_func else args[0]
        command = self.get_command(ctx, name)
        if command is None and not ctx.resilient_parsing:
            known = self.list_commands(ctx)
            hint = _did_you_mean(name, known) or f" (known: {', '.join(known) or 'none'})"
            what = "group member" if self.prefix else "experiment"
            note = _state(ctx).discovered().failures_note()
            raise UnknownExperimentError(f"unknown {what} {args[0]!r}{hint}{note}")
        return (name if command is not None else None), command, args[1:]


def _shown_default(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _completer(values: Sequence[Any]) -> Callable[[str], list[str]]:
    words = [str(v) for v in values]
    return lambda incomplete: [w for w in words if w.startswith(incomplete)]


def _complete_backend(incomplete: str) -> list[str]:
    from .recording import BACKENDS

    return [name for name in sorted(BACKENDS) if name.startswith(incomplete)]


def _option_for(param: Parameter, effective: Any) -> tuple[Any, Any]:
    """(annotation, typer.Option) for a declaration; values stay strings for pystematic."""
    names = [param.option]
    if param.is_flag:
        names = [f"{param.option}/--no-{cli_name(param.name)}"]
        annotation: Any = bool | None
    elif param.type_name == "path":
        annotation = list[Path] | None if param.multiple else Path | None  # completes files
    elif param.multiple:
        annotation = list[str] | None
    else:
        annotation = str | None
    help_text = param.help
    if param.multiple:
        help_text += " [repeatable]"
    if param.choices is not None:
        help_text += f" [choices: {', '.join(str(c) for c in param.choices)}]"
    shown = param.default_help or _shown_default(effective)
    if param.required:
        help_text += " [required]"
    elif param.computed_default and not param.default_help:
        help_text += " [default: computed at run time]"
    elif shown:
        help_text += f" [default: {shown}]"
    completion = None
    if param.choices is not None:
        completion = _completer(param.choices)
    elif param.name == "recorder":
        completion = _complete_backend
    option = typer.Option(
        None,
        *names,
        help=help_text.strip().replace("[", "\\["),  # literal brackets, not rich markup
        show_default=False,
        metavar=None if param.is_flag else param.type_name.upper(),
        rich_help_panel="pystematic" if param.builtin else (param.group or None),
        hidden=param.hidden,
        autocompletion=completion,
    )
    return annotation, option


def _launch_option(flag: str, kind: Any, default: Any, help_text: str) -> tuple[str, Any, Any]:
    name = "launch_" + flag.lstrip("-").replace("-", "_")
    option = typer.Option(default, flag, help=help_text, rich_help_panel="launch")
    return name, kind if default is not None else kind | None, option


LAUNCH_OPTIONS = [
    _launch_option("--gpus", int, None, "GPUs (ranks) per node, nccl."),
    _launch_option("--nproc", int, None, "CPU ranks per node, gloo."),
    _launch_option("--nnodes", int, 1, "Number of nodes."),
    _launch_option("--node-rank", int, None, "This node's rank (static rendezvous)."),
    _launch_option("--master-addr", str, None, "Address of node 0 (static rendezvous)."),
    _launch_option("--master-port", int, None, "Port on node 0 (static rendezvous)."),
    _launch_option("--rdzv-endpoint", str, None, "HOST:PORT of the c10d rendezvous."),
    _launch_option("--rdzv-id", str, None, "Job id shared by all nodes."),
    _launch_option("--max-restarts", int, 0, "Restart the worker group up to K times."),
    _launch_option(
        "--timeout",
        float,
        None,
        "Seconds a collective waits for its peers before the group fails "
        "(default: torch's, 30 min for gloo, 10 min for nccl; env PYSTEMATIC_TIMEOUT).",
    ),
]
JSON_OPTION = ("as_json", bool, typer.Option(False, "--json", help="Print JSON."))
ALL_OPTION = (
    "show_all",
    bool,
    typer.Option(False, "--all", help="Also show the built-in parameters (always in --json)."),
)


# ---- `pystematic sweep` options (the sweep itself is sweep.py's)


def _sweep_option(flag: str, kind: Any, metavar: str, help_text: str) -> tuple[str, Any, Any]:
    name = "launch_" + flag.lstrip("-").replace("-", "_")
    option = typer.Option(None, flag, help=help_text, metavar=metavar, rich_help_panel="sweep")
    return name, kind | None, option


SWEEP_OPTIONS = [
    _sweep_option("--grid", list[str], "NAME=V1,V2", "A run per value; grids multiply."),
    _sweep_option(
        "--sample",
        list[str],
        "NAME=DIST",
        "DIST: uniform(a,b), loguniform(a,b), randint(a,b) or choice(v1,v2,...).",
    ),
    _sweep_option("--trials", int, "N", "Points drawn from the --sample distributions."),
    _sweep_option("--repeat", int, "R", "Runs of each point, each with its own seed (default 1)."),
    _sweep_option("--jobs", int, "J", "Runs at a time (default 1, or the config's sweep.jobs)."),
    _sweep_option("--gpus-per-job", int, "K", "GPUs of each job slot (CUDA_VISIBLE_DEVICES)."),
    _sweep_option("--executor", str, "local|slurm", "Where runs go (default local)."),
    _sweep_option("--slurm-partition", str, "NAME", "SLURM partition."),
    _sweep_option("--slurm-time", str, "TIME", "SLURM time limit: minutes or HH:MM:SS."),
    _sweep_option("--slurm-gpus-per-task", int, "N", "GPUs of each SLURM job."),
    _sweep_option("--slurm-cpus-per-task", int, "N", "CPUs of each SLURM job."),
    _sweep_option("--slurm-array-parallelism", int, "N", "SLURM jobs running at a time."),
    _sweep_option("--sort", str, "METRIC", "Sort the runs table ('-METRIC': descending)."),
    JSON_OPTION,
]


def _sweep_resume(resume: Path | None, jobs: int | None, sort: str | None, as_json: bool) -> Any:
    """``pystematic sweep --resume SWEEP_DIR``: the group's own options, without an experiment."""
    from typer._click.globals import get_current_context

    from .sweep import resume_command

    ctx = get_current_context()
    if ctx.invoked_subcommand is not None:
        if resume is not None or jobs is not None or sort is not None or as_json:
            raise ParameterError(
                "--resume, --jobs, --sort and --json before the experiment name continue a "
                "sweep; to start one, give them after the name"
            )
        return None
    if resume is None:
        raise ParameterError("give an experiment to sweep, or --resume SWEEP_DIR")
    return resume_command(resume, {"jobs": jobs}, sort=sort, as_json=as_json)


def _sweep_group_options() -> dict[str, Any]:
    from typer.core import TyperOption

    def option(decls: list[str], kind: Any, help_text: str, **kw: Any) -> Any:
        return TyperOption(param_decls=decls, type=kind, help=help_text, **kw)

    return {
        "invoke_without_command": True,
        "callback": _sweep_resume,
        "params": [
            option(["--resume", "resume"], Path, "Continue this sweep.", metavar="SWEEP_DIR"),
            option(["--jobs", "jobs"], int, "Runs at a time (resumed sweep).", metavar="J"),
            option(["--sort", "sort"], str, "Sort the runs table.", metavar="METRIC"),
            option(["--json", "as_json"], bool, "Print JSON.", is_flag=True, default=False),
        ],
    }


def _effective_defaults(info: ExperimentInfo, project: Project) -> dict[str, Any]:
    """What a run would get without flags (config and environment included), for help."""
    try:
        resolved = resolve_parameters(
            info.id,
            [*info.parameters, *BUILTIN_PARAMETERS],
            info.defaults,
            project,
            {},
            compute=False,
        )
        # Custom parse callables show their input string ("2x3"), not the parsed value.
        return {**resolved.values, **resolved.raw}
    except PystematicError:
        return {p.name: p.default for p in info.parameters}


def _given(kwargs: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The values the user typed (Typer reports the rest as None or empty)."""
    out: dict[str, Any] = {}
    for name in names:
        value = kwargs.get(name)
        if value is None or (isinstance(value, (list, tuple)) and not value):
            continue
        out[name] = list(value) if isinstance(value, (list, tuple)) else value
    if "output_dir" in out:
        out["output_dir"] = str(Path(out["output_dir"]).resolve())
    return out


def experiment_command(kind: str, info: ExperimentInfo, effective: dict[str, Any]) -> Any:
    """The click command ``kind`` (run, show-params, distributed) of one experiment.

    ``effective`` holds the values a run would get without flags, shown as defaults.
    """
    parameters = [*info.parameters, *BUILTIN_PARAMETERS]
    extra: list[tuple[str, Any, Any]] = []
    if kind == "distributed":
        extra = LAUNCH_OPTIONS
        launch_names = {name.removeprefix("launch_") for name, _, _ in LAUNCH_OPTIONS}
        clash = sorted(launch_names & {p.name for p in info.parameters})
        if clash:
            raise DistributedError(
                f"parameter --{cli_name(clash[0])} of {info.id} clashes with the "
                f"`distributed` option of that name; rename the parameter"
            )
    elif kind == "show-params":
        extra = [JSON_OPTION, ALL_OPTION]
    elif kind == "sweep":
        extra = SWEEP_OPTIONS
        names = {name.removeprefix("launch_") for name, _, _ in SWEEP_OPTIONS}
        clash = sorted(names & {p.name for p in info.parameters})
        if clash:
            raise ParameterError(
                f"parameter --{cli_name(clash[0])} of {info.id} clashes with the "
                f"`sweep` option of that name; rename the parameter"
            )
    helps = {
        "run": info.help,
        "show-params": f"Show the parameters of {info.id}; flags preview a run's values.",
        "distributed": f"Run {info.id} on several ranks through torch's elastic launcher.",
        "sweep": f"Run {info.id} over a grid or random samples; other flags fix every run.",
    }

    def command(ctx: ClickContext, **kwargs: Any) -> Any:
        state = _state(ctx)
        names = {p.name for p in parameters}
        values = _given(kwargs, list(names))
        # The command's own options (launch options, --json, --all), without their prefix.
        options = {k.removeprefix("launch_"): v for k, v in kwargs.items() if k not in names}
        return HANDLERS[kind](state, info, values, options, bool(kwargs.get("as_json")))

    sig_params = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=ClickContext)
    ]
    annotations: dict[str, Any] = {"ctx": ClickContext}

    def add(name: str, annotation: Any, option: Any) -> None:
        sig_params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option))
        annotations[name] = annotation

    for param in parameters:
        add(param.name, *_option_for(param, effective.get(param.name)))
    for name, annotation, option in extra:
        add(name, annotation, option)
    command.__signature__ = inspect.Signature(sig_params)  # type: ignore[attr-defined]
    command.__annotations__ = annotations
    return typer.main.get_command_from_info(
        CommandInfo(
            name=cli_name(info.name),
            callback=command,
            help=helps[kind],
            context_settings=CONTEXT_SETTINGS,
        ),
        pretty_exceptions_short=True,
        rich_markup_mode=typer.core.DEFAULT_MARKUP_MODE,
    )


# ---------------------------------------------------------------- handlers


def _resolve(state: CliState, info: ExperimentInfo, values: dict[str, Any]) -> Any:
    project = state.project()
    if state.only is None:
        check_experiment_tables(project, list(state.discovered().experiments))
    params = [*info.parameters, *BUILTIN_PARAMETERS]
    return resolve_parameters(info.id, params, info.defaults, project, values)


def _handle_run(
    state: CliState,
    info: ExperimentInfo,
    values: dict[str, Any],
    options: dict[str, Any],
    as_json: bool,
) -> Any:
    from .runner import run_experiment

    info = state.imported(info)
    resolved = _resolve(state, info, values)
    outcome = run_experiment(
        info,
        state.project(),
        resolved.values,
        resolved.snapshot(),
        state.argv,
        probes=state.start_probes(),
        ends_process=state.ends_process,
    )
    if state.raise_errors:
        if outcome.error is not None:
            raise outcome.error
        return outcome.value
    return outcome.exit_code


def _handle_distributed(
    state: CliState,
    info: ExperimentInfo,
    values: dict[str, Any],
    options: dict[str, Any],
    as_json: bool,
) -> int:
    from .globalstate import frozen_heap
    from .launch import launch_distributed

    info = state.imported(info)
    resolved = _resolve(state, info, values)
    # The launcher holds torch too: its exit need not walk torch's objects (as a run's).
    with frozen_heap(ends_process=state.ends_process):
        return launch_distributed(
            info, state.project(), resolved.values, resolved.snapshot(), state.argv, options
        )


def _handle_show_params(
    state: CliState,
    info: ExperimentInfo,
    values: dict[str, Any],
    options: dict[str, Any],
    as_json: bool,
) -> int:
    custom = {p.name for p in info.parameters if p.is_custom}
    if info.computed_defaults or custom & set(values):
        info = state.imported(info)  # the real callables decide these values
    resolved = _resolve(state, info, values)
    rows = []
    for p in [*info.parameters, *BUILTIN_PARAMETERS]:
        if p.hidden:
            continue
        # Custom parse callables show their input string, as parameters.toml keeps it.
        value = resolved.raw.get(p.name, resolved.values.get(p.name))
        rows.append(
            {
                "name": p.name,
                "type": describe_type(p),
                "default": to_toml_value(value) if value is not None else None,
                "source": resolved.sources.get(p.name, "decorator"),
                "choices": [to_toml_value(c) for c in p.choices] if p.choices else None,
                "required": p.required,
                "help": p.help,
                "builtin": p.builtin,
            }
        )
    if as_json:
        print(json.dumps(rows, indent=1))
    else:
        _print_params_table(info, rows, builtins=bool(options.get("show_all")))
    return 0


def _handle_sweep(
    state: CliState,
    info: ExperimentInfo,
    values: dict[str, Any],
    options: dict[str, Any],
    as_json: bool,
) -> int:
    from .sweep import sweep_command

    if info.computed_defaults or any(p.is_custom for p in info.parameters):
        info = state.imported(info)  # the real callables decide the values
    if state.only is None:
        check_experiment_tables(state.project(), list(state.discovered().experiments))
    return sweep_command(info, state.project(), values, options, state.argv, as_json=as_json)


HANDLERS: dict[str, Callable[..., Any]] = {
    "run": _handle_run,
    "show-params": _handle_show_params,
    "distributed": _handle_distributed,
    "sweep": _handle_sweep,
}


def _print_params_table(
    info: ExperimentInfo, rows: list[dict[str, Any]], *, builtins: bool
) -> None:
    """The experiment's parameters, one line each where the help fits (help wraps at
    words); the built-ins in a table of their own with ``--all``, else named in a line."""
    console = _console()
    own = [r for r in rows if not r["builtin"]]
    console.print(_params_table(f"{info.id} parameters", own))
    if builtins:
        console.print(_params_table("built-in parameters", [r for r in rows if r["builtin"]]))
    else:
        names = ", ".join("--" + cli_name(r["name"]) for r in rows if r["builtin"])
        console.print(f"built-in: {names} (--all shows them)", style="dim", highlight=False)


def _params_table(title: str, rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("value", no_wrap=True, overflow="ellipsis", max_width=32)
    table.add_column("source", no_wrap=True)
    table.add_column("help", ratio=1, min_width=16)
    for row in rows:
        notes = []
        if row["choices"]:
            notes.append("choices: " + _shown_default(row["choices"]))
        if row["required"]:
            notes.append("required")
        help_text = " ".join([row["help"], *(f"[{n}]" for n in notes)]).strip()
        table.add_row(
            *(
                Text(cell)
                for cell in (
                    "--" + cli_name(row["name"]),
                    row["type"],
                    _shown_default(row["default"]),
                    row["source"],
                    help_text,
                )
            )
        )
    return table


def _console() -> Any:
    """A rich console: the terminal's width, or on a pipe the table's own (no colours)."""
    import os

    from rich.console import Console

    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=200, no_color=True)


# ---------------------------------------------------------------- other commands


def list_command(
    ctx: typer.Context,
    as_json: JsonFlag = False,
) -> int:
    """List the experiments of the project."""
    state = _state(ctx)
    project = state.project()
    found = state.discovered(warn=False)
    rows = [
        {
            "name": i.id,
            "module": i.module,
            "file": _rel(i.file, project.root),
            "description": i.description,
        }
        for i in found.experiments.values()
    ]
    if as_json:
        print(json.dumps(rows, indent=1))
    else:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        table = Table()
        for column in ("name", "module", "description"):
            table.add_column(column)
        for row in rows:
            table.add_row(escape(row["name"]), escape(row["module"]), escape(row["description"]))
        Console().print(table)
    for failure in found.failures:
        print(f"error: {failure.file}: {failure.message}", file=sys.stderr)
    return 1 if found.failures else 0


def _rel(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return path


def runs_command(
    ctx: typer.Context,
    experiment: Annotated[
        str | None, typer.Argument(help="Only runs of this experiment or group.")
    ] = None,
    sort: Annotated[
        str | None,
        typer.Option(help="Sort by a metric or parameter ('-' first for descending)."),
    ] = None,
    filters: Annotated[
        list[str] | None,
        typer.Option("--filter", help="key=value on params, tags, status (repeatable)."),
    ] = None,
    last: Annotated[int | None, typer.Option(help="Only the newest N runs, then sorted.")] = None,
    columns: Annotated[
        str | None,
        typer.Option(
            help="The columns to show, comma-separated: parameters, metrics, or "
            "status, duration, start, end, world_size, tags, sweep, error, path."
        ),
    ] = None,
    sweep: Annotated[str | None, typer.Option(help="Only the runs of this sweep.")] = None,
    output_dir: Annotated[
        Path | None, typer.Option(help="Where the runs are (default: config).")
    ] = None,
    as_json: JsonFlag = False,
) -> int:
    """Past runs: status, duration, the parameters that differ, the last metrics."""
    from . import runs as runs_module
    from .runs_table import runs_table

    state = _state(ctx)
    folder = output_dir.resolve() if output_dir else state.project().output_dir
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", runs_module.CorruptRunWarning)
        records = runs_module.load_runs(folder, experiment)
        if experiment is not None and not records and "-" in experiment:
            experiment = experiment.replace("-", "_")  # the CLI's spelling of an id
            records = runs_module.load_runs(folder, experiment)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    if experiment is not None and not records:
        _check_experiment(experiment, folder, None if output_dir else state)
    wanted = runs_module.parse_filters(filters or [])
    if sweep is not None:
        _check_sweep(sweep, folder, records)
        wanted.append(("sweep", sweep))
    selected = runs_module.select_runs(records, filters=wanted, sort=sort, last=last)
    picked = None
    if columns is not None:
        picked = [name.strip() for name in columns.split(",") if name.strip()]
        if not picked:
            raise ParameterError(f"--columns {columns!r}: expected names, e.g. lr,loss")
    view = runs_table(selected, columns=picked, sort=sort)  # checks --columns
    if as_json:
        print(json.dumps(_finite(selected), indent=1, default=str))
        return 0
    from rich.console import Console

    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        console = Console()
    else:  # a pipe or a file: every column, whatever the width, and no colour codes
        console = Console(width=max(view.natural_width, 80))
    console.print(view)
    return 0


def _check_experiment(experiment: str, folder: Path, state: CliState | None) -> None:
    """An experiment with no runs must exist: in the output dir, else in the project."""
    from .runs import experiment_ids, experiment_matches

    known = experiment_ids(folder)
    if any(experiment_matches(name, experiment) for name in known):
        return
    note = ""
    if state is not None:  # the project's own output dir: ask its experiments
        found = state.discovered(warn=False)
        ids = list(found.experiments)
        if any(experiment_matches(name, experiment) for name in ids):
            return  # declared, not run yet
        known += ids
        note = found.failures_note()
    groups = {name.rsplit(".", 1)[0] for name in known if "." in name}
    raise UnknownExperimentError(
        f"unknown experiment {experiment!r}: no runs under {folder}"
        + ("" if state is None else " and no such experiment in the project")
        + _did_you_mean(experiment, [*known, *groups])
        + note
    )


def _check_sweep(sweep: str, folder: Path, records: Sequence[dict[str, Any]]) -> None:
    """``--sweep ID`` must name a sweep: one that made a listed run, or has a sweep folder."""
    from glob import escape as glob_escape

    known = {r["sweep"] for r in records if r["sweep"] is not None}
    if sweep in known or any(folder.glob(f"*/sweeps/{glob_escape(sweep)}")):
        return
    known.update(p.name for p in folder.glob("*/sweeps/*") if p.is_dir())
    raise ParameterError(
        f"--sweep {sweep}: no such sweep under {folder}" + _did_you_mean(sweep, known)
    )


def diff_command(
    ctx: typer.Context,
    run_a: Annotated[str, typer.Argument(help="A run id or run dir.", show_default=False)],
    run_b: Annotated[str, typer.Argument(help="Another run id or run dir.", show_default=False)],
    output_dir: Annotated[
        Path | None, typer.Option(help="Where run ids are looked up (default: config).")
    ] = None,
    as_json: JsonFlag = False,
) -> int:
    """Why two runs differ: parameters, seeds, code, packages, environment, metrics.

    Exit 0 when their metrics are identical bit for bit (time aside), 1 when not.
    """
    from . import diff as diff_module

    def folder() -> Path:
        return output_dir.resolve() if output_dir else _state(ctx).project().output_dir

    path_a = diff_module.find_run(run_a, folder)
    path_b = diff_module.find_run(run_b, folder)
    result = diff_module.diff_runs(path_a, path_b)
    if as_json:
        print(json.dumps(_finite(result.to_json()), indent=1, default=str))
    else:
        diff_module.print_diff(result)
    return 0 if result.metrics.identical else 1


def reproduce_command(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument(help="A run id or run dir.", show_default=False)],
    flags: Annotated[
        list[str] | None,
        typer.Argument(
            help="After --: parameter flags that override the run's (a rerun with changes).",
            show_default=False,
        ),
    ] = None,
    verify: Annotated[
        bool | None,
        typer.Option(
            "--verify/--no-verify",
            help="Compare metrics and seeds with the run's (default: unless parameters changed).",
            show_default=False,
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            min=1, metavar="N", help="Stop after N iterations of the outermost context.loop."
        ),
    ] = None,
    keep_worktree: Annotated[
        bool,
        typer.Option("--keep-worktree", help="Keep the git worktree the rerun ran from."),
    ] = False,
    allow_package_drift: Annotated[
        bool,
        typer.Option(
            "--allow-package-drift", help="Rerun even with another Python or torch version."
        ),
    ] = False,
    output_dir: Annotated[
        Path | None,
        typer.Option(help="Where run ids are looked up and the rerun goes (default: config)."),
    ] = None,
) -> int:
    """Rerun a past run from its own code (commit + git.diff) and compare, bit for bit.

    Exit 0 when the rerun reproduces the run, 1 when its metrics or seeds differ.
    """
    from .reproduce import Options, reproduce

    options = Options(
        verify=verify,
        steps=steps,
        keep_worktree=keep_worktree,
        allow_package_drift=allow_package_drift,
        flags=tuple(flags or ()),
    )
    folder = output_dir.resolve() if output_dir else None
    return reproduce(run, _state(ctx).project(), options, folder)


def _finite(value: Any) -> Any:
    """NaN and infinities become null: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# ---------------------------------------------------------------- the app


def _version(value: bool) -> None:
    if value:
        print(f"pystematic {__version__}")
        raise typer.Exit()


class RootCommands(TyperGroup):
    """The ``pystematic`` group: a command is made when it is asked for, so a call
    builds only the one it runs (Typer reads a function's annotations to build it)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.makers: dict[str, Callable[[], Any]] = {}

    def list_commands(self, ctx: ClickContext) -> list[str]:
        return [*self.makers, *(n for n in self.commands if n not in self.makers)]

    def get_command(self, ctx: ClickContext, name: str) -> Any:
        if name not in self.commands and name in self.makers:
            self.commands[name] = self.makers[name]()
        return self.commands.get(name)


def _typer_command(name: str, function: Callable[..., Any]) -> Callable[[], Any]:
    def make() -> Any:
        return typer.main.get_command_from_info(
            CommandInfo(name=name, callback=function),
            pretty_exceptions_short=True,
            rich_markup_mode=typer.core.DEFAULT_MARKUP_MODE,
        )

    return make


def _experiment_group(kind: str) -> Callable[[], Any]:
    extra = _sweep_group_options if kind == "sweep" else dict
    return lambda: ExperimentCommands(
        kind=kind, name=kind, help=EXPERIMENT_COMMANDS[kind], no_args_is_help=True, **extra()
    )


def build_app() -> Any:
    """The whole CLI as a click group; commands are built only when asked for."""
    app = typer.Typer(
        name="pystematic",
        help="Set up, run and keep track of reproducible PyTorch experiments.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=True,
        context_settings=CONTEXT_SETTINGS,
        cls=RootCommands,
    )

    @app.callback()
    def root(
        project: Annotated[
            Path | None,
            typer.Option("-C", "--project", help="Project folder (default: found from here up)."),
        ] = None,
        version: Annotated[
            bool,
            typer.Option(
                "--version", callback=_version, is_eager=True, help="Show the version and exit."
            ),
        ] = False,
    ) -> None:
        """Set up, run and keep track of reproducible PyTorch experiments."""

    group = typer.main.get_command(app)
    assert isinstance(group, RootCommands)
    group.makers = {
        "list": _typer_command("list", list_command),
        "run": _experiment_group("run"),
        "show-params": _experiment_group("show-params"),
        "distributed": _experiment_group("distributed"),
        "sweep": _experiment_group("sweep"),
        "runs": _typer_command("runs", runs_command),
        "diff": _typer_command("diff", diff_command),
        "reproduce": _typer_command("reproduce", reproduce_command),
    }
    return group


def invoke(command: Any, args: Sequence[str], state: CliState, prog_name: str) -> Any:
    """Run a click command; the one place where errors become one line and an exit code.

    With ``state.raise_errors`` user errors are raised as PystematicError instead, and
    the command's own result (main's return value) is returned.
    """
    try:
        result = command.main(
            args=list(args), prog_name=prog_name, standalone_mode=False, obj=state
        )
    except PystematicError as e:
        if state.raise_errors:
            raise
        print(f"error: {e.format_message()}", file=sys.stderr)
        return e.exit_code
    except click_exceptions.NoArgsIsHelpError as e:
        if state.raise_errors:
            raise ParameterError(_one_line(e.format_message())) from None
        e.show()
        return e.exit_code
    except click_exceptions.ClickException as e:
        if state.raise_errors:
            raise ParameterError(_one_line(e.format_message())) from None
        print(f"error: {_one_line(e.format_message())}", file=sys.stderr)
        return e.exit_code
    except typer.Abort:
        if state.raise_errors:
            raise KeyboardInterrupt from None
        return interrupts.EXIT_CODES[signal.SIGINT]
    except interrupts.Terminated:
        if state.raise_errors:
            raise
        return interrupts.EXIT_CODES[signal.SIGTERM]
    if state.raise_errors:
        return result
    return result if isinstance(result, int) else 0


def _one_line(text: str) -> str:
    return " ".join(text.split())


def run_cli(
    argv: Sequence[str] | None = None,
    *,
    script: Path | None = None,
    prog_name: str = "pystematic",
    ends_process: bool = False,
) -> int:
    """Run the CLI and return its exit code; user errors become one line on stderr.
    ``ends_process``: the caller exits right after (the console script does)."""
    args = list(sys.argv[1:] if argv is None else argv)
    state = CliState(argv=args, script=script, ends_process=ends_process)
    code: int = invoke(build_app(), args, state, prog_name)
    return code


def main() -> None:
    """Console script entry point."""
    interrupts.install()
    code = run_cli(ends_process=True)
    _exit(code)


#: After a stop (130/143), how long the interpreter's exit (atexit handlers, finalizers)
#: may take before the process ends without it.
EXIT_GRACE_S = 3.0


def _exit(code: int) -> None:
    """End the process; threads a run left behind do not keep it alive, nor, after a stop,
    an exit-time finalizer that waits for a lock the stop's exception left held (an
    exception raised inside ``with lock:`` is a known CPython hazard; multiprocessing's
    queues then wait forever)."""
    import threading

    if any(t.daemon is False and t is not threading.main_thread() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if code in interrupts.EXIT_CODES.values():
        timer = threading.Timer(EXIT_GRACE_S, os._exit, (code,))
        timer.daemon = True
        timer.start()
    sys.exit(code)


def global_entrypoint(argv: Sequence[str] | None = None, exit_on_error: bool = True) -> Any:
    """``ps.global_entrypoint()``: the pystematic CLI for the calling script's project."""
    main_module = sys.modules.get("__main__")
    file = getattr(main_module, "__file__", None)
    script = Path(file).resolve() if file else None
    args = list(sys.argv[1:] if argv is None else argv)
    state = CliState(
        argv=args, script=script, raise_errors=not exit_on_error, ends_process=exit_on_error
    )
    if exit_on_error:  # the script's command line: the process is ours
        interrupts.install()
    result = invoke(build_app(), args, state, Path(sys.argv[0]).name)
    if exit_on_error:
        _exit(result)
    return result


def experiments_cli(
    infos: list[ExperimentInfo],
    argv: Sequence[str] | None,
    exit_on_error: bool,
    *,
    group: tuple[str, ...] | None = None,
) -> Any:
    """``exp.cli()`` (one experiment: the script is its command) and ``group.cli()``
    (``group`` is the group's path: its members are the script's commands)."""
    args = list(sys.argv[1:] if argv is None else argv)
    state = CliState(
        argv=args, only=infos, raise_errors=not exit_on_error, ends_process=exit_on_error
    )
    if exit_on_error:
        interrupts.install()
    if group is None:
        command = experiment_command(
            "run", infos[0], _effective_defaults(infos[0], state.project())
        )
    else:
        command = ExperimentCommands(kind="run", prefix=group, no_args_is_help=True)
    result = invoke(command, args, state, Path(sys.argv[0]).name)
    if exit_on_error:
        _exit(result)
    return result
