"""The ``pystematic`` command line end to end, as a real process in a throw-away project."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import Project, Result, tomllib
from pystematic import __version__

WIDE = {"COLUMNS": "200"}

# The experiments write what main received to seen.json; none imports torch.
EXPS = '''
import json
import pathlib

import pystematic as ps


def pair(text):
    a, b = str(text).split("x")
    return int(a), int(b)


def record(params, context):
    checks = {"types": {k: type(v).__name__ for k, v in params.to_dict().items()}}
    try:
        params.epochs = 1
    except AttributeError:
        checks["read_only"] = True
    checks["values"] = params.to_dict()
    checks["output_dir"] = str(context.output_dir)
    (context.output_dir / "seen.json").write_text(json.dumps(checks, default=str))


@ps.parameter("epochs", type=int, default=10, help="Passes over the data.")
@ps.parameter("lr", type=float, default=0.001, help="Learning rate.")
@ps.parameter("optimizer", default="adam", choices=["adam", "sgd"], help="Optimizer.")
@ps.parameter("augment", type=bool, default=False, help="Random flips.")
@ps.experiment
@ps.parameter("data", type=pathlib.Path, default=pathlib.Path("data"), help="Data folder.")
@ps.parameter("size", type=pair, default="2x3", help="Image size HxW.")
@ps.parameter("layer", type=int, multiple=True, help="Layer widths.")
@ps.parameter("token", default="none", envvar="TRAIN_TOKEN", help="Read from the env.")
@ps.parameter("batch_size", type=int, default=8, help="Samples per step.")
def train(params, context):
    """Train a small model.

    The longer description.
    """
    record(params, context)
    print("main ran", flush=True)
    return params.epochs * 2


@ps.parameter("label", required=True, help="A required label.")
@ps.experiment
def needs(params, context):
    """Needs a label."""


@ps.experiment
def fail(params, context):
    """Always fails."""
    raise ValueError("boom from main")
'''


def one_error_line(result: Result, *needles: str) -> str:
    """The single ``error:`` line a user mistake prints, with every needle in it."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def seen(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "seen.json").read_text())


def parameters_toml(run_dir: Path) -> dict[str, Any]:
    return tomllib.loads((run_dir / "parameters.toml").read_text())


def params_json(result: Result) -> dict[str, dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in result.json()}


@pytest.fixture
def exps(project: Project) -> Project:
    project.write("exps.py", EXPS)
    return project


# ---------------------------------------------------------------- run


