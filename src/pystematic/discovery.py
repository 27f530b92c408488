"""Collecting experiments from a project, with a metadata cache.

Discovery imports the scanned modules with the project root on ``sys.path`` and
keeps every ``@ps.experiment`` defined in them. What it learns (names,
docstrings, parameter declarations) is cached under ``.pystematic_cache/``,
keyed by the path, size and mtime of every file that was imported, so ``list``,
``show-params``, ``--help`` and completion skip importing user code (and torch)
when nothing changed.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import DiscoveryError
from .experiment import Experiment
from .params import BUILTIN_TYPES, Parameter, to_toml_value, type_name
from .project import ALWAYS_EXCLUDED, Project

CACHE_DIR = ".pystematic_cache"
CACHE_FILE = "discovery.json"
CACHE_VERSION = 1


@dataclass
class ExperimentInfo:
    """What the CLI needs to know of an experiment; ``experiment`` is set once imported."""

    id: str
    name: str
    group: str | None
    group_help: str
    module: str
    file: str
    description: str
    help: str
    parameters: list[Parameter]
    defaults: dict[str, Any] = field(default_factory=dict)
    experiment: Experiment | None = None


@dataclass(frozen=True)
class ImportFailure:
    file: str
    message: str
    traceback: str = ""


@dataclass
class Discovered:
    experiments: dict[str, ExperimentInfo] = field(default_factory=dict)
    failures: list[ImportFailure] = field(default_factory=list)
    from_cache: bool = False


# ---------------------------------------------------------------- scanning


def _is_virtualenv(folder: Path) -> bool:
    return (folder / "pyvenv.cfg").is_file()


def _excluded(path: Path, project: Project) -> bool:
    name = path.name
    if name.startswith(".") or name in ALWAYS_EXCLUDED:
        return True
    if path == project.output_dir:
        return True
    rel = _relative(path, project.root)
    return any(fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(name, pat) for pat in project.exclude)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def candidate_files(project: Project, script: Path | None = None) -> list[Path]:
    """Every file discovery imports, from ``paths``, ``modules`` and the calling script."""
    found: list[Path] = []
    for base in project.paths:
        if base.is_file():
            found.append(base)
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            folder = Path(dirpath)
            dirnames[:] = sorted(
                d
                for d in dirnames
                if not _excluded(folder / d, project) and not _is_virtualenv(folder / d)
            )
            for fname in sorted(filenames):
                if fnmatch.fnmatch(fname, project.pattern) and fname.endswith(".py"):
                    path = folder / fname
                    if not _excluded(path, project):
                        found.append(path)
    _put_root_on_path(project.root)
    for module in project.modules:
        found.extend(_module_files(module))
    if script is not None:
        found.append(script.resolve())
    unique: dict[Path, None] = dict.fromkeys(p.resolve() for p in found)
    return list(unique)


def _module_files(name: str) -> list[Path]:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError) as e:
        raise DiscoveryError(f"module {name!r} from the config cannot be found: {e}") from None
    if spec is None:
        raise DiscoveryError(f"module {name!r} from the config cannot be found")
    if spec.submodule_search_locations:
        files: list[Path] = []
        for location in spec.submodule_search_locations:
            files.extend(sorted(Path(location).rglob("*.py")))
        return [f for f in files if not any(part.startswith(".") for part in f.parts)]
    return [Path(spec.origin)] if spec.origin else []


def _put_root_on_path(root: Path) -> None:
    """Make the project importable; it stays on ``sys.path`` since user code imports lazily."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    importlib.invalidate_caches()


# ---------------------------------------------------------------- importing


