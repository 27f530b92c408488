"""Collecting experiments from a project, with a metadata cache.

Discovery imports the scanned modules with the project root on ``sys.path`` and
keeps every experiment defined in them. What it learns (names, docstrings,
parameter declarations) is cached under ``.pystematic_cache/``, keyed by the
path, size and mtime of every file that was imported, so ``list``,
``show-params``, ``--help`` and completion import no user code (and no torch)
when nothing changed, and ``run EXP`` imports only the module that defines EXP.
A warm cache imports nothing at all and leaves ``sys.path`` as it found it.

Experiments are recognised by a marker on their type (:data:`DESCRIBE`), so this
module does not depend on the user-facing ``Experiment`` class.
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
from importlib.machinery import PathFinder
from pathlib import Path
from types import ModuleType
from typing import Any

from . import interrupts
from .errors import DiscoveryError
from .params import BUILTIN_TYPES, Parameter, to_toml_value, type_name
from .project import ALWAYS_EXCLUDED, Project

CACHE_DIR = ".pystematic_cache"
CACHE_FILE = "discovery.json"
CACHE_VERSION = 2
#: Name of the method, on an experiment object's type, that returns its ExperimentInfo.
DESCRIBE = "__pystematic_describe__"


@dataclass
class ExperimentInfo:
    """An experiment's declarations: what the CLI and the runner work from.

    ``main`` is the undecorated function once its module is imported (None when the
    info comes from the cache); ``groups`` are the (name, help) of the enclosing groups,
    outermost first.
    """

    id: str
    name: str
    groups: list[tuple[str, str]]
    module: str
    file: str
    description: str
    help: str
    parameters: list[Parameter]
    defaults: dict[str, Any] = field(default_factory=dict)
    main: Callable[..., Any] | None = None
    takes_context: bool = True

    @property
    def computed_defaults(self) -> bool:
        """Whether a default is a callable: its value is known only after a real import."""
        return any(p.computed_default for p in self.parameters)


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

    def failures_note(self) -> str:
        """A clause naming the modules that failed to import, for "unknown experiment" errors."""
        if not self.failures:
            return ""
        return "; modules that failed to import: " + ", ".join(
            f"{f.file} ({f.message})" for f in self.failures
        )


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
    for module in project.modules:
        found.extend(_module_files(module, project.root))
    if script is not None:
        found.append(script.resolve())
    unique: dict[Path, None] = dict.fromkeys(p.resolve() for p in found)
    return list(unique)


def _module_files(name: str, root: Path) -> list[Path]:
    """The files of a configured module or package, found without importing anything.

    ``importlib.util.find_spec("pkg.sub")`` would import ``pkg``; the path finder is
    asked one level at a time instead, from the project root and ``sys.path``.
    """
    search: list[str] | None = [str(root), *sys.path]
    spec = None
    parts = name.split(".")
    for i in range(len(parts)):
        spec = PathFinder.find_spec(".".join(parts[: i + 1]), search)
        if spec is None:
            raise DiscoveryError(f"module {name!r} from the config cannot be found")
        search = list(spec.submodule_search_locations or [])
        if i < len(parts) - 1 and not search:
            raise DiscoveryError(f"module {name!r} from the config cannot be found")
    assert spec is not None
    if spec.submodule_search_locations:
        files: list[Path] = []
        for location in spec.submodule_search_locations:
            # Dot-folders inside the package are skipped, not those above it (a project
            # under ~/.work, or a `reproduce` worktree, is a project like any other).
            files.extend(
                f
                for f in sorted(Path(location).rglob("*.py"))
                if not any(part.startswith(".") for part in f.relative_to(location).parts)
            )
        return files
    return [Path(spec.origin)] if spec.origin else []


def _put_root_on_path(root: Path) -> None:
    """Make the project importable; it stays on ``sys.path`` since user code imports lazily.

    Only the root's own finder forgets what it listed (files written since, in a long-lived
    process such as a notebook): ``importlib.invalidate_caches()`` takes ~0.4 s once torch
    is imported.
    """
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    forget = getattr(sys.path_importer_cache.get(str(root)), "invalidate_caches", None)
    if forget is not None:
        forget()


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


def describe(value: Any) -> ExperimentInfo | None:
    """The declarations of an experiment object, or None for any other value."""
    method = getattr(type(value), DESCRIBE, None)
    if method is None:
        return None
    info = method(value)
    return info if isinstance(info, ExperimentInfo) else None


def experiments_in(module: ModuleType, file: Path) -> Iterator[ExperimentInfo]:
    """Experiments defined in this file (not ones it imported from elsewhere)."""
    seen: set[str] = set()
    for value in list(vars(module).values()):
        info = describe(value)
        if info is not None and info.id not in seen and info.file == str(file):
            seen.add(info.id)
            yield info


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
            # A stop signal during the import takes effect when it ends (a second one at
            # once): raised inside torch's start-up, where C++ calls back into Python, it
            # can abort the process (SIGABRT) instead of stopping it.
            with interrupts.held():
                module = import_file(path, project.root)
        except Exception as e:
            # A second Ctrl-C or SIGTERM during the import may surface as another error:
            # it stops the command, it is not the module's failure.
            interrupts.raise_if_stopped(e)
            result.failures.append(_failure(path, project, e))
            continue
        except SystemExit as e:  # a module that calls sys.exit() at import
            result.failures.append(_failure(path, project, e))
            continue
        for info in experiments_in(module, path):
            if info.id in owners:
                raise DiscoveryError(
                    f"two experiments named {info.id!r}: {owners[info.id]} and "
                    f"{_relative(path, project.root)}"
                )
            owners[info.id] = _relative(path, project.root)
            result.experiments[info.id] = info
    return result


def _failure(path: Path, project: Project, e: BaseException) -> ImportFailure:
    message = (
        f"SystemExit: the module called sys.exit({e.code!r}) while being imported"
        if isinstance(e, SystemExit)
        else _short_error(e)
    )
    return ImportFailure(
        file=_relative(path, project.root), message=message, traceback=traceback.format_exc()
    )


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
    computed = p.computed_default
    return {
        "name": p.name,
        "type": p.type_name,
        "default": to_toml_value(p.default) if p.default is not None and not computed else None,
        "computed_default": computed,
        "help": p.help,
        "choices": [to_toml_value(c) for c in p.choices] if p.choices is not None else None,
        "required": p.required,
        "multiple": p.multiple,
        "envvar": p.envvar,
        "group": p.group,
        "hidden": p.hidden,
        "default_help": p.default_help,
    }


class _CachedParser:
    """Stands in for a custom parse callable known only by name from the cache."""

    def __init__(self, name: str) -> None:
        self.__name__ = name

    def __call__(self, value: Any) -> Any:
        return value


def _computed_placeholder() -> None:
    """Stands in for a callable default known only from the cache (its value is not)."""


def _param_from_json(d: dict[str, Any]) -> Parameter:
    kind = d["type"]
    parser: Callable[..., Any] = BUILTIN_TYPES.get(kind) or _CachedParser(kind)
    default = _computed_placeholder if d["computed_default"] else d["default"]
    if kind == "path" and isinstance(default, (str, list)):
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
        hidden=d["hidden"],
        default_help=d["default_help"],
    )


def _info_to_json(i: ExperimentInfo) -> dict[str, Any]:
    return {
        "id": i.id,
        "name": i.name,
        "groups": [list(g) for g in i.groups],
        "module": i.module,
        "file": i.file,
        "description": i.description,
        "help": i.help,
        "parameters": [_param_to_json(p) for p in i.parameters],
        "defaults": {k: to_toml_value(v) for k, v in i.defaults.items()},
        "takes_context": i.takes_context,
    }


def _info_from_json(d: dict[str, Any]) -> ExperimentInfo:
    return ExperimentInfo(
        id=d["id"],
        name=d["name"],
        groups=[(g[0], g[1]) for g in d["groups"]],
        module=d["module"],
        file=d["file"],
        description=d["description"],
        help=d["help"],
        parameters=[_param_from_json(p) for p in d["parameters"]],
        defaults=d["defaults"],
        takes_context=d["takes_context"],
    )


def cache_dir(project: Project) -> Path:
    """Where pystematic keeps what it can recompute (discovery, the package listing)."""
    return project.root / CACHE_DIR


def _read_cache(project: Project, files: list[Path]) -> Discovered | None:
    try:
        data = json.loads((cache_dir(project) / CACHE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("version") != CACHE_VERSION or data.get("scanned") != _stat_key(files):
        return None
    deps = data.get("deps", {})
    if _stat_key(Path(p) for p in deps) != deps:
        return None
    result = Discovered(from_cache=True)
    try:
        for e in data["experiments"]:
            info = _info_from_json(e)
            result.experiments[info.id] = info
    except (KeyError, TypeError, IndexError):
        return None
    return result


def _write_cache(project: Project, files: list[Path], result: Discovered) -> None:
    scanned = {str(f) for f in files}
    deps = _user_files(project.root, scanned)
    data = {
        "version": CACHE_VERSION,
        "scanned": _stat_key(files),
        "deps": _stat_key(deps),
        "experiments": [_info_to_json(i) for i in result.experiments.values()],
    }
    folder = cache_dir(project)
    try:
        folder.mkdir(exist_ok=True)
        (folder / ".gitignore").write_text("# created by pystematic\n*\n", encoding="utf-8")
        tmp = folder / f"{CACHE_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, folder / CACHE_FILE)
    except OSError:
        pass  # a read-only project just goes without a cache


def _cache_allowed() -> bool:
    return os.environ.get("PYSTEMATIC_NO_CACHE") != "1"


def discover(
    project: Project,
    *,
    script: Path | None = None,
    use_cache: bool = True,
    before_import: Callable[[], Any] | None = None,
) -> Discovered:
    """Experiments of the project: from the cache when allowed and valid, else imported
    (``before_import`` is called first, when it comes to that)."""
    files = candidate_files(project, script)
    if use_cache and _cache_allowed():
        cached = _read_cache(project, files)
        if cached is not None:
            return cached
    if before_import is not None:
        before_import()
    result = import_project(project, files)
    if not result.failures:
        _write_cache(project, files, result)
    return result


def discover_for_run(project: Project, wanted: str, *, script: Path | None = None) -> Discovered:
    """Experiments of the project with *wanted* imported for real (its ``main`` set).

    With a valid cache only the module that defines *wanted* is imported; otherwise
    (or when that module no longer defines it) the whole project is.
    """
    files = candidate_files(project, script)
    cached = _read_cache(project, files) if _cache_allowed() else None
    if cached is not None and wanted in cached.experiments:
        path = Path(cached.experiments[wanted].file)
        alone = import_project(project, [path])
        if wanted in alone.experiments and not alone.failures:
            cached.experiments[wanted] = alone.experiments[wanted]
            return cached
    result = import_project(project, files)
    if not result.failures:
        _write_cache(project, files, result)
    return result


def describe_type(p: Parameter) -> str:
    name = type_name(p.type)
    return f"list[{name}]" if p.multiple else name
