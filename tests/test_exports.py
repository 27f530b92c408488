"""The public namespace: ``pystematic.__all__`` is sorted, complete and importable."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

import pystematic as ps

# What the design promises at the top level.
PROMISED = {
    "Context",
    "Experiment",
    "Group",
    "Params",
    "Recorder",
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
}
ERRORS = {
    "ConfigError",
    "DiscoveryError",
    "DistributedError",
    "ParameterError",
    "PystematicError",
    "ReproduceError",
    "RunDirError",
    "UnknownExperimentError",
}


def test_all_is_sorted_and_unique() -> None:
    assert ps.__all__ == sorted(ps.__all__)
    assert len(ps.__all__) == len(set(ps.__all__))


def test_all_holds_the_promised_names() -> None:
    assert set(ps.__all__) >= PROMISED | ERRORS


@pytest.mark.parametrize("name", ps.__all__)
def test_every_exported_name_resolves(name: str) -> None:
    value = getattr(ps, name)
    assert value is not None
    if name not in ("recorder", "context", "__version__"):
        assert not isinstance(value, types.ModuleType), name


def test_all_is_exactly_the_public_names() -> None:
    """Like httpx: every public, non-module name of the package is exported, and nothing
    else (no typing helpers such as Any or annotations); lazy names count too."""
    public = {
        name
        for name, value in vars(ps).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    lazy = {"Recorder", "load_runs", "runs_dataframe", "param_matrix", "run_parameter_sweep"}
    modules_by_design = {"context", "recorder"}
    assert public | lazy | modules_by_design | {"__version__"} == set(ps.__all__)


def test_context_is_its_module_and_forwards_to_the_running_context() -> None:
    import pystematic.context as module

    assert isinstance(module, types.ModuleType)
    assert module is ps.context
    assert module.Context is ps.Context
    with pytest.raises(ps.PystematicError, match="only available while an experiment runs"):
        _ = ps.context.params
    with pytest.raises(AttributeError):
        _ = ps.context.no_such_attribute


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_exported_errors(name: str) -> None:
    error = getattr(ps, name)
    assert issubclass(error, ps.PystematicError)
    assert error.__module__ == "pystematic"
    assert error("x").exit_code == 2
    assert str(error("one line")) == "one line"


def test_star_import_and_lazy_names() -> None:
    code = (
        "import sys\n"
        "from pystematic import *\n"
        "assert 'Recorder' in dir() and 'load_runs' in dir() and 'recorder' in dir()\n"
        "assert 'runs_dataframe' in dir() and 'pandas' not in sys.modules\n"
        "assert issubclass(recorder.Backend, object)\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_version_matches_the_distribution() -> None:
    from importlib.metadata import version

    assert ps.__version__ == version("pystematic")
