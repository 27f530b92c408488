"""Discovery through the real CLI: what ``list`` finds, skips and caches."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import Project, Result

WIDE = {"COLUMNS": "200"}


@pytest.fixture(autouse=True)
def cache_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache tests count imports: a shell that turned the cache off must not leak in."""
    monkeypatch.delenv("PYSTEMATIC_NO_CACHE", raising=False)


def experiment_source(name: str, doc: str = "", marker: str | None = None) -> str:
    """A module defining one experiment; with *marker*, it notes each import in that file."""
    lines = ["import pystematic as ps", ""]
    if marker:
        lines += [
            "import os",
            "_folder = os.path.dirname(os.path.abspath(__file__))",
            f"with open(os.path.join(_folder, {marker!r}), 'a') as _f:",
            "    _f.write(__name__ + '\\n')",
            "",
        ]
    lines += [
        '@ps.parameter("epochs", type=int, default=3, help="Passes.")',
        "@ps.experiment",
        f"def {name}(params, context):",
        f"    {doc!r}" if doc else "    pass",
        "",
    ]
    return "\n".join(lines)


BROKEN = 'raise RuntimeError("must not be imported")\n'


def one_error_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


def listed(result: Result, code: int = 0) -> list[str]:
    """The names ``list --json`` printed; *code* is 1 when a module failed to import."""
    assert result.returncode == code, result.stderr
    return [row["name"] for row in json.loads(result.stdout)]


def test_list_from_modules(project: Project) -> None:
    project.write("pystematic.toml", 'modules = ["experiments"]\n')
    project.write("experiments/__init__.py", "")
    project.write("experiments/train.py", experiment_source("train", "Train a model.\n\nMore."))
    project.write("experiments/sub/__init__.py", "")
    project.write("experiments/sub/evaluate.py", experiment_source("evaluate", "Evaluate it."))
    project.write("stray.py", BROKEN)  # not under `modules`: not scanned

    table = project.run("list", env=WIDE)
    assert table.returncode == 0, table.stderr
    assert table.stderr == ""
    for needle in ("train", "experiments.train", "Train a model.", "evaluate"):
        assert needle in table.stdout
    assert "experiments.sub.evaluate" in table.stdout
    assert "More." not in table.stdout

    result = project.run("list", "--json")
    assert result.returncode == 0, result.stderr
    rows = result.json()
    assert all(list(row) == ["name", "module", "file", "description"] for row in rows)
    assert sorted(rows, key=lambda r: r["name"]) == [
        {
            "name": "evaluate",
            "module": "experiments.sub.evaluate",
            "file": "experiments/sub/evaluate.py",
            "description": "Evaluate it.",
        },
        {
            "name": "train",
            "module": "experiments.train",
            "file": "experiments/train.py",
            "description": "Train a model.",
        },
    ]


def test_configured_modules_under_a_dot_folder(tmp_path: Path) -> None:
    """Dot-folders inside a package are skipped, not the ones the project lives under."""
    from pystematic.discovery import candidate_files
    from pystematic.project import load_project

    hidden = Project(tmp_path / ".work" / "proj")
    hidden.write("pystematic.toml", 'modules = ["exps"]\n')
    hidden.write("exps/__init__.py", "")
    hidden.write("exps/train.py", experiment_source("train"))
    hidden.write("exps/.backup/old.py", BROKEN)
    found = candidate_files(load_project(explicit_root=hidden.root))
    assert [p.relative_to(hidden.root).as_posix() for p in found] == [
        "exps/__init__.py",
        "exps/train.py",
    ]


def test_list_from_paths_and_pattern(project: Project) -> None:
    project.write("pystematic.toml", 'paths = ["scripts"]\npattern = "exp_*.py"\n')
    project.write("scripts/exp_one.py", experiment_source("one", "First."))
    project.write("scripts/deeper/exp_two.py", experiment_source("two", "Second."))
    project.write("scripts/helper.py", BROKEN)  # does not match the pattern
    project.write("top.py", BROKEN)  # outside `paths`
    result = project.run("list", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in result.json()}
    assert sorted(rows) == ["one", "two"]
    assert rows["one"]["module"] == "scripts.exp_one"
    assert rows["two"]["file"] == "scripts/deeper/exp_two.py"