def module_name_for(path: Path, root: Path) -> str | None:
    """Dotted module name of a file under the root, or None when it cannot be one."""
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        return None
    parts = list(rel.with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts.pop()
    if not parts or not all(p.isidentifier() for p in parts):
        return None
    return ".".join(parts)


def _main_module_for(path: Path) -> ModuleType | None:
    """The ``__main__`` module when it is this file (a script that also gets discovered)."""
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    if main is not None and main_file and Path(main_file).resolve() == path.resolve():
        return main
    return None


def import_file(path: Path, root: Path) -> ModuleType:
    main = _main_module_for(path)
    name = module_name_for(path, root)
    if main is not None:
        if name:
            sys.modules.setdefault(name, main)
        return main
    if name is not None:
        return importlib.import_module(name)
    # Not importable by name (hyphen in the file name, outside the root): load by path.
    synthetic = "pystematic_user_" + "".join(c if c.isalnum() else "_" for c in path.stem)
    if synthetic in sys.modules:
        return sys.modules[synthetic]
    spec = importlib.util.spec_from_file_location(synthetic, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[synthetic] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[synthetic]
        raise
    return module


def experiments_in(module: ModuleType, file: Path) -> Iterator[Experiment]:
    """Experiments defined in this file (not ones it imported from elsewhere)."""
    seen: set[int] = set()
    for value in list(vars(module).values()):
        if isinstance(value, Experiment) and id(value) not in seen and value.file == file:
            seen.add(id(value))
            yield value


def info_from(exp: Experiment) -> ExperimentInfo:
    return ExperimentInfo(
        id=exp.id,
        name=exp.name,
        group=exp.group.id if exp.group else None,
        group_help=exp.group.help if exp.group else "",
        module=exp.module,
        file=str(exp.file),
        description=exp.description,
        help=exp.help,
        parameters=exp.parameters,
        defaults=exp.defaults,
        experiment=exp,
    )


def _short_error(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def import_project(project: Project, files: Iterable[Path]) -> Discovered:
    """Import every file and collect its experiments; failures are kept, not raised."""
    result = Discovered()
    owners: dict[str, str] = {}
    _put_root_on_path(project.root)
    for path in files:
        try:
            module = import_file(path, project.root)
        except Exception as e:
            result.failures.append(
                ImportFailure(
                    file=_relative(path, project.root),
                    message=_short_error(e),
                    traceback=traceback.format_exc(),
                )
            )
            continue
        for exp in experiments_in(module, path):
            if exp.id in owners:
                raise DiscoveryError(
                    f"two experiments named {exp.id!r}: {owners[exp.id]} and "
                    f"{_relative(path, project.root)}"
                )
            owners[exp.id] = _relative(path, project.root)
            result.experiments[exp.id] = info_from(exp)
    return result


# ---------------------------------------------------------------- cache


def _stat_key(paths: Iterable[Path]) -> dict[str, list[int]]:
    key: dict[str, list[int]] = {}
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        key[str(p)] = [st.st_size, st.st_mtime_ns]
    return key


def _user_files(root: Path, skip: set[str]) -> set[Path]:
    """Files of imported modules that live in the project (not site-packages, not venvs)."""
    out: set[Path] = set()
    root_s = str(root)
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if not file or not file.startswith(root_s) or "site-packages" in file:
            continue
        if file.endswith(".py") and file not in skip:
            out.add(Path(file).resolve())
    return out


def _param_to_json(p: Parameter) -> dict[str, Any]:
    return {
        "name": p.name,
        "type": p.type_name,
        "default": to_toml_value(p.default) if p.default is not None else None,
        "help": p.help,
        "choices": [to_toml_value(c) for c in p.choices] if p.choices is not None else None,
        "required": p.required,
        "multiple": p.multiple,
        "envvar": p.envvar,
        "group": p.group,
    }


class _CachedParser:
    """Stands in for a custom parse callable known only by name from the cache."""

    def __init__(self, name: str) -> None:
        self.__name__ = name

    def __call__(self, value: Any) -> Any:
        return value


def _param_from_json(d: dict[str, Any]) -> Parameter:
    kind = d["type"]
    parser: Callable[..., Any] = BUILTIN_TYPES.get(kind) or _CachedParser(kind)
    default = d["default"]
    if kind == "path" and default is not None:
        default = [Path(v) for v in default] if isinstance(default, list) else Path(default)
    return Parameter(
        name=d["name"],
        type=parser,
        default=default,
        help=d["help"],
        choices=tuple(d["choices"]) if d["choices"] is not None else None,
        required=d["required"],
        multiple=d["multiple"],
        envvar=d["envvar"],
        group=d["group"],
    )


def _cache_path(project: Project) -> Path:
    return project.root / CACHE_DIR / CACHE_FILE


def _read_cache(project: Project, files: list[Path]) -> Discovered | None:
    try:
        data = json.loads(_cache_path(project).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("version") != CACHE_VERSION or data.get("scanned") != _stat_key(files):
        return None
    deps = data.get("deps", {})
    if _stat_key(Path(p) for p in deps) != deps:
        return None
    result = Discovered(from_cache=True)
    for e in data["experiments"]:
        params = [_param_from_json(p) for p in e.pop("parameters")]
        result.experiments[e["id"]] = ExperimentInfo(parameters=params, **e)
    return result


def _write_cache(project: Project, files: list[Path], result: Discovered) -> None:
    scanned = {str(f) for f in files}
    deps = _user_files(project.root, scanned)
    data = {
        "version": CACHE_VERSION,
        "scanned": _stat_key(files),
        "deps": _stat_key(deps),
        "experiments": [
            {
                "id": i.id,
                "name": i.name,
                "group": i.group,
                "group_help": i.group_help,
                "module": i.module,
                "file": i.file,
                "description": i.description,
                "help": i.help,
                "parameters": [_param_to_json(p) for p in i.parameters],
                "defaults": {k: to_toml_value(v) for k, v in i.defaults.items()},
            }
            for i in result.experiments.values()
        ],
    }
    folder = _cache_path(project).parent
    try:
        folder.mkdir(exist_ok=True)
        (folder / ".gitignore").write_text("# created by pystematic\n*\n", encoding="utf-8")
        tmp = folder / f"{CACHE_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, _cache_path(project))
    except OSError:
        pass  # a read-only project just goes without a cache


def discover(project: Project, *, script: Path | None = None, use_cache: bool = True) -> Discovered:
    """Experiments of the project: from the cache when allowed and valid, else imported."""
    files = candidate_files(project, script)
    if use_cache and os.environ.get("PYSTEMATIC_NO_CACHE") != "1":
        cached = _read_cache(project, files)
        if cached is not None:
            return cached
    result = import_project(project, files)
    if not result.failures:
        _write_cache(project, files, result)
    return result


def describe_type(p: Parameter) -> str:
    name = type_name(p.type)
    return f"list[{name}]" if p.multiple else name
