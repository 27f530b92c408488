"""Experiments and groups as users of the original pystematic write them."""

from __future__ import annotations

import json
from typing import Any

import pytest

import pystematic as ps
from conftest import Project, tomllib
from pystematic.errors import ParameterError

WIDE = {"COLUMNS": "200"}


# ---------------------------------------------------------------- main's signature


def test_main_may_take_params_alone_or_params_and_context() -> None:
    @ps.experiment
    def one(params: Any) -> None: ...

    @ps.experiment
    def two(params: Any, context: Any) -> None: ...

    assert (one.takes_context, two.takes_context) == (False, True)


@pytest.mark.parametrize(
    "source",
    [
        "def bad(): ...",
        "def bad(params, context, extra): ...",
        "def bad(params, *, flag): ...",
    ],
)
def test_another_signature_is_an_error_when_decorating(source: str) -> None:
    scope: dict[str, Any] = {}
    exec(source, scope)
    with pytest.raises(ParameterError, match=r"experiment bad\(.*\): a main function takes"):
        ps.experiment(scope["bad"])


# ---------------------------------------------------------------- running from Python

SCRIPT_EXPERIMENTS = """
import sys

import pystematic as ps

@ps.parameter("n", type=int, default=2)
@ps.experiment
def double(params):
    print("context seed", ps.context.seed, flush=True)
    if params.n < 0:
        raise ValueError("negative")
    return params.n * 2

vision = ps.group("vision", help="Vision.")

@ps.parameter("size", type=int, default=8)
@vision.experiment
def fit(params, context):
    return params.size

if __name__ == "__main__":
    how = sys.argv[1]
    if how == "call":
        print("called", double({"n": 5, "random_seed": 1}), double.main is not None)
    elif how == "cli":
        print("returned", double.cli(["--n", "4"], exit_on_error=False))
        try:
            double.cli(["--n", "-1"], exit_on_error=False)
        except ValueError as e:
            print("raised", e)
        try:
            double.cli(["--n", "x"], exit_on_error=False)
        except ps.PystematicError as e:
            print("bad input", e)
    elif how == "group":
        print("group returned", vision.cli(["fit", "--size", "3"], exit_on_error=False))
    elif how == "global":
        print("global returned", ps.global_entrypoint(["run", "double"], exit_on_error=False))
    elif how == "exit":
        double.cli(sys.argv[2:])
"""


def test_calling_an_experiment_runs_it(project: Project) -> None:
    project.write("script.py", SCRIPT_EXPERIMENTS)
    result = project.python("script.py", "call")
    assert result.returncode == 0, result.stderr
    assert "called 10 True" in result.stdout
    run_dir = project.only_run_dir("double")
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
    assert "context seed 1" in (run_dir / "output.log").read_text()


def test_cli_without_exit_returns_and_raises(project: Project) -> None:
    project.write("script.py", SCRIPT_EXPERIMENTS)
    result = project.python("script.py", "cli")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "returned 8" in lines
    assert "raised negative" in lines
    assert "bad input invalid value for --n: 'x' is not an integer (from cli)" in lines
    assert len(project.run_dirs("double")) == 2  # the bad input started no run


def test_group_and_global_entrypoint_without_exit(project: Project) -> None:
    project.write("script.py", SCRIPT_EXPERIMENTS)
    result = project.python("script.py", "group")
    assert result.returncode == 0, result.stderr
    assert "group returned 3" in result.stdout
    result = project.python("script.py", "global")
    assert result.returncode == 0, result.stderr
    assert "global returned 4" in result.stdout


def test_cli_exits_with_the_runs_exit_code(project: Project) -> None:
    project.write("script.py", SCRIPT_EXPERIMENTS)
    assert project.python("script.py", "exit", "--n", "-1").returncode == 1
    result = project.python("script.py", "exit", "-h")
    assert result.returncode == 0
    assert "--n" in result.stdout


# ---------------------------------------------------------------- groups and inheritance