def test_list_from_pyproject(project: Project) -> None:
    project.write(
        "pyproject.toml",
        """
        [project]
        name = "demo"

        [tool.pystematic]
        modules = ["exps"]
        """,
    )
    project.write("exps.py", experiment_source("fit", "Fit."))
    project.write("other.py", BROKEN)
    (project.root / "sub").mkdir()
    result = project.run("list", "--json", cwd=project.root / "sub")  # found from below
    assert result.returncode == 0, result.stderr
    assert result.json() == [
        {"name": "fit", "module": "exps", "file": "exps.py", "description": "Fit."}
    ]


def test_no_config_scans_the_folder_but_not_excluded_ones(project: Project) -> None:
    project.write("a.py", experiment_source("alpha", "Alpha."))
    project.write("pkg/b.py", experiment_source("beta", "Beta."))
    project.write("hy-phen.py", experiment_source("gamma", "Not importable by name."))
    project.write("tests/test_x.py", BROKEN)
    project.write(".hidden/h.py", BROKEN)
    project.write("myenv/pyvenv.cfg", "home = /usr/bin\n")
    project.write("myenv/lib/site.py", BROKEN)
    project.write("output/old/copy.py", BROKEN)
    result = project.run("list", "--json")
    assert result.returncode == 0, result.stderr
    assert sorted(listed(result)) == ["alpha", "beta", "gamma"]
    assert result.stderr == ""


def test_custom_output_dir_and_exclude_are_not_scanned(project: Project) -> None:
    project.write("pystematic.toml", 'output_dir = "results"\nexclude = ["scratch"]\n')
    project.write("a.py", experiment_source("alpha"))
    project.write("results/train/run/saved.py", BROKEN)
    project.write("scratch/wip.py", BROKEN)
    result = project.run("list", "--json")
    assert result.returncode == 0, result.stderr
    assert listed(result) == ["alpha"]


def test_project_flag_points_at_another_folder(project: Project, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "pystematic.toml").write_text('modules = ["exps"]\n')
    (other / "exps.py").write_text(experiment_source("remote", "Elsewhere."))
    project.write("local.py", experiment_source("local"))
    for flag in (["-C", str(other)], [f"--project={other}"]):
        result = project.run(*flag, "list", "--json")
        assert result.returncode == 0, result.stderr
        assert listed(result) == ["remote"]
    assert listed(project.run("list", "--json")) == ["local"]


def test_console_script_and_version(project: Project) -> None:
    project.write("a.py", experiment_source("alpha"))
    script = Path(sys.executable).with_name("pystematic")
    if script.exists():
        result = project.python(str(script), "list", "--json")
        assert result.returncode == 0, result.stderr
        assert listed(result) == ["alpha"]
    import pystematic

    version = project.run("--version")
    assert version.returncode == 0
    assert pystematic.__version__ in version.stdout


def test_import_failure_is_reported_and_the_rest_listed(project: Project) -> None:
    project.write("good.py", experiment_source("good", "Good."))
    project.write("bad.py", "import pystematic as ps\nraise ValueError('broken on purpose')\n")
    project.write("missing.py", "import no_such_module_xyz\n")
    for args in (("list",), ("list", "--json")):
        result = project.run(*args, env=WIDE)
        assert result.returncode == 1
        assert "good" in result.stdout
        errors = result.stderr.strip().splitlines()
        assert len(errors) == 2, result.stderr
        assert any("bad.py" in e and "ValueError: broken on purpose" in e for e in errors)
        assert any("missing.py" in e and "no_such_module_xyz" in e for e in errors)
    assert listed(project.run("list", "--json"), code=1) == ["good"]
    # The experiments that did import still run; an unknown name mentions the failures.
    unknown = project.run("show-params", "bda")
    assert unknown.returncode == 2
    assert "bad.py" in unknown.stderr.strip().splitlines()[-1]


def test_builtin_parameter_name_is_reported(project: Project) -> None:
    project.write(
        "clash.py",
        """
        import pystematic as ps

        @ps.parameter("random_seed", type=int)
        @ps.experiment
        def clash(params, context):
            pass
        """,
    )
    result = project.run("list")
    assert result.returncode == 1
    assert "clash.py" in result.stderr and "'random_seed'" in result.stderr
    assert "built-in" in result.stderr


