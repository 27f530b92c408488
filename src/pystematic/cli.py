"""The ``pystematic`` command line, built with Typer from discovered declarations.

Only the commands that need experiments (``run``, ``show-params``,
``distributed``, completion) discover them, and only ``run`` and
``distributed`` import user code for sure; ``--help``, ``list`` and
``show-params`` read the discovery cache when nothing changed.
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from typer._click import exceptions as click_exceptions
from typer.core import TyperGroup

from ._version import __version__
from .discovery import Discovered, ExperimentInfo, describe_type, discover
from .errors import PystematicError, UnknownExperimentError
from .params import BUILTIN_PARAMETERS, Parameter, cli_name, to_toml_value
from .project import Project, load_project

EXPERIMENT_COMMANDS = ("run", "show-params", "distributed")
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON.")]


class ExperimentGroup(TyperGroup):
    """A group of experiment commands: unknown names get a one-line "did you mean"."""

    failures_note: str = ""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and not args[0].startswith("-"):
            name = args[0].replace("_", "-")
            if name in self.commands:
                return super().resolve_command(ctx, [name, *args[1:]])
            close = difflib.get_close_matches(name, list(self.commands), n=3)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            known = "" if close else f" (known: {', '.join(self.commands) or 'none'})"
            raise UnknownExperimentError(
                f"unknown experiment {args[0]!r}{hint}{known}{self.failures_note}"
            )
        return super().resolve_command(ctx, args)


# ---------------------------------------------------------------- options from declarations


def _shown_default(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _option_for(param: Parameter, effective: Any) -> tuple[Any, Any]:
    """(annotation, typer.Option) for a declaration; values stay strings for pystematic."""
    names = [param.option]
    if param.is_flag:
        names = [f"{param.option}/--no-{cli_name(param.name)}"]
        annotation: Any = bool | None
    elif param.multiple:
        annotation = list[str] | None
    else:
        annotation = str | None
    help_text = param.help
    if param.multiple:
        help_text += " [repeatable]"
    if param.choices is not None:
        help_text += f" [choices: {', '.join(str(c) for c in param.choices)}]"
    shown = _shown_default(effective)
    if param.required:
        help_text += " [required]"
    elif shown:
        help_text += f" [default: {shown}]"
    option = typer.Option(
        None,
        *names,
        help=help_text.strip().replace("[", "\\["),  # literal brackets, not rich markup
        show_default=False,
        metavar=None if param.is_flag else param.type_name.upper(),
        rich_help_panel="pystematic" if param.builtin else (param.group or None),
    )
    return annotation, option


def _command_function(
    parameters: Sequence[Parameter],
    effective: dict[str, Any],
    extra: Sequence[tuple[str, Any, Any]],
    handler: Callable[[dict[str, Any]], int],
) -> Callable[..., int]:
    """A function whose signature Typer reads: one option per parameter, plus *extra*."""
    sig_params = []
    annotations: dict[str, Any] = {}
    for param in parameters:
        annotation, option = _option_for(param, effective.get(param.name))
        sig_params.append(
            inspect.Parameter(param.name, inspect.Parameter.KEYWORD_ONLY, default=option)
        )
        annotations[param.name] = annotation
    for name, annotation, option in extra:
        sig_params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option))
        annotations[name] = annotation

    def command(**kwargs: Any) -> int:
        return handler(kwargs)

    command.__signature__ = inspect.Signature(sig_params)  # type: ignore[attr-defined]
    command.__annotations__ = {**annotations, "return": int}
    return command


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


def _effective_defaults(info: ExperimentInfo, project: Project) -> dict[str, Any]:
    from .runner import resolve_parameters

    try:
        resolved = resolve_parameters(
            info.id, [*info.parameters, *BUILTIN_PARAMETERS], info.defaults, project, {}
        )
        # Custom parse callables show their input string ("2x3"), not the parsed value.
        return {**resolved.values, **resolved.raw}
    except PystematicError:
        return {p.name: p.default for p in info.parameters}


def _add_experiment_commands(
    group: typer.Typer,
    found: Discovered,
    project: Project,
    make: Callable[[ExperimentInfo], tuple[Callable[..., int], str]],
) -> None:
    """One command per experiment, nested under a sub-group for ``ps.group`` members."""
    subgroups: dict[str, typer.Typer] = {}
    for info in found.experiments.values():
        target = group
        if info.group:
            if info.group not in subgroups:
                subgroups[info.group] = typer.Typer(cls=ExperimentGroup, help=info.group_help)
                group.add_typer(subgroups[info.group], name=cli_name(info.group))
            target = subgroups[info.group]
        fn, help_text = make(info)
        target.command(name=cli_name(info.name), help=help_text)(fn)


# ---------------------------------------------------------------- command handlers


def _run_handler(project: Project, argv: list[str]) -> Callable[[ExperimentInfo], Any]:
    def make(info: ExperimentInfo) -> tuple[Callable[..., int], str]:
        params = [*info.parameters, *BUILTIN_PARAMETERS]

        def handle(kwargs: dict[str, Any]) -> int:
            from .runner import execute, resolve_parameters

            assert info.experiment is not None
            values = _given(kwargs, [p.name for p in params])
            resolved = resolve_parameters(info.id, params, info.defaults, project, values)
            outcome = execute(info.experiment, resolved.values, resolved.snapshot(), project, argv)
            return outcome.exit_code

        return _command_function(params, _effective_defaults(info, project), [], handle), info.help

    return make


def _show_params_handler(project: Project) -> Callable[[ExperimentInfo], Any]:
    def make(info: ExperimentInfo) -> tuple[Callable[..., int], str]:
        params = [*info.parameters, *BUILTIN_PARAMETERS]

        def handle(kwargs: dict[str, Any]) -> int:
            from .runner import resolve_parameters

            values = _given(kwargs, [p.name for p in params])
            resolved = resolve_parameters(info.id, params, info.defaults, project, values)
            rows = []
            for p in params:
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
            if kwargs.get("as_json"):
                print(json.dumps(rows, indent=1))
            else:
                _print_params_table(info, rows)
            return 0

        json_opt = ("as_json", bool, typer.Option(False, "--json", help="Print JSON."))
        fn = _command_function(params, _effective_defaults(info, project), [json_opt], handle)
        return fn, f"Show the parameters of {info.id}; flags preview a run's values."

    return make


def _print_params_table(info: ExperimentInfo, rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{escape(info.id)} parameters", title_justify="left")
    for column in ("name", "type", "default", "source", "choices", "help"):
        table.add_column(column, overflow="fold")
    for row in rows:
        cells = (
            cli_name(row["name"]),
            row["type"],
            _shown_default(row["default"]) + (" (required)" if row["required"] else ""),
            row["source"],
            _shown_default(row["choices"]),
            row["help"],
        )
        table.add_row(*(escape(c) for c in cells), style="dim" if row["builtin"] else None)
    Console().print(table)


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
]


def _distributed_handler(project: Project, argv: list[str]) -> Callable[[ExperimentInfo], Any]:
    def make(info: ExperimentInfo) -> tuple[Callable[..., int], str]:
        params = [*info.parameters, *BUILTIN_PARAMETERS]

        def handle(kwargs: dict[str, Any]) -> int:
            from .runner import launch_distributed, resolve_parameters

            launch = {
                k.removeprefix("launch_"): v for k, v in kwargs.items() if k.startswith("launch_")
            }
            values = _given(kwargs, [p.name for p in params])
            resolved = resolve_parameters(info.id, params, info.defaults, project, values)
            assert info.experiment is not None
            return launch_distributed(info.experiment, resolved, project, argv, launch)

        fn = _command_function(params, _effective_defaults(info, project), LAUNCH_OPTIONS, handle)
        return fn, f"Run {info.id} on several ranks through torch's elastic launcher."

    return make


# ---------------------------------------------------------------- the app


def _list_command(project_loader: Callable[[], Project], script: Path | None) -> Callable[..., int]:
    def list_experiments(as_json: JsonFlag = False) -> int:
        """List the experiments of the project."""
        project = project_loader()
        found = discover(project, script=script)
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
                table.add_row(
                    escape(row["name"]), escape(row["module"]), escape(row["description"])
                )
            Console().print(table)
        for failure in found.failures:
            print(f"error: {failure.file}: {failure.message}", file=sys.stderr)
        return 1 if found.failures else 0

    return list_experiments


def _rel(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return path


def _runs_command(project_loader: Callable[[], Project]) -> Callable[..., int]:
    def runs(
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
        last: Annotated[
            int | None, typer.Option(help="Only the newest N runs, then sorted.")
        ] = None,
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
        from .errors import ParameterError

        folder = output_dir.resolve() if output_dir else project_loader().output_dir
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", runs_module.CorruptRunWarning)
            records = runs_module.load_runs(folder, experiment)
            if experiment is not None and not records and "-" in experiment:
                experiment = experiment.replace("-", "_")  # the CLI's spelling of an id
                records = runs_module.load_runs(folder, experiment)
        for warning in caught:
            print(f"warning: {warning.message}", file=sys.stderr)
        if experiment is not None and not records:
            _check_experiment(experiment, folder, None if output_dir else project_loader)
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
        from .runs_table import runs_table

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

    return runs


def _check_experiment(
    experiment: str, folder: Path, project_loader: Callable[[], Project] | None
) -> None:
    """An experiment with no runs must exist: in the output dir, else in the project."""
    from .runs import did_you_mean, experiment_ids, experiment_matches

    known = experiment_ids(folder)
    if any(experiment_matches(name, experiment) for name in known):
        return
    note = ""
    if project_loader is not None:  # the project's own output dir: ask its experiments
        found = discover(project_loader())
        ids = [info.id for info in found.experiments.values()]
        if any(experiment_matches(name, experiment) for name in ids):
            return  # declared, not run yet
        known += ids
        if found.failures:
            note = "; modules that failed to import: " + ", ".join(
                f"{f.file} ({f.message})" for f in found.failures
            )
    groups = {name.rsplit(".", 1)[0] for name in known if "." in name}
    raise UnknownExperimentError(
        f"unknown experiment {experiment!r}: no runs under {folder}"
        + ("" if project_loader is None else " and no such experiment in the project")
        + did_you_mean(experiment, [*known, *groups])
        + note
    )


def _check_sweep(sweep: str, folder: Path, records: Sequence[dict[str, Any]]) -> None:
    """``--sweep ID`` must name a sweep: one that made a listed run, or has a sweep folder."""
    from glob import escape as glob_escape

    from .errors import ParameterError
    from .runs import did_you_mean

    known = {r["sweep"] for r in records if r["sweep"] is not None}
    if sweep in known or any(folder.glob(f"*/sweeps/{glob_escape(sweep)}")):
        return
    known.update(p.name for p in folder.glob("*/sweeps/*") if p.is_dir())
    raise ParameterError(
        f"--sweep {sweep}: no such sweep under {folder}" + did_you_mean(sweep, known)
    )


def _diff_command(project_loader: Callable[[], Project]) -> Callable[..., int]:
    def diff(
        run_a: Annotated[str, typer.Argument(help="A run id or run dir.", show_default=False)],
        run_b: Annotated[
            str, typer.Argument(help="Another run id or run dir.", show_default=False)
        ],
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
            return output_dir.resolve() if output_dir else project_loader().output_dir

        path_a = diff_module.find_run(run_a, folder)
        path_b = diff_module.find_run(run_b, folder)
        result = diff_module.diff_runs(path_a, path_b)
        if as_json:
            print(json.dumps(_finite(result.to_json()), indent=1, default=str))
        else:
            diff_module.print_diff(result)
        return 0 if result.metrics.identical else 1

    return diff


def _finite(value: Any) -> Any:
    """NaN and infinities become null: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _command_word(argv: Sequence[str]) -> str | None:
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("-C", "--project"):
            skip = True
            continue
        if arg.startswith("-"):
            continue
        return arg
    return None


