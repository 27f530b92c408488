"""Finding the project root and reading its configuration.

The root is the nearest folder, from the start folder up, holding
``pystematic.toml`` or a ``pyproject.toml`` with a ``[tool.pystematic]`` table.
Both files take the same keys; see ``pystematic.toml.example``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

CONFIG_NAME = "pystematic.toml"
DEFAULT_BACKENDS = ("tensorboard", "jsonl")
KNOWN_KEYS = {
    "modules",
    "paths",
    "pattern",
    "exclude",
    "output_dir",
    "recorder",
    "defaults",
    "experiments",
    "mlflow",
    "sweep",
}
# Folders never scanned, whatever the config says.
ALWAYS_EXCLUDED = ("tests", "test", "venv", "env", "node_modules", "__pycache__", "site-packages")


@dataclass(frozen=True)
class Project:
    """A project root and its settings, with every path made absolute."""

    root: Path
    config_file: Path | None = None
    modules: tuple[str, ...] = ()
    paths: tuple[Path, ...] = ()
    pattern: str = "*.py"
    exclude: tuple[str, ...] = ()
    output_dir: Path = Path("output")
    recorder: tuple[str, ...] = DEFAULT_BACKENDS
    defaults: dict[str, Any] = field(default_factory=dict)
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    mlflow: dict[str, Any] = field(default_factory=dict)  # [mlflow]: the recorder backend's
    sweep: dict[str, Any] = field(default_factory=dict)  # [sweep], checked by sweep.py


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a syntax error becomes a ConfigError naming the file and position."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None


def _config_table(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The pystematic settings held in *folder*, if it has any."""
    own = folder / CONFIG_NAME
    if own.is_file():
        return own, read_toml(own)
    pyproject = folder / "pyproject.toml"
    if pyproject.is_file():
        # Cheap text check first: most pyproject.toml files are not ours.
        try:
            text = pyproject.read_text(encoding="utf-8")
        except OSError:
            return None
        if "tool.pystematic" not in text:
            return None
        tool = read_toml(pyproject).get("tool", {})
        if isinstance(tool, dict) and isinstance(tool.get("pystematic"), dict):
            return pyproject, tool["pystematic"]
    return None


def find_root(start: Path) -> tuple[Path, Path | None, dict[str, Any]]:
    """Walk up from *start* to the first folder with a config; fall back to *start*."""
    start = start.resolve()
    for folder in (start, *start.parents):
        found = _config_table(folder)
        if found is not None:
            return folder, found[0], found[1]
    return start, None, {}


def _str_list(value: Any, key: str, path: Path | None) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: '{key}' must be a list of strings, got {value!r}")
    return tuple(value)


def _table(value: Any, key: str, path: Path | None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: '{key}' must be a table, got {value!r}")
    return dict(value)


def _experiment_tables(table: dict[str, Any], path: Path | None) -> dict[str, dict[str, Any]]:
    """``{id: values}`` from ``[experiments.NAME]``, nested tables naming group members.

    Parameter values are never tables, so a table inside ``[experiments.vision]`` is the
    experiment ``vision.fit``: ``[experiments.vision.fit]`` and ``[experiments."vision.fit"]``
    address the same experiment.
    """
    flat: dict[str, dict[str, Any]] = {}

    def visit(prefix: str, value: Any) -> None:
        values = _table(value, f"experiments.{prefix}", path)
        own = {k: v for k, v in values.items() if not isinstance(v, dict)}
        if own or not values:
            target = flat.setdefault(prefix, {})
            twice = sorted(set(target) & set(own))
            if twice:
                raise ConfigError(f"{path}: [experiments.{prefix}] sets {twice[0]!r} twice")
            target.update(own)
        for key, sub in values.items():
            if isinstance(sub, dict):
                visit(f"{prefix}.{key}", sub)

    for name, value in table.items():
        visit(name, value)
    return flat


def check_experiment_tables(project: Project, known: list[str]) -> None:
    """A ``[experiments.X]`` table must name a discovered experiment (with a did-you-mean)."""
    for name in project.experiments:
        if name not in known:
            hint = did_you_mean(name, known) or f" (known: {', '.join(sorted(known)) or 'none'})"
            raise ConfigError(
                f"{project.config_file}: [experiments.{name}] names no experiment{hint}"
            )


def load_project(
    start: Path | None = None,
    *,
    explicit_root: Path | None = None,
    script: Path | None = None,
) -> Project:
    """Locate the project and read its settings.

    ``explicit_root`` is ``-C/--project``; ``script`` is the file of a script that
    called ``ps.global_entrypoint()``: without a config file only that script is scanned.
    """
    if explicit_root is not None:
        root = explicit_root.resolve()
        if not root.is_dir():
            raise ConfigError(f"project folder does not exist: {explicit_root}")
        found = _config_table(root)
        config_file, table = found if found else (None, {})
    else:
        begin = script.resolve().parent if script is not None else (start or Path.cwd())
        root, config_file, table = find_root(begin)

    unknown = sorted(set(table) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(
            f"{config_file}: unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(KNOWN_KEYS))}"
        )
    modules = _str_list(table.get("modules", []), "modules", config_file)
    if "paths" in table:
        raw_paths = _str_list(table["paths"], "paths", config_file)
    elif modules:
        raw_paths = ()
    elif config_file is None and script is not None:
        raw_paths = (str(script.resolve()),)
    else:
        raw_paths = (".",)
    pattern = table.get("pattern", "*.py")
    if not isinstance(pattern, str):
        raise ConfigError(f"{config_file}: 'pattern' must be a string, got {pattern!r}")
    output_dir = table.get("output_dir", "output")
    if not isinstance(output_dir, str):
        raise ConfigError(f"{config_file}: 'output_dir' must be a string, got {output_dir!r}")
    recorder = _str_list(table.get("recorder", list(DEFAULT_BACKENDS)), "recorder", config_file)
    defaults = _table(table.get("defaults", {}), "defaults", config_file)
    experiments_table = _table(table.get("experiments", {}), "experiments", config_file)
    experiments = _experiment_tables(experiments_table, config_file)
    return Project(
        root=root,
        config_file=config_file,
        modules=modules,
        paths=tuple((root / p).resolve() for p in raw_paths),
        pattern=pattern,
        exclude=_str_list(table.get("exclude", []), "exclude", config_file),
        output_dir=(root / output_dir).resolve(),
        recorder=recorder,
        defaults=defaults,
        experiments=experiments,
        mlflow=_table(table.get("mlflow", {}), "mlflow", config_file),
        sweep=_table(table.get("sweep", {}), "sweep", config_file),
    )


def project_for_file(file: str) -> Project:
    """The project of an experiment defined in *file*; the working folder's for code that has
    no real source file (a notebook cell, IPython, ``python -c``: *file* is empty or a
    kernel's temporary cell file)."""
    path = Path(file) if file else None
    if path is not None and path.is_file() and "ipykernel_" not in path.parent.name:
        return load_project(script=path)
    return load_project()