def test_duplicate_names_are_an_error_naming_both_files(project: Project) -> None:
    project.write("one.py", experiment_source("train"))
    project.write("sub/two.py", experiment_source("train"))
    for args in (("list",), ("run", "train"), ("show-params", "train")):
        result = project.run(*args)
        assert result.returncode == 2, (args, result)
        line = one_error_line(result)
        assert "'train'" in line and "one.py" in line and "sub/two.py" in line
    assert not (project.root / "output").exists()


def test_reexported_experiment_is_not_a_duplicate(project: Project) -> None:
    project.write("a.py", experiment_source("train", "Train."))
    project.write("b.py", "from a import train\n\nEXPORTED = [train]\n")
    result = project.run("list", "--json")
    assert result.returncode == 0, result.stderr
    assert [(r["name"], r["file"]) for r in result.json()] == [("train", "a.py")]


def test_script_run_as_main_is_not_a_duplicate(project: Project) -> None:
    project.write("pystematic.toml", 'modules = ["experiments"]\n')
    project.write("experiments/__init__.py", "")
    project.write(
        "experiments/train.py",
        experiment_source("train", "Train.")
        + "\nif __name__ == '__main__':\n    ps.global_entrypoint()\n",
    )
    project.write("experiments/other.py", experiment_source("other"))
    result = project.python("experiments/train.py", "list", "--json")
    assert result.returncode == 0, result.stderr
    assert sorted(listed(result)) == ["other", "train"]


def test_group_members_are_listed_dotted(project: Project) -> None:
    project.write(
        "vision.py",
        """
        import pystematic as ps

        @ps.parameter("image_size", type=int, default=32)
        @ps.group
        def vision():
            '''Vision experiments.'''

        @vision.experiment
        def fit(params, context):
            '''Fit a model.'''
        """,
    )
    result = project.run("list", "--json")
    assert result.returncode == 0, result.stderr
    assert result.json() == [
        {
            "name": "vision.fit",
            "module": "vision",
            "file": "vision.py",
            "description": "Fit a model.",
        }
    ]


# ---------------------------------------------------------------- the cache


def imports(project: Project) -> int:
    marker = project.root / "imported.txt"
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def test_cache_skips_imports_until_a_file_changes(project: Project) -> None:
    project.write("helper.py", "SCALE = 1\n")
    project.write(
        "exp.py",
        experiment_source("train", "Train.", marker="imported.txt") + "\nimport helper\n",
    )
    first = project.run("list", "--json")
    assert first.returncode == 0, first.stderr
    assert imports(project) == 1
    assert (project.root / ".pystematic_cache").is_dir()

    second = project.run("list", "--json")
    assert second.stdout == first.stdout
    assert imports(project) == 0 + 1  # read from the cache: not imported again

    shown = project.run("show-params", "train", "--json")
    assert shown.returncode == 0, shown.stderr
    assert imports(project) == 1
    assert {r["name"]: r["default"] for r in shown.json()}["epochs"] == 3
    helped = project.run("show-params", "train", "--help", env=WIDE)
    assert "Passes." in helped.stdout
    assert imports(project) == 1

    # Editing the scanned file invalidates the cache: the new experiment shows up.
    source = (project.root / "exp.py").read_text()
    project.write("exp.py", source + "\n" + experiment_source("evaluate", "Evaluate.")[24:])
    third = project.run("list", "--json")
    assert sorted(listed(third)) == ["evaluate", "train"]
    assert imports(project) == 2
    assert project.run("list", "--json").stdout == third.stdout
    assert imports(project) == 2

    # So does editing a project module it imports.
    project.write("helper.py", "SCALE = 22\n")
    assert sorted(listed(project.run("list", "--json"))) == ["evaluate", "train"]
    assert imports(project) == 3

    # A new file in the scanned folder too.
    project.write("more.py", experiment_source("more"))
    assert sorted(listed(project.run("list", "--json"))) == ["evaluate", "more", "train"]
    assert imports(project) == 4