def _project_flag(argv: Sequence[str]) -> Path | None:
    for i, arg in enumerate(argv):
        if arg in ("-C", "--project") and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--project="):
            return Path(arg.split("=", 1)[1])
    return None


def _needs_import(argv: Sequence[str], command: str) -> bool:
    """show-params with value flags is a dry run: custom parse callables must be real."""
    if command in ("run", "distributed"):
        return True
    if command != "show-params":
        return False
    if command not in argv:
        return False
    after = list(argv[argv.index(command) + 1 :])
    return any(a.startswith("--") and a not in ("--json", "--help") for a in after)


def version_callback(value: bool) -> None:
    if value:
        print(f"pystematic {__version__}")
        raise typer.Exit()


def build_app(argv: Sequence[str], *, script: Path | None = None) -> typer.Typer:
    explicit = _project_flag(argv)
    cached: list[Project] = []

    def project_loader() -> Project:
        if not cached:
            cached.append(load_project(explicit_root=explicit, script=script))
        return cached[0]

    app = typer.Typer(
        name="pystematic",
        help="Set up, run and keep track of reproducible PyTorch experiments.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=True,
    )

    @app.callback()
    def root(
        project: Annotated[
            Path | None,
            typer.Option("-C", "--project", help="Project folder (default: found from here up)."),
        ] = None,
        version: Annotated[
            bool,
            typer.Option(callback=version_callback, is_eager=True, help="Show the version."),
        ] = False,
    ) -> None:
        """Set up, run and keep track of reproducible PyTorch experiments."""

    app.command("list")(_list_command(project_loader, script))
    app.command("runs")(_runs_command(project_loader))
    app.command("diff")(_diff_command(project_loader))

    command = _command_word(argv)
    completing = any(k.endswith("_COMPLETE") for k in os.environ if k.startswith("_"))
    wanted = EXPERIMENT_COMMANDS if completing else (command,)
    for name in EXPERIMENT_COMMANDS:
        group = typer.Typer(cls=ExperimentGroup, no_args_is_help=True)
        help_text = {
            "run": "Run an experiment in a new run folder.",
            "show-params": "Show an experiment's parameters, values and their sources.",
            "distributed": "Run an experiment on several ranks (elastic launcher).",
        }[name]
        app.add_typer(group, name=name, help=help_text)
        if name not in wanted:
            continue
        project = project_loader()
        real = _needs_import(argv, name)
        if real:
            from .runner import start_probes

            start_probes(project)
        found = discover(project, script=script, use_cache=not real)
        if found.failures:
            ExperimentGroup.failures_note = "; modules that failed to import: " + ", ".join(
                f"{f.file} ({f.message})" for f in found.failures
            )
            for failure in found.failures:
                print(f"warning: {failure.file}: {failure.message}", file=sys.stderr)
        if name == "run":
            _add_experiment_commands(group, found, project, _run_handler(project, list(argv)))
        elif name == "show-params":
            _add_experiment_commands(group, found, project, _show_params_handler(project))
        else:
            _add_experiment_commands(
                group, found, project, _distributed_handler(project, list(argv))
            )
    return app


