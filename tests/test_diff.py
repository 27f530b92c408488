"""`pystematic diff`: metrics compared bit for bit, seeds, packages, and real runs side by side."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import Project, read_metrics
from pystematic.diff import (
    compare_metrics,
    compare_packages,
    compare_seeds,
    find_run,
)
from pystematic.errors import RunDirError

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def jsonl(path: Path, steps: list[dict[str, Any]], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(step) + "\n" for step in steps) + tail)
    return path


def steps(n: int, time: float = 0.0, **override: Any) -> list[dict[str, Any]]:
    """n steps of loss and acc; override {"3:loss": value} changes one value."""
    out = []
    for step in range(n):
        line = {"step": step, "time": time + step, "loss": 1.0 / (step + 1), "acc": step / 1000}
        for key, value in override.items():
            at, tag = key.split(":")
            if int(at) == step:
                line[tag] = value
        out.append(line)
    return out


# --- compare_metrics -------------------------------------------------------------------------


def test_identical_but_for_time(tmp_path: Path) -> None:
    a = jsonl(tmp_path / "a.jsonl", steps(1200))
    b = jsonl(tmp_path / "b.jsonl", steps(1200, time=5000.0))
    result = compare_metrics(a, b)
    assert result.identical
    assert (result.steps, result.scalars) == (1200, 2)
    assert result.verdict() == "identical: 1,200 steps x 2 scalars"
    assert result.first_difference is None and result.largest_absolute is None
    assert [(f.tag, f.a, f.difference) for f in result.finals] == [
        ("loss", 1 / 1200, 0.0),
        ("acc", 1199 / 1000, 0.0),
    ]


def test_the_first_difference_names_step_tag_and_both_values(tmp_path: Path) -> None:
    loss_7 = 1.0 / 8
    a = jsonl(tmp_path / "a.jsonl", steps(20, **{"12:acc": 0.5}))
    nudged = math.nextafter(loss_7, 1.0)  # one bit apart
    b = jsonl(tmp_path / "b.jsonl", steps(20, **{"7:loss": nudged, "12:acc": 0.75}))
    result = compare_metrics(a, b)
    assert not result.identical
    first = result.first_difference
    assert first is not None
    assert (first.step, first.tag, first.a, first.b) == (7, "loss", loss_7, nudged)
    assert result.verdict() == f"differ: first at step 7, 'loss': {loss_7!r} vs {nudged!r}"
    assert result.largest_absolute is not None and result.largest_absolute.step == 12
    assert result.largest_absolute.absolute == 0.25
    assert result.largest_relative is not None and result.largest_relative.tag == "acc"
    finals = {f.tag: f for f in result.finals}
    assert finals["acc"].identical and not finals["acc"].difference


@pytest.mark.parametrize(
    ("a", "b", "identical"),
    [
        (0.0, -0.0, False),  # equal as numbers, not bit for bit
        (float("nan"), float("nan"), True),
        (1, 1.0, True),  # the same float64
        (0.1 + 0.2, 0.3, False),
    ],
)
def test_bitwise_means_bitwise(tmp_path: Path, a: float, b: float, identical: bool) -> None:
    pa = jsonl(tmp_path / "a.jsonl", [{"step": 0, "time": 1.0, "x": a}])
    pb = jsonl(tmp_path / "b.jsonl", [{"step": 0, "time": 2.0, "x": b}])
    assert compare_metrics(pa, pb).identical is identical


def test_steps_and_tags_in_one_file_only(tmp_path: Path) -> None:
    a = jsonl(tmp_path / "a.jsonl", steps(10))
    b_steps = steps(14)
    b_steps[3]["extra"] = 1.0
    b = jsonl(tmp_path / "b.jsonl", b_steps, tail='{"step": 14, "ti')  # torn by a kill
    result = compare_metrics(a, b)
    assert result.only_in_a == [] and result.only_in_b == [10, 11, 12, 13]
    first = result.first_difference
    assert first is not None and (first.step, first.tag, first.a, first.b) == (
        3,
        "extra",
        None,
        1.0,
    )
    assert result.unreadable_b == 1
    assert (result.steps, result.scalars) == (14, 3)
    # the first N steps only: what a run stopped after N steps is compared with
    assert compare_metrics(a, b, max_steps=3).verdict() == "identical: 3 steps x 2 scalars"
    assert compare_metrics(a, b, max_steps=4).first_difference == first


def test_missing_files_and_unordered_steps(tmp_path: Path) -> None:
    a = jsonl(tmp_path / "a.jsonl", steps(3))
    shuffled = steps(3)
    b = jsonl(tmp_path / "b.jsonl", [shuffled[2], shuffled[0], shuffled[1]])
    assert compare_metrics(a, b).identical  # compared by step, whatever the line order
    missing = compare_metrics(tmp_path / "none.jsonl", tmp_path / "none2.jsonl")
    assert missing.identical and missing.missing_a and missing.missing_b
    one_sided = compare_metrics(a, tmp_path / "none.jsonl")
    assert not one_sided.identical and one_sided.only_in_a == [0, 1, 2]
    assert one_sided.verdict() == "differ: step 0, 'loss' is only in A"


# --- seeds and packages ----------------------------------------------------------------------


def seeds_log(
    path: Path, master: int, *purposes: str, values: dict[str, int] | None = None
) -> Path:
    lines = [{"rank": 0, "purpose": "master", "value": master, "call": 0}]
    for call, purpose in enumerate(purposes, start=1):
        value = (values or {}).get(purpose, master * 1000 + sum(map(ord, purpose)))
        lines.append({"rank": 0, "purpose": purpose, "value": value, "call": call})
    path.mkdir()
    return jsonl(path / "seeds.log", lines).parent


def test_seeds_the_same(tmp_path: Path) -> None:
    a = seeds_log(tmp_path / "a", 7, "init", "data")
    b = seeds_log(tmp_path / "b", 7, "init", "data")
    result = compare_seeds(a, b)
    assert result.identical
    assert result.summary() == "the same: master seed 7, 2 derived seeds"


def test_a_seed_drawn_in_a_different_order_is_named(tmp_path: Path) -> None:
    a = seeds_log(tmp_path / "a", 7, "init", "data", "dropout")
    b = seeds_log(tmp_path / "b", 7, "init", "dropout", "data", "augment")
    result = compare_seeds(a, b)
    assert not result.identical
    kinds = [(d.call, d.kind) for d in result.differences]
    assert kinds == [(2, "order"), (3, "order"), (4, "only_b")]
    assert result.summary() == (
        "seed 2: 'data' in A, 'dropout' in B (drawn in a different order: 'data' is seed 3 in B)"
    )
    assert result.differences[2].describe() == "seed 4 ('augment'): drawn only in B"


def test_a_seed_with_another_value_and_another_master(tmp_path: Path) -> None:
    a = seeds_log(tmp_path / "a", 7, "init", values={"init": 1})
    b = seeds_log(tmp_path / "b", 7, "init", values={"init": 2})
    assert compare_seeds(a, b).summary() == "seed 1 ('init'): 1 vs 2"
    c = seeds_log(tmp_path / "c", 8, "init")
    assert compare_seeds(a, c).summary() == "master seed 7 vs 8, so every derived seed differs"
    assert compare_seeds(a, tmp_path / "nowhere").missing_b


def test_a_run_stopped_early_is_compared_on_the_seeds_it_drew(tmp_path: Path) -> None:
    a = seeds_log(tmp_path / "a", 7, "init", "data", "eval")
    b = seeds_log(tmp_path / "b", 7, "init", "data")  # reproduce --steps: stopped before "eval"
    assert compare_seeds(a, b).differences[0].describe() == "seed 3 ('eval'): drawn only in A"
    partial = compare_seeds(a, b, partial_b=True)
    assert partial.identical
    assert partial.summary() == "the same: master seed 7, 2 derived seeds"
    c = seeds_log(tmp_path / "c", 7, "data", "init")  # what B drew must still match
    assert not compare_seeds(a, c, partial_b=True).identical


def test_packages_added_removed_and_changed(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("numpy==2.0.0\nrich==13.0\ntorch==2.13.0\n")
    (tmp_path / "b.txt").write_text("Numpy==2.1.0\npandas==3.1.1\ntorch==2.13.0\n")
    result = compare_packages(tmp_path / "a.txt", tmp_path / "b.txt")
    assert result.changed == [("Numpy", "2.0.0", "2.1.0")]
    assert result.added == ["pandas==3.1.1"]
    assert result.removed == ["rich==13.0"]
    assert result.same == 1 and not result.identical


# --- finding runs ----------------------------------------------------------------------------


def test_find_run_by_id_prefix_or_path(tmp_path: Path) -> None:
    for exp, run_id in (("train", "20261125-140312-7f3a"), ("eval", "20261125-150000-0001")):
        (tmp_path / exp / run_id).mkdir(parents=True)
        (tmp_path / exp / run_id / "run.json").write_text("{}")
    run = tmp_path / "train" / "20261125-140312-7f3a"
    assert find_run("20261125-140312-7f3a", lambda: tmp_path) == run
    assert find_run("20261125-14", lambda: tmp_path) == run
    assert find_run(str(run), lambda: tmp_path / "elsewhere") == run
    assert find_run(str(run / "run.json"), lambda: tmp_path) == run
    with pytest.raises(RunDirError, match=r"no run '20261125-140312-7f3b' .*did you mean"):
        find_run("20261125-140312-7f3b", lambda: tmp_path)
    with pytest.raises(RunDirError, match="ambiguous"):
        find_run("20261125-1", lambda: tmp_path)
    with pytest.raises(RunDirError, match="is not a run dir"):
        find_run(str(tmp_path / "train"), lambda: tmp_path)
    with pytest.raises(RunDirError, match="does not exist"):
        find_run("no/such/dir", lambda: tmp_path)


# --- real runs through the CLI ---------------------------------------------------------------

TRAIN = """
    import pystematic as ps

    @ps.parameter("lr", type=float, default=0.1)
    @ps.experiment
    def train(params, context):
        import random

        init = context.new_seed("init")
        noise = random.Random(context.new_seed("noise"))
        w = init % 1000 / 1000
        for step in range(12):
            w -= params.lr * (w - noise.random())
            context.recorder.scalar("w", w)
            context.recorder.scalar("loss", (w - 0.5) ** 2)
            context.recorder.step()