NESTED = """
import pystematic as ps

@ps.parameter("data", default="coco", help="Data set.")
@ps.group
def vision():
    '''Vision experiments.'''

detection = vision.group("detection", help="Finding boxes.")

@ps.parameter("boxes", type=int, default=100)
@detection.experiment
def fit(params, context):
    (context.output_dir / "seen.json").write_text(
        __import__("json").dumps(params.to_dict())
    )

@ps.parameter("lr", type=float, default=0.1)
@ps.parameter("epochs", type=int, default=3)
@ps.experiment
def base(params):
    pass

@ps.parameter("width", type=int, default=4)
@ps.experiment(inherit_params=[base, detection])
def child(params, context):
    (context.output_dir / "seen.json").write_text(
        __import__("json").dumps(params.to_dict())
    )
"""


def test_nested_groups_pass_their_parameters_down(project: Project) -> None:
    project.write("exps.py", NESTED)
    listed = [row["name"] for row in project.run("list", "--json").json()]
    assert sorted(listed) == ["base", "child", "vision.detection.fit"]
    result = project.run("run", "vision", "detection", "fit", "--boxes", "7", "--data", "voc")
    assert result.returncode == 0, result.stderr
    run_dir = project.only_run_dir("vision.detection.fit")
    assert json.loads((run_dir / "seen.json").read_text())["data"] == "voc"
    assert json.loads((run_dir / "run.json").read_text())["experiment"] == "vision.detection.fit"
    helped = project.run("run", "vision", "--help", env=WIDE)
    assert "detection" in helped.stdout and "Finding boxes." in helped.stdout


def test_inherit_params_takes_the_declarations(project: Project) -> None:
    project.write("exps.py", NESTED)
    result = project.run("run", "child", "--epochs", "9", "--data", "x")
    assert result.returncode == 0, result.stderr
    seen = json.loads((project.only_run_dir("child") / "seen.json").read_text())
    assert {k: seen[k] for k in ("lr", "epochs", "data", "width")} == {
        "lr": 0.1,
        "epochs": 9,
        "data": "x",
        "width": 4,
    }


def test_inherited_declarations_that_clash_name_both_owners() -> None:
    @ps.parameter("lr", type=float, default=0.1)
    @ps.experiment
    def first(params: Any) -> None: ...

    with pytest.raises(ParameterError, match=r"declared differently by .*first.* and .*second"):

        @ps.parameter("lr", type=float, default=0.5)
        @ps.experiment(name="second", inherit_params=first)
        def second(params: Any) -> None: ...

    # The same declaration twice is one parameter.
    @ps.parameter("lr", type=float, default=0.1)
    @ps.experiment(inherit_params=first)
    def third(params: Any) -> None: ...

    assert [p.name for p in third.parameters] == ["lr"]


# ---------------------------------------------------------------- parameter options

OPTIONS = """
import itertools

import pystematic as ps

counter = itertools.count(40)

@ps.parameter("stamp", type=int, default=lambda: next(counter), help="Computed.")
@ps.parameter("secret", default="s3", hidden=True)
@ps.parameter("workers", type=int, default=4, default_help="the number of CPUs")
@ps.experiment
def opts(params, context):
    pass
"""


def test_computed_hidden_and_default_help(project: Project) -> None:
    project.write("exps.py", OPTIONS)
    assert project.run("run", "opts").returncode == 0
    snapshot = tomllib.loads((project.only_run_dir("opts") / "parameters.toml").read_text())
    assert (snapshot["stamp"], snapshot["secret"]) == (40, "s3")
    helped = project.run("run", "opts", "--help", env=WIDE)
    assert helped.returncode == 0
    assert "--secret" not in helped.stdout
    assert "[default: the number of CPUs]" in helped.stdout
    assert "[default: computed at run time]" in helped.stdout
    rows = {r["name"]: r for r in project.run("show-params", "opts", "--json").json()}
    assert "secret" not in rows
    assert rows["stamp"]["default"] == 40


def test_dash_h_is_help_everywhere(project: Project) -> None:
    project.write("exps.py", OPTIONS)
    for args in (["-h"], ["run", "-h"], ["run", "opts", "-h"], ["show-params", "opts", "-h"]):
        result = project.run(*args, env=WIDE)
        assert result.returncode == 0, (args, result.stderr)
        assert "Usage:" in result.stdout, args


def test_reserved_names_are_refused() -> None:
    with pytest.raises(ParameterError, match="'help' is reserved"):
        ps.parameter("help")