def kebab_options(argv: Sequence[str]) -> list[str]:
    """Accept ``--batch_size`` for ``--batch-size``: names are snake_case in Python."""
    out = []
    for arg in argv:
        if arg.startswith("--") and "_" in arg.split("=", 1)[0]:
            name, sep, value = arg.partition("=")
            arg = name.replace("_", "-") + sep + value
        out.append(arg)
    return out


def run_cli(
    argv: Sequence[str] | None = None, *, script: Path | None = None, prog_name: str = "pystematic"
) -> int:
    """Run the CLI and return its exit code; user errors become one line on stderr."""
    args = kebab_options(sys.argv[1:] if argv is None else argv)
    return _invoke(lambda: build_app(args, script=script), args, prog_name)


def _invoke(make_app: Callable[[], typer.Typer], args: list[str], prog_name: str) -> int:
    """Build and run a Typer app; the one place where errors are turned into exit codes."""
    try:
        command = typer.main.get_command(make_app())
        result = command.main(args=args, prog_name=prog_name, standalone_mode=False)
    except PystematicError as e:
        print(f"error: {e.format_message()}", file=sys.stderr)
        return e.exit_code
    except click_exceptions.NoArgsIsHelpError as e:
        e.show()
        return e.exit_code
    except click_exceptions.ClickException as e:
        print(f"error: {_one_line(e.format_message())}", file=sys.stderr)
        return e.exit_code
    except typer.Abort:
        return 130
    return result if isinstance(result, int) else 0


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main() -> None:
    """Console script entry point."""
    sys.exit(run_cli())


def global_entrypoint() -> None:
    """``ps.global_entrypoint()``: the pystematic CLI for the calling script's project."""
    main_module = sys.modules.get("__main__")
    file = getattr(main_module, "__file__", None)
    sys.exit(
        run_cli(script=Path(file).resolve() if file else None, prog_name=Path(sys.argv[0]).name)
    )


def single_experiment_main(experiment: Any, argv: Sequence[str] | None = None) -> None:
    """``train.cli()``: the calling script is this one experiment's command."""
    from .discovery import info_from
    from .runner import start_probes

    args = kebab_options(sys.argv[1:] if argv is None else argv)

    def make_app() -> typer.Typer:
        exp_file = experiment.file
        project = load_project(script=exp_file) if exp_file else load_project()
        start_probes(project)
        fn, help_text = _run_handler(project, args)(info_from(experiment))
        app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
        app.command(help=help_text)(fn)
        return app

    sys.exit(_invoke(make_app, args, Path(sys.argv[0]).name))
