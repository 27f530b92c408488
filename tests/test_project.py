"""Finding the project root and reading pystematic.toml / pyproject.toml."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import Project
from pystematic.errors import ConfigError
from pystematic.project import DEFAULT_BACKENDS, load_project


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_pystematic_toml_settings_are_read_and_made_absolute(tmp_path: Path) -> None:
    config = write(
        tmp_path / "pystematic.toml",
        'modules = ["experiments"]\noutput_dir = "results"\nrecorder = ["jsonl"]\n'
        'exclude = ["scratch"]\npattern = "exp_*.py"\n'
        "[defaults]\nbatch_size = 32\n[experiments.train]\nepochs = 20\n",
    )
    project = load_project(tmp_path)
    assert project.root == tmp_path.resolve()
    assert project.config_file == config
    assert project.modules == ("experiments",)
    assert project.paths == ()  # `paths` defaults to ["."] only when `modules` is unset
    assert project.pattern == "exp_*.py"
    assert project.exclude == ("scratch",)
    assert project.output_dir == tmp_path.resolve() / "results"
    assert project.output_dir.is_absolute()
    assert project.recorder == ("jsonl",)
    assert project.defaults == {"batch_size": 32}
    assert project.experiments == {"train": {"epochs": 20}}


def test_defaults_without_settings(tmp_path: Path) -> None:
    write(tmp_path / "pystematic.toml", "")
    project = load_project(tmp_path)
    assert project.paths == (tmp_path.resolve(),)
    assert project.output_dir == tmp_path.resolve() / "output"
    assert project.recorder == DEFAULT_BACKENDS == ("tensorboard", "jsonl")
    assert project.pattern == "*.py"
    assert project.defaults == {} and project.experiments == {}


def test_paths_and_modules_together(tmp_path: Path) -> None:
    write(tmp_path / "pystematic.toml", 'modules = ["pkg"]\npaths = ["scripts", "one.py"]\n')
    project = load_project(tmp_path)
    assert project.modules == ("pkg",)
    assert project.paths == (tmp_path.resolve() / "scripts", tmp_path.resolve() / "one.py")


def test_root_is_the_nearest_folder_with_a_config(tmp_path: Path) -> None:
    write(tmp_path / "pystematic.toml", 'output_dir = "outer"\n')
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    assert load_project(inner).root == tmp_path.resolve()
    write(tmp_path / "a" / "pystematic.toml", 'output_dir = "inner"\n')
    project = load_project(inner)
    assert project.root == (tmp_path / "a").resolve()
    assert project.output_dir == (tmp_path / "a" / "inner").resolve()


def test_pyproject_tool_table(tmp_path: Path) -> None:
    write(
        tmp_path / "pyproject.toml",
        '[project]\nname = "x"\n[tool.pystematic]\nmodules = ["experiments"]\n'
        "[tool.pystematic.defaults]\nbatch_size = 8\n"
        "[tool.pystematic.experiments.train]\nepochs = 2\n",
    )
    sub = tmp_path / "src"
    sub.mkdir()
    project = load_project(sub)
    assert project.root == tmp_path.resolve()
    assert project.config_file == tmp_path / "pyproject.toml"
    assert project.modules == ("experiments",)
    assert project.defaults == {"batch_size": 8}
    assert project.experiments == {"train": {"epochs": 2}}


def test_pyproject_without_our_table_is_not_a_root(tmp_path: Path) -> None:
    write(tmp_path / "pystematic.toml", 'output_dir = "top"\n')
    write(tmp_path / "pkg" / "pyproject.toml", '[project]\nname = "pkg"\n[tool.ruff]\n')
    project = load_project(tmp_path / "pkg")
    assert project.root == tmp_path.resolve()


def test_pystematic_toml_wins_over_pyproject_in_one_folder(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", '[tool.pystematic]\noutput_dir = "from_pyproject"\n')
    write(tmp_path / "pystematic.toml", 'output_dir = "from_own"\n')
    assert load_project(tmp_path).output_dir.name == "from_own"


def test_no_config_means_the_start_folder_is_scanned(tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    project = load_project(folder)
    assert project.root == folder.resolve()
    assert project.config_file is None
    assert project.paths == (folder.resolve(),)
    assert project.output_dir == folder.resolve() / "output"


def test_script_without_config_scans_only_the_script(tmp_path: Path) -> None:
    script = write(tmp_path / "scripts" / "my_exp.py", "")
    project = load_project(script=script)
    assert project.root == script.parent.resolve()
    assert project.paths == (script.resolve(),)


def test_script_inside_a_configured_project_uses_the_config(tmp_path: Path) -> None:
    write(tmp_path / "pystematic.toml", 'modules = ["experiments"]\n')
    script = write(tmp_path / "experiments" / "train.py", "")
    project = load_project(tmp_path / "elsewhere", script=script)
    assert project.root == tmp_path.resolve()
    assert project.modules == ("experiments",)


def test_explicit_root(tmp_path: Path) -> None:
    other = tmp_path / "other"
    write(other / "pystematic.toml", 'output_dir = "o"\n')
    here = tmp_path / "here"
    write(here / "pystematic.toml", 'output_dir = "h"\n')
    project = load_project(here, explicit_root=other)
    assert project.root == other.resolve()
    assert project.output_dir == other.resolve() / "o"
    with pytest.raises(ConfigError, match="does not exist"):
        load_project(explicit_root=tmp_path / "missing")


def test_malformed_toml_names_file_and_position(tmp_path: Path) -> None:
    config = write(tmp_path / "pystematic.toml", 'modules = ["a"]\noutput_dir = \n')
    with pytest.raises(ConfigError) as info:
        load_project(tmp_path)
    message = info.value.message
    assert str(config) in message
    assert re.search(r"line 2, column \d+", message), message


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('modulez = ["a"]\n', "modulez"),
        ("modules = 3\n", "modules"),
        ('modules = ["a", 1]\n', "modules"),
        ("output_dir = 1\n", "output_dir"),
        ("pattern = []\n", "pattern"),
        ('defaults = "x"\n', "defaults"),
        ('[experiments]\ntrain = "x"\n', "experiments.train"),
        ("recorder = 5\n", "recorder"),
    ],
)
def test_bad_settings_are_config_errors(tmp_path: Path, text: str, needle: str) -> None:
    config = write(tmp_path / "pystematic.toml", text)
    with pytest.raises(ConfigError) as info:
        load_project(tmp_path)
    assert needle in info.value.message
    assert str(config) in info.value.message
    assert info.value.exit_code == 2


def test_malformed_config_on_the_command_line(project: Project) -> None:
    project.write("pystematic.toml", "[defaults]\nbatch_size = = 3\n")
    project.write(
        "exp.py", "import pystematic as ps\n\n@ps.experiment\ndef a(params, context):\n    pass\n"
    )
    for args in (("list",), ("run", "a"), ("show-params", "a")):
        result = project.run(*args)
        assert result.returncode == 2, (args, result)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert str(project.root / "pystematic.toml") in lines[0]
        assert re.search(r"line 2, column \d+", lines[0])
        assert "Traceback" not in result.stderr
    assert not (project.root / "output").exists()