def test_run_parameter_kinds_and_exact_rerun(exps: Project) -> None:
    result = exps.run(
        "run", "train", "--epochs", "5", "--lr", "0.01", "--optimizer", "sgd", "--augment",
        "--data", "some/dir", "--size", "4x5", "--layer", "1", "--layer", "2",
        "--batch_size", "16",
        env={"TRAIN_TOKEN": "secret"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    run_dir = exps.only_run_dir("train")
    assert run_dir.parent == exps.root / "output" / "train"
    assert str(run_dir) in result.stderr
    assert "main ran" in result.stdout

    got = seen(run_dir)
    assert got["read_only"] is True
    assert got["output_dir"] == str(run_dir)
    values, types = got["values"], got["types"]
    expected = {
        "epochs": (5, "int"),
        "lr": (0.01, "float"),
        "optimizer": ("sgd", "str"),
        "augment": (True, "bool"),
        "data": ("some/dir", "PosixPath"),
        "size": ([4, 5], "tuple"),
        "layer": ([1, 2], "list"),
        "token": ("secret", "str"),
        "batch_size": (16, "int"),
    }
    for name, (value, type_name) in expected.items():
        assert (values[name], types[name]) == (value, type_name), name
    assert isinstance(values["random_seed"], int)

    snapshot = parameters_toml(run_dir)
    seed = snapshot.pop("random_seed")
    assert seed == values["random_seed"]
    assert snapshot == {
        "epochs": 5,
        "lr": 0.01,
        "optimizer": "sgd",
        "augment": True,
        "data": "some/dir",
        "size": "4x5",  # a custom parse callable's value is stored as its input
        "layer": [1, 2],
        "token": "secret",
        "batch_size": 16,
        "deterministic": False,
    }

    # The snapshot is a valid params file: the re-run gets exactly the same values.
    params_file = run_dir / "parameters.toml"
    again = exps.run("run", "train", "--params-file", str(params_file))
    assert again.returncode == 0, again.stderr
    second = next(d for d in exps.run_dirs("train") if d != run_dir)
    assert parameters_toml(second) == parameters_toml(run_dir)
    second_values = seen(second)["values"]
    for name in [*expected, "random_seed", "deterministic"]:
        assert second_values[name] == values[name], name

    # CLI flags still override the file (dry run: show-params takes run's flags).
    dry = params_json(
        exps.run(
            "show-params", "train", "--json", "--params-file", str(params_file), "--no-augment"
        )
    )
    assert (dry["augment"]["default"], dry["augment"]["source"]) == (False, "cli")
    assert (dry["epochs"]["default"], dry["epochs"]["source"]) == (5, "params-file")
    assert (dry["random_seed"]["default"], dry["random_seed"]["source"]) == (seed, "params-file")


def test_run_help_lists_parameters(exps: Project) -> None:
    result = exps.run("run", "train", "--help", env=WIDE)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Train a small model." in out and "The longer description." in out
    for option, text in [
        ("--epochs", "Passes over the data. [default: 10]"),
        ("--lr", "Learning rate. [default: 0.001]"),
        ("--optimizer", "[choices: adam, sgd]"),
        ("--augment", "Random flips. [default: false]"),
        ("--no-augment", ""),
        ("--size", "Image size HxW. [default: 2x3]"),
        ("--layer", "[repeatable]"),
        ("--batch-size", "Samples per step. [default: 8]"),
        ("--random-seed", ""),
        ("--params-file", ""),
    ]:
        assert option in out and text in out, option
    needs = exps.run("run", "needs", "--help", env=WIDE)
    assert "A required label. [required]" in needs.stdout
    assert not (exps.root / "output").exists()
    listing = exps.run("run", "--help", env=WIDE)
    assert listing.returncode == 0
    assert "train" in listing.stdout and "needs" in listing.stdout


def test_failing_experiment_exits_1_with_traceback(exps: Project) -> None:
    result = exps.run("run", "fail")
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "ValueError: boom from main" in result.stderr
    run_dir = exps.only_run_dir("fail")
    assert str(run_dir) in result.stderr


def test_experiment_run_from_python(exps: Project) -> None:
    exps.write(
        "driver.py",
        """
        import json
        import pystematic as ps
        from exps import fail, train

        value = train.run({"epochs": 3, "lr": 0.5, "size": "6x7"})
        errors = []
        try:
            fail.run()
        except ValueError as e:
            errors.append(str(e))
        try:
            train.run({"epochs": "many"})
        except ps.ParameterError as e:
            errors.append(e.message)
        print(json.dumps({"value": value, "errors": errors}))
        """,
    )
    result = exps.python("driver.py")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["value"] == 6
    assert out["errors"][0] == "boom from main"
    assert "--epochs" in out["errors"][1] and "many" in out["errors"][1]
    run_dir = exps.only_run_dir("train")  # the bad-parameter call made none
    assert parameters_toml(run_dir)["epochs"] == 3
    assert parameters_toml(run_dir)["size"] == "6x7"
    assert seen(run_dir)["values"]["size"] == [6, 7]
    assert len(exps.run_dirs("fail")) == 1


# ---------------------------------------------------------------- show-params


def test_show_params_table_and_json(exps: Project) -> None:
    table = exps.run("show-params", "train", env=WIDE)
    assert table.returncode == 0, table.stderr
    for header in ("name", "type", "value", "source", "help"):
        assert header in table.stdout
    for cell in ("batch-size", "Samples per step.", "adam, sgd", "decorator", "2x3", "random-seed"):
        assert cell in table.stdout

    rows = params_json(exps.run("show-params", "train", "--json"))
    required_keys = {"name", "type", "default", "source", "choices", "required", "help"}
    assert all(required_keys <= set(row) for row in rows.values())
    assert list(rows)[:9] == [
        "epochs", "lr", "optimizer", "augment", "data", "size", "layer", "token", "batch_size",
    ]  # fmt: skip
    assert {k: rows["epochs"][k] for k in required_keys} == {
        "name": "epochs",
        "type": "int",
        "default": 10,
        "source": "decorator",
        "choices": None,
        "required": False,
        "help": "Passes over the data.",
    }
    assert rows["optimizer"]["choices"] == ["adam", "sgd"]
    assert rows["augment"]["type"] == "bool" and rows["augment"]["default"] is False
    assert rows["data"]["type"] == "path" and rows["data"]["default"] == "data"
    assert rows["size"]["type"] == "pair" and rows["size"]["default"] == "2x3"
    assert rows["layer"]["type"] == "list[int]" and rows["layer"]["default"] is None
    assert {"random_seed", "deterministic", "output_dir", "params_file"} <= set(rows)
    assert not (exps.root / "output").exists()


def test_show_params_is_a_dry_run(exps: Project) -> None:
    result = exps.run(
        "show-params", "train", "--json", "--epochs", "4", "--size", "8x9", "--augment",
        "--layer", "3", "--random-seed", "42",
        env={"TRAIN_TOKEN": "t"},
    )  # fmt: skip
    rows = params_json(result)
    assert {n: (r["default"], r["source"]) for n, r in rows.items() if n in (
        "epochs", "size", "augment", "layer", "token", "lr", "random_seed"
    )} == {
        "epochs": (4, "cli"),
        "size": ("8x9", "cli"),
        "augment": (True, "cli"),
        "layer": ([3], "cli"),
        "token": ("t", "env:TRAIN_TOKEN"),
        "lr": (0.001, "decorator"),
        "random_seed": (42, "cli"),
    }  # fmt: skip
    # Same validation as run.
    one_error_line(exps.run("show-params", "train", "--size", "8-9"), "--size", "8-9")
    one_error_line(exps.run("show-params", "needs"), "--label")
    assert not (exps.root / "output").exists()


PRECEDENCE = """
import json
import pystematic as ps

@ps.parameter("a", type=int, default=0)
@ps.parameter("b", type=int, default=0)
@ps.parameter("c", type=int, default=0)
@ps.parameter("d", type=int, default=0)
@ps.parameter("e", type=int, default=0, envvar="PREC_E")
@ps.parameter("f", type=int, default=0, envvar="PREC_F")
@ps.parameter("g", type=int, default=0, envvar="PREC_G")
@ps.experiment(defaults={"b": 1, "c": 1, "d": 1, "e": 1, "f": 1, "g": 1})
def prec(params, context):
    (context.output_dir / "seen.json").write_text(json.dumps(params.to_dict(), default=str))
"""


def test_precedence_chain_end_to_end(project: Project) -> None:
    project.write(
        "pystematic.toml",
        """
        [defaults]
        c = 2
        d = 2
        e = 2
        f = 2
        g = 2
        not_declared_here = "ignored"

        [experiments.prec]
        d = 3
        e = 3
        f = 3
        g = 3
        """,
    )
    project.write("prec.py", PRECEDENCE)
    project.write("params.toml", "f = 5\ng = 5\n")
    env = {"PREC_E": "4", "PREC_F": "4", "PREC_G": "4"}
    args = ("prec", "--params-file", "params.toml", "--g", "6")
    rows = params_json(project.run("show-params", *args, "--json", env=env))
    letters = "abcdefg"
    assert {n: (rows[n]["default"], rows[n]["source"]) for n in letters} == {
        "a": (0, "decorator"),
        "b": (1, "experiment"),
        "c": (2, "[defaults]"),
        "d": (3, "[experiments.prec]"),
        "e": (4, "env:PREC_E"),
        "f": (5, "params-file"),
        "g": (6, "cli"),
    }
    assert not (project.root / "output").exists()
    result = project.run("run", *args, env=env)
    assert result.returncode == 0, result.stderr
    values = seen(project.only_run_dir("prec"))
    assert {n: values[n] for n in letters} == {n: rows[n]["default"] for n in letters}

    # Unknown keys: an error in [experiments.NAME] and in a params file, not in [defaults].
    project.write("params.toml", "f = 5\nbogus = 1\n")
    one_error_line(project.run("run", *args), "'bogus'", "params-file")
    project.write("params.toml", 'f = "five"\n')
    one_error_line(project.run("run", *args), "--f", "five", "integer")
    one_error_line(project.run("run", "prec", "--params-file", "nope.toml"), "nope.toml")
    project.write("params.toml", "f = = 5\n")
    one_error_line(project.run("run", *args), "params.toml", "line 1")
    project.write("pystematic.toml", "[experiments.prec]\nzzz = 3\n")
    one_error_line(project.run("run", "prec"), "'zzz'", "[experiments.prec]")
    one_error_line(project.run("show-params", "prec"), "'zzz'")
    assert len(project.run_dirs("prec")) == 1


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("run", "trian"), ("'trian'", "did you mean", "'train'")),
        (("show-params", "trian"), ("did you mean", "'train'")),
        (("run", "zzzzzz"), ("'zzzzzz'", "train", "needs")),
        (("run", "train", "--epochs", "abc"), ("--epochs", "'abc'", "integer")),
        (("run", "train", "--lr", "fast"), ("--lr", "'fast'", "float")),
        (("run", "train", "--optimizer", "rmsprop"), ("--optimizer", "rmsprop", "adam, sgd")),
        (("run", "train", "--size", "big"), ("--size", "big")),
        (("run", "train", "--layer", "1", "--layer", "x"), ("--layer", "'x'")),
        (("run", "needs"), ("--label",)),
        (("run", "train", "--nope", "1"), ("--nope",)),
        (("run", "train", "--epochs"), ("--epochs",)),
        (("run", "train", "--random-seed", "seed"), ("--random-seed", "seed")),
    ],
)
def test_bad_input_is_one_line_and_makes_no_run_dir(
    exps: Project, args: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    one_error_line(exps.run(*args), *needles)
    assert not (exps.root / "output").exists()


def test_bad_env_value_names_the_variable(exps: Project) -> None:
    exps.write("bad_env.py", EXPS.replace("def train", "def envy").replace("TRAIN_TOKEN", "T2")
               .replace('"token", default="none"', '"token", type=int, default=0')
               .replace("def needs", "def needs2").replace("def fail", "def fail2"))  # fmt: skip
    one_error_line(exps.run("run", "envy", env={"T2": "abc"}), "--token", "abc", "env:T2")
    assert not (exps.root / "output").exists()


# ---------------------------------------------------------------- groups and param groups


GROUPS = '''
import json
import pystematic as ps

data = ps.param_group(
    "data",
    ps.parameter("batch_size", type=int, default=8, help="Samples per step."),
    ps.parameter("workers", type=int, default=0, help="Loader processes."),
)


@ps.parameter("image_size", type=int, default=32, help="Pixels.")
@ps.group
def vision():
    """Vision experiments."""


@ps.parameter("lr", type=float, default=0.1)
@data
@vision.experiment
def fit(params, context):
    """Fit a vision model."""
    (context.output_dir / "seen.json").write_text(json.dumps(params.to_dict(), default=str))


@data
@ps.experiment
def plain(params, context):
    """Uses the data group too."""
'''


def test_group_run_and_params(project: Project) -> None:
    project.write("vision.py", GROUPS)
    result = project.run("run", "vision", "fit", "--image_size", "64", "--workers", "2")
    assert result.returncode == 0, result.stderr
    run_dir = project.only_run_dir("vision.fit")
    assert run_dir.parent == project.root / "output" / "vision.fit"
    values = seen(run_dir)
    assert (values["image_size"], values["workers"], values["lr"]) == (64, 2, 0.1)
    assert parameters_toml(run_dir)["image_size"] == 64

    rows = params_json(project.run("show-params", "vision", "fit", "--json"))
    assert list(rows)[:4] == ["image_size", "lr", "batch_size", "workers"]
    assert sorted(row["name"] for row in project.run("list", "--json").json()) == [
        "plain",
        "vision.fit",
    ]
    helped = project.run("run", "vision", "--help", env=WIDE)
    assert "fit" in helped.stdout and "Vision experiments." in helped.stdout
    one_error_line(project.run("run", "vision", "fitt"), "did you mean", "'fit'")


def test_param_group_titles_a_help_section_in_each_experiment(project: Project) -> None:
    project.write("vision.py", GROUPS)
    for args in (("run", "vision", "fit", "--help"), ("run", "plain", "--help")):
        out = project.run(*args, env=WIDE).stdout
        assert "─ data ─" in out, out
        section = out[out.index("─ data ─") :]
        section = section[: section.index("╰")]
        assert "--batch-size" in section and "--workers" in section
        assert "Samples per step." in section and "[default: 8]" in section
        assert "--data-batch-size" not in out  # the group name does not prefix options


# ---------------------------------------------------------------- scripts


SOLO = '''
import json
import pystematic as ps


@ps.parameter("x", type=int, default=0, help="An x.")
@ps.experiment
def my_exp(params, context):
    """A single-script experiment."""
    (context.output_dir / "seen.json").write_text(json.dumps(params.to_dict(), default=str))


if __name__ == "__main__":
    ps.global_entrypoint()
'''


def test_global_entrypoint_in_a_script(project: Project) -> None:
    project.write("my_exp.py", SOLO)
    project.write("neighbour.py", 'raise RuntimeError("neighbours are not scanned")\n')
    listing = project.python("my_exp.py", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    assert [r["name"] for r in listing.json()] == ["my_exp"]
    result = project.python("my_exp.py", "run", "my_exp", "--x", "1")
    assert result.returncode == 0, result.stderr
    run_dir = project.only_run_dir("my_exp")
    assert seen(run_dir)["x"] == 1
    assert str(run_dir) in result.stderr
    # From another folder the script still finds its own project (kebab name works too).
    other = project.root.parent / "elsewhere"
    other.mkdir()
    one_error_line(
        project.python(str(project.root / "my_exp.py"), "run", "my-exp", "--x", "y"), "--x"
    )
    shown = project.python(
        str(project.root / "my_exp.py"), "show-params", "my-exp", "--json", cwd=other
    )
    assert params_json(shown)["x"]["help"] == "An x."


def test_experiment_cli_makes_a_script_one_command(project: Project) -> None:
    project.write(
        "single.py",
        SOLO.replace("ps.global_entrypoint()", "my_exp.cli()"),
    )
    project.write("neighbour.py", 'raise RuntimeError("neighbours are not scanned")\n')
    helped = project.python("single.py", "--help", env=WIDE)
    assert helped.returncode == 0, helped.stderr
    assert "--x" in helped.stdout and "An x. [default: 0]" in helped.stdout
    one_error_line(project.python("single.py", "--x", "abc"), "--x", "abc")
    assert not (project.root / "output").exists()
    result = project.python("single.py", "--x", "3")
    assert result.returncode == 0, result.stderr
    assert seen(project.only_run_dir("my_exp"))["x"] == 3


def test_script_that_is_also_a_discovered_module_runs(project: Project) -> None:
    project.write("pystematic.toml", 'modules = ["experiments"]\n')
    project.write("experiments/__init__.py", "")
    project.write("experiments/train.py", SOLO.replace("my_exp", "train"))
    result = project.python("experiments/train.py", "run", "train", "--x", "2")
    assert result.returncode == 0, result.stderr
    assert seen(project.only_run_dir("train"))["x"] == 2


def test_python_m_pystematic_without_arguments_shows_help(project: Project) -> None:
    result = project.run()
    assert result.returncode == 2  # a missing command, as Click does
    assert "Usage" in result.stdout + result.stderr
    for command in ("list", "run", "show-params", "runs", "distributed"):
        assert command in result.stdout + result.stderr


def test_snake_case_experiment_names_in_code_kebab_on_the_cli(project: Project) -> None:
    project.write("my_exp.py", SOLO)
    assert [r["name"] for r in project.run("list", "--json").json()] == ["my_exp"]
    for name in ("my_exp", "my-exp"):
        rows = params_json(project.run("show-params", name, "--json", "--x", "5"))
        assert rows["x"]["default"] == 5


def test_shell_completion_knows_experiments_and_their_parameters(exps: Project) -> None:
    def complete(words: str) -> list[str]:
        env = {
            "_PYSTEMATIC_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split(" ")) - 1),
        }
        result = exps.run(env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    names = complete("pystematic run ")
    assert {"train", "needs", "fail"} <= set(names)
    options = complete("pystematic run train --")
    assert "--epochs" in options
    assert "--random-seed" in options


# ---------------------------------------------------------------- tables that fit

LONG_HELP = (
    "The probability that a training example is flipped horizontally before it is "
    "fed to the network during every epoch of training."
)
TABLES = f'''
import pystematic as ps

@ps.parameter("flip_probability", type=float, default=0.5, help={LONG_HELP!r})
@ps.parameter("optimizer", default="adam", choices=["adam", "sgd"], help="Optimizer.")
@ps.parameter("epochs", type=int, default=3, help="Passes over the data.")
@ps.experiment
def train(params, context):
    """Train a small classifier on the synthetic data set of this project."""
    context.recorder.scalar("train/accuracy", 0.5 + params.epochs / 100)
    context.recorder.scalar("train/loss", 1.0 / params.epochs)
    context.recorder.step()
'''


def words_intact(text: str, sentence: str) -> bool:
    """Every word of *sentence* appears whole in *text* (wrapped at word boundaries)."""
    found = set(text.replace("│", " ").split())
    return all(word in found for word in sentence.split())


@pytest.mark.parametrize("columns", [80, 200, None])
def test_tables_fit_the_width_and_never_split_words(project: Project, columns: int | None) -> None:
    project.write("exps.py", TABLES)
    for epochs in ("2", "4"):
        assert project.run("run", "train", "--epochs", epochs).returncode == 0
    env = {"COLUMNS": str(columns)} if columns else {}
    width = columns or 200  # piped: no terminal width to keep to
    for args in (["show-params", "train"], ["list"], ["runs", "train"]):
        result = project.run(*args, env=env)
        assert result.returncode == 0, (args, result.stderr)
        lines = result.stdout.splitlines()
        assert max(len(line) for line in lines) <= width, (args, result.stdout)
        assert "\x1b[" not in result.stdout  # captured output: no colour codes
    shown = project.run("show-params", "train", env=env).stdout
    assert words_intact(shown, LONG_HELP), shown
    assert "value" in shown.splitlines()[2]  # the effective value's column is named so
    assert "--output-dir" in shown and "(--all shows them)" in shown
    rows = [line for line in shown.splitlines() if line.startswith("│ --")]
    assert [row.split()[1] for row in rows] == ["--flip-probability", "--optimizer", "--epochs"]
    if columns == 200:
        assert len(rows) == 3  # one line each where the help fits
    listed = project.run("list", env=env).stdout
    assert words_intact(
        listed, "Train a small classifier on the synthetic data set of this project."
    )
    runs = project.run("runs", "train", env=env).stdout
    assert "accuracy" in runs and "0.54" in runs and "epochs" in runs  # metrics never dropped


def test_show_params_all_lists_the_builtins(project: Project) -> None:
    project.write("exps.py", TABLES)
    shown = project.run("show-params", "train", "--all", env=WIDE).stdout
    assert "built-in parameters" in shown
    assert "│ --random-seed" in shown and "(--all shows them)" not in shown


def test_version_flag_and_no_negative_form(project: Project) -> None:
    result = project.run("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"pystematic {__version__}")
    helped = project.run("--help", env=WIDE).stdout
    assert "--version" in helped and "--no-version" not in helped
