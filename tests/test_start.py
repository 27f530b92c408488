"""Starting a run: what is checked before a run dir exists, and --resume's checks."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import Project, Result

EXPS = """
import pystematic as ps

@ps.parameter("epochs", type=int, default=1)
@ps.experiment
def train(params, context):
    context.recorder.scalar("loss", 1.0)
    context.recorder.step()

vision = ps.group("vision")

@ps.parameter("size", type=int, default=8)
@vision.experiment
def fit(params, context):
    (context.output_dir / "size.txt").write_text(str(params.size))
"""


def error_line(result: Result, *needles: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_unknown_recorder_backend_from_the_flag(project: Project) -> None:
    project.write("exps.py", EXPS)
    result = project.run("run", "train", "--recorder", "jsonnl")
    error_line(result, "unknown recorder backend 'jsonnl'", "did you mean 'jsonl'")
    assert not (project.root / "output").exists()


def test_unknown_recorder_backend_from_the_config(project: Project) -> None:
    project.write("pystematic.toml", 'recorder = ["tensorboard", "bogus"]\n')
    project.write("exps.py", EXPS)
    result = project.run("run", "train")
    error_line(result, "unknown recorder backend 'bogus'", "known: ")
    assert not (project.root / "output").exists()


def test_nested_experiment_tables_address_group_members(project: Project) -> None:
    project.write(
        "pystematic.toml",
        "[experiments.vision.fit]\nsize = 3\n\n[experiments.train]\nepochs = 4\n",
    )
    project.write("exps.py", EXPS)
    shown = {r["name"]: r for r in project.run("show-params", "vision", "fit", "--json").json()}
    assert shown["size"]["default"] == 3
    assert shown["size"]["source"] == "[experiments.vision.fit]"
    assert project.run("run", "vision", "fit").returncode == 0
    assert (project.only_run_dir("vision.fit") / "size.txt").read_text() == "3"


def test_quoted_experiment_tables_still_work(project: Project) -> None:
    project.write("pystematic.toml", '[experiments."vision.fit"]\nsize = 5\n')
    project.write("exps.py", EXPS)
    shown = {r["name"]: r for r in project.run("show-params", "vision", "fit", "--json").json()}
    assert shown["size"]["default"] == 5


def test_a_table_naming_no_experiment_is_an_error(project: Project) -> None:
    project.write("pystematic.toml", "[experiments.vision.fitt]\nsize = 3\n")
    project.write("exps.py", EXPS)
    result = project.run("run", "train")
    error_line(result, "[experiments.vision.fitt] names no experiment", "did you mean 'vision.fit'")
    assert not (project.root / "output").exists()


def run_json(run_dir: Path) -> dict[str, object]:
    data = json.loads((run_dir / "run.json").read_text())
    assert isinstance(data, dict)
    return data


def test_resume_without_a_checkpoint_is_refused_and_changes_nothing(project: Project) -> None:
    project.write("exps.py", EXPS)
    assert project.run("run", "train").returncode == 0
    run_dir = project.only_run_dir("train")
    before = (run_dir / "run.json").read_bytes()
    result = project.run("run", "train", "--resume", str(run_dir))
    error_line(result, "saved no checkpoint to continue from")
    assert (run_dir / "run.json").read_bytes() == before
    assert not (run_dir / "parameters.1.toml").exists()


def test_resume_from_a_truncated_checkpoint_is_refused(project: Project) -> None:
    project.write("exps.py", EXPS)
    assert project.run("run", "train").returncode == 0
    run_dir = project.only_run_dir("train")
    broken = run_dir / "checkpoints" / "checkpoint-1.pt"
    broken.parent.mkdir()
    broken.write_bytes(b"PK\x03\x04 only the start of a zip archive")
    result = project.run("run", "train", "--resume", str(broken))
    error_line(result, "not a complete checkpoint")
    assert run_json(run_dir)["status"] == "completed"
    result = project.run("run", "train", "--resume", str(run_dir))
    error_line(result, "saved no checkpoint to continue from")
    assert run_json(run_dir)["status"] == "completed"


def test_bad_inputs_found_by_the_faults_suite(project: Project) -> None:
    """Each was a traceback in 0.1.0: now one line, exit 2, nothing created."""
    project.write("exps.py", EXPS)
    project.root.joinpath("latin1.toml").write_bytes(b'epochs = "\xff"\n')
    cases = {
        ("--random-seed", "-1"): "invalid value for --random-seed: -1 is not in 0..2**32-1",
        ("--tag", "\udcff"): "is not valid UTF-8 text (from cli)",
        ("--params-file", "latin1.toml"): "latin1.toml: not UTF-8 text",
    }
    for args, needle in cases.items():
        error_line(project.run("run", "train", *args), needle)
    assert not (project.root / "output").exists()