"""


def git(repo: Path, *args: str) -> None:
    config = ["-c", "user.email=t@example.com", "-c", "user.name=T", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", *config, *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Runs of `train` in a git checkout: a, b (same seed), c (another lr), d (dirty code)."""
    tmp = tmp_path_factory.mktemp("diff")
    project = Project(tmp / "proj")
    project.write("pystematic.toml", 'modules = ["exps"]\n')
    project.write("exps/__init__.py", "")
    project.write("exps/train.py", TRAIN)
    project.write(".gitignore", "output/\n.pystematic_cache/\n")
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-q", "-m", "train"]):
        git(project.root, *args)
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp)}
    runs = {}
    for name, args in (
        ("a", ["--random-seed", "7"]),
        ("b", ["--random-seed", "7"]),
        ("c", ["--random-seed", "7", "--lr", "0.2"]),
        ("d", ["--random-seed", "7"]),
    ):
        if name == "d":  # uncommitted edit: same computation, other code
            project.write("exps/train.py", TRAIN + "\n    # tuned\n")
        proc = subprocess.run(
            [sys.executable, "-m", "pystematic", "run", "train", *args],
            cwd=project.root, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        (runs[name],) = set(project.run_dirs("train")) - set(runs.values())
    runs["root"] = project.root
    return runs


def diff(compared: dict[str, Path], *args: str, env: dict[str, str] | None = None) -> Any:
    project = Project(compared["root"])
    return project.run("diff", *args, env={"COLUMNS": "120", **(env or {})})


@pytest.mark.slow
@needs_git
def test_same_seed_same_metrics_exit_0(compared: dict[str, Path]) -> None:
    a, b = compared["a"], compared["b"]
    out = diff(compared, a.name, str(b))  # an id and a path
    assert out.returncode == 0, out.stderr
    assert "metrics: identical: 12 steps x 2 scalars" in out.stdout
    assert "parameters: the same (3)" in out.stdout  # lr, random_seed, deterministic
    assert "seeds: the same: master seed 7, 2 derived seeds" in out.stdout
    assert "packages: the same" in out.stdout
    assert "environment: the same" in out.stdout


@pytest.mark.slow
@needs_git
def test_another_parameter_exit_1_names_the_first_differing_step(
    compared: dict[str, Path],
) -> None:
    a, c = compared["a"], compared["c"]
    out = diff(compared, a.name, c.name)
    assert out.returncode == 1, out.stderr
    first_a, first_c = read_metrics(a)[0], read_metrics(c)[0]
    assert f"metrics: differ: first at step 0, 'w': {first_a['w']!r} vs {first_c['w']!r}" in (
        out.stdout
    )
    assert "parameters: 1 differ, 2 the same" in out.stdout
    lr_row = next(line.split() for line in out.stdout.splitlines() if line.strip().startswith("lr"))
    assert lr_row == ["lr", "0.1", "0.2"]
    final_w = next(
        line.split() for line in out.stdout.splitlines() if line.strip().startswith("w ")
    )
    assert final_w[:3] == ["w", repr(read_metrics(a)[-1]["w"]), repr(read_metrics(c)[-1]["w"])]
    data = json.loads(diff(compared, a.name, c.name, "--json").stdout)
    assert data["identical"] is False
    assert data["metrics"]["first_difference"]["step"] == 0
    assert data["params"]["lr"] == {"a": 0.1, "b": 0.2, "same": False}
    assert data["seeds"]["identical"] is True


@pytest.mark.slow
@needs_git
def test_a_dirty_checkout_shows_in_the_code_section(compared: dict[str, Path]) -> None:
    a, d = compared["a"], compared["d"]
    out = diff(compared, str(a), str(d))
    assert out.returncode == 0, out.stderr  # the same metrics, other code
    assert "code: dirty, git.diff differ" in out.stdout
    assert "++# tuned" in out.stdout
    dirty = next(
        line.split() for line in out.stdout.splitlines() if line.strip().startswith("dirty")
    )
    assert dirty == ["dirty", "false", "true"]
    data = json.loads(diff(compared, str(a), str(d), "--json").stdout)
    assert data["code"]["dirty"] == {"a": False, "b": True, "same": False}
    assert data["code"]["commit"]["same"] is True
    assert data["code"]["git_diff"][:2] == ["--- A/git.diff", "+++ B/git.diff"]


@pytest.mark.slow
@needs_git
def test_a_run_that_is_not_a_run_is_one_line_exit_2(compared: dict[str, Path]) -> None:
    for args, message in (
        (["2099", compared["a"].name], "error: no run '2099' under "),
        ([str(compared["root"] / "exps"), compared["a"].name], "is not a run dir (no run.json)"),
    ):
        out = diff(compared, *args)
        assert out.returncode == 2
        assert out.stdout == "" and out.stderr.count("\n") == 1
        assert message in out.stderr