def test_cached_metadata_matches_imported_metadata(project: Project) -> None:
    project.write(
        "exp.py",
        """
        import pathlib
        import pystematic as ps

        def pair(text):
            a, b = text.split("x")
            return int(a), int(b)

        data = ps.param_group("data", ps.parameter("batch_size", type=int, default=8))

        @ps.parameter("size", type=pair, default="2x3", help="HxW.")
        @ps.parameter("root", type=pathlib.Path, default=pathlib.Path("data"))
        @ps.parameter("mode", default="fast", choices=["fast", "slow"])
        @ps.parameter("layer", type=int, multiple=True)
        @ps.parameter("label", required=True, envvar="LABEL")
        @data
        @ps.experiment(defaults={"mode": "slow"})
        def train(params, context):
            '''Train.'''
        """,
    )
    env = {"LABEL": "x"}
    fresh = project.run("show-params", "train", "--json", env={**env, "PYSTEMATIC_NO_CACHE": "1"})
    assert fresh.returncode == 0, fresh.stderr
    project.run("list")  # writes the cache
    cached = project.run("show-params", "train", "--json", env=env)
    assert cached.returncode == 0, cached.stderr
    assert cached.json() == fresh.json()
    rows = {r["name"]: r for r in cached.json()}
    assert rows["size"]["default"] == "2x3" and rows["size"]["type"] == "pair"
    assert rows["mode"]["default"] == "slow" and rows["mode"]["source"] == "experiment"
    assert rows["layer"]["type"] == "list[int]"
    assert rows["label"]["required"] is True and rows["label"]["source"] == "env:LABEL"


def test_run_always_imports(project: Project) -> None:
    project.write("exp.py", experiment_source("train", "Train.", marker="imported.txt"))
    assert project.run("list").returncode == 0
    assert project.run("list").returncode == 0
    assert imports(project) == 1
    result = project.run("run", "train", "--epochs", "1")
    assert result.returncode == 0, result.stderr
    assert imports(project) == 2
    assert len(project.run_dirs("train")) == 1


def test_help_and_list_do_not_import_torch(project: Project) -> None:
    project.write("exp.py", experiment_source("train", "Train."))
    code = textwrap.dedent(
        """
        import contextlib, io, json, sys
        from pystematic.cli import run_cli
        with contextlib.redirect_stdout(io.StringIO()):
            codes = [run_cli(args) for args in ARGS]
        heavy = [m for m in ("torch", "tensorboardX") if m in sys.modules]
        print(json.dumps({"codes": codes, "heavy": heavy}))
        """
    )
    for args in (
        [["--help"]],
        [["list"]],  # imports the user module (no cache yet)
        [["list"], ["list", "--json"]],  # from the cache
        [["show-params", "train"], ["show-params", "train", "--json", "--epochs", "4"]],
        [["run", "--help"], ["run", "train", "--help"]],
    ):
        result = project.python("-c", code.replace("ARGS", repr(args)))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"codes": [0] * len(args), "heavy": []}, args


def test_warm_cache_imports_nothing_and_leaves_sys_path(project: Project) -> None:
    project.write("pystematic.toml", 'modules = ["pkg.sub"]\n')
    marker = project.root / "imported.txt"
    project.write("pkg/__init__.py", f"open({str(marker)!r}, 'a').write('pkg\\n')\n")
    project.write("pkg/sub/__init__.py", "")
    project.write("pkg/sub/exp.py", experiment_source("train", "Train."))
    assert listed(project.run("list", "--json")) == ["train"]
    assert imports(project) == 1
    code = textwrap.dedent(
        """
        import contextlib, io, json, sys
        before = list(sys.path)
        modules = set(sys.modules)
        from pystematic.cli import run_cli
        with contextlib.redirect_stdout(io.StringIO()):
            codes = [run_cli(["list", "--json"]), run_cli(["show-params", "train"])]
        user = sorted(m for m in set(sys.modules) - modules if m.split(".")[0] == "pkg")
        print(json.dumps({"codes": codes, "same_path": sys.path == before, "user": user}))
        """
    )
    result = project.python("-c", code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"codes": [0, 0], "same_path": True, "user": []}
    assert imports(project) == 1


def test_run_imports_only_the_module_that_defines_the_experiment(project: Project) -> None:
    project.write("a.py", experiment_source("train", "Train.", marker="imported.txt"))
    project.write("b.py", experiment_source("other", "Other.", marker="imported.txt"))
    assert sorted(listed(project.run("list", "--json"))) == ["other", "train"]
    assert imports(project) == 2
    assert project.run("run", "train").returncode == 0
    assert imports(project) == 3
    marker = project.root / "imported.txt"
    assert marker.read_text().splitlines()[-1] == "a"
    # A changed file makes the cache stale: then the whole project is imported.
    project.write("b.py", experiment_source("other", "Changed.", marker="imported.txt"))
    assert project.run("run", "train").returncode == 0
    assert sorted(marker.read_text().splitlines()[-2:]) == ["a", "b"]
