"""The original pystematic's examples, written as its users write them, run unchanged.

Each script below has the shape of an example of pystematic 1.x (the import line and
decorator names are the same there): a script that makes itself the CLI of an
experiment or of a group, run with plain ``python``.
"""

from __future__ import annotations

from conftest import Project

WIDE = {"COLUMNS": "200"}

HELLO_WORLD = """
import pystematic as ps

@ps.parameter(name="name", type=str, help="Who to greet.", required=True)
@ps.experiment
def hello_world(params):
    print(f"Hello {params['name']}!")

if __name__ == "__main__":
    hello_world.cli()
"""

SIMPLE = """
import pystematic as ps

@ps.experiment
def my_experiment(params):
    print("Hello from my_experiment")

if __name__ == "__main__":
    my_experiment.cli()
"""

NESTED_GROUPS = """
import pystematic as ps

@ps.group
def outer():
    pass

@outer.group
def middle():
    pass

@outer.experiment
def first(params):
    print("Hello from first")

@middle.experiment
def second(params):
    print("Hello from second")

@middle.group
def inner():
    pass

@inner.experiment
def third(params):
    print("Hello from third", ps.context.output_dir.parent.name)

if __name__ == "__main__":
    outer.cli()
"""

PARAM_GROUPS = """
import pystematic as ps

@ps.parameter(name="plain", type=str, help="A parameter of no group.", required=True)
@ps.param_group(
    "Data settings",
    ps.parameter(name="data_root", type=str, default="data", help="Where the data is."),
    ps.parameter(name="batch_size", type=int, default=8, help="Samples per step."),
)
@ps.param_group(
    "Model settings",
    ps.parameter(name="width", type=int, default=64, help="Hidden units."),
)
@ps.experiment
def param_groups(params):
    print(params["plain"], params["data_root"], params["batch_size"], params["width"])

if __name__ == "__main__":
    param_groups.cli()
"""


def test_hello_world(project: Project) -> None:
    project.write("hello_world.py", HELLO_WORLD)
    result = project.python("hello_world.py", "--name", "World")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Hello World!"
    missing = project.python("hello_world.py")
    assert missing.returncode == 2
    assert missing.stderr.strip() == "error: missing value for required parameter --name"
    assert len(project.run_dirs("hello_world")) == 1


def test_simple(project: Project) -> None:
    project.write("simple.py", SIMPLE)
    result = project.python("simple.py")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Hello from my_experiment"
    assert (project.only_run_dir("my_experiment") / "run.json").is_file()


def test_nested_groups(project: Project) -> None:
    project.write("groups.py", NESTED_GROUPS)
    helped = project.python("groups.py", "--help", env=WIDE)
    assert helped.returncode == 0, helped.stderr
    assert "first" in helped.stdout and "middle" in helped.stdout
    assert project.python("groups.py", "first").stdout.strip() == "Hello from first"
    assert project.python("groups.py", "middle", "second").stdout.strip() == "Hello from second"
    third = project.python("groups.py", "middle", "inner", "third")
    assert third.stdout.strip() == "Hello from third outer.middle.inner.third"
    unknown = project.python("groups.py", "middle", "inner", "thrid")
    assert unknown.returncode == 2
    assert "did you mean 'third'" in unknown.stderr


def test_param_groups(project: Project) -> None:
    project.write("param_groups.py", PARAM_GROUPS)
    helped = project.python("param_groups.py", "--help", env=WIDE)
    assert helped.returncode == 0, helped.stderr
    for needle in ("Data settings", "Model settings", "--data-root", "--width", "--plain"):
        assert needle in helped.stdout, needle
    result = project.python("param_groups.py", "--plain", "x", "--batch-size", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "x data 3 64"
