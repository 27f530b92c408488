"""Sweeps without processes: planning, values, distributions, seeds, GPU slots, settings, and
every bad input through the real CLI (one line, exit 2, nothing created). The sweeps that
run are in test_sweep_runs.py."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import pytest

import pystematic as ps
from pystematic.cli import run_cli
from pystematic.errors import ConfigError, DistributedError, ParameterError
from pystematic.jobs import gpu_slots
from pystematic.params import parameter
from pystematic.project import Project
from pystematic.sweep import (
    SweepRecord,
    draw_trials,
    parse_grid,
    parse_sample,
    plan_points,
    planned_runs,
    run_argv,
    run_seed,
    settings,
    slurm_minutes,
    split_values,
)

PARAMS = {
    p.name: p
    for p in [
        parameter("lr", type=float, default=0.1),
        parameter("layers", type=int, default=2),
        parameter("act", type=str, default="relu", choices=["relu", "gelu"]),
        parameter("augment", type=bool),
        parameter("sizes", type=int, multiple=True),
        parameter("name", type=str, default="x"),
        *ps.Experiment(lambda p: None).all_parameters[-9:],  # the built-ins
    ]
}


def test_split_values_takes_quotes_and_brackets() -> None:
    assert split_values("1, 2 ,3", "x") == ["1", "2", "3"]
    assert split_values("'a,b',\"c\"", "x") == ["a,b", "c"]
    assert split_values("[1,2],[3],[]", "x") == [["1", "2"], ["3"], []]
    for bad in ("1,,2", "'a", "[1,2", ""):
        with pytest.raises(ParameterError):
            split_values(bad, "x")


def test_grid_values_are_checked_by_the_parameter() -> None:
    assert parse_grid("lr=0.1,1e-2", PARAMS) == ("lr", [0.1, 0.01])
    assert parse_grid("layers=1,0x10", PARAMS) == ("layers", [1, 16])
    assert parse_grid("augment=true,no", PARAMS) == ("augment", [True, False])
    assert parse_grid("sizes=[1,2],3", PARAMS) == ("sizes", [[1, 2], [3]])
    assert parse_grid("random-seed=1,2", PARAMS) == ("random_seed", [1, 2])
    cases = {
        "layers=1,x": "invalid value for --layers: 'x' is not an integer",
        "act=relu,gelo": "'gelo' is not one of relu, gelu (from --grid act=relu,gelo)",
        "lyers=1": "unknown parameter 'lyers' (did you mean 'layers'?)",
        "lr=": "empty grid",
        "lr": "expected NAME=...",
        "lr=[1,2]": "--lr takes one value, not a list",
        "output_dir=a,b": "--output-dir cannot be swept",
    }
    for spec, message in cases.items():
        with pytest.raises(ParameterError, match=re.escape(message)):
            parse_grid(spec, PARAMS)


def test_distributions_are_checked() -> None:
    assert parse_sample("lr=loguniform(1e-4, 1e-1)", PARAMS).args == (1e-4, 1e-1)
    assert parse_sample("layers=randint(1,4)", PARAMS).args == (1, 4)
    assert parse_sample("act=choice(relu,gelu)", PARAMS).args == ("relu", "gelu")
    cases = {
        "lr=gauss(0,1)": "expected one of uniform(...), loguniform(...), randint(...), choice(",
        "lr=unifrom(0,1)": "did you mean 'uniform'?",
        "lr=uniform(1,0)": "uniform(a,b) needs finite a < b",
        "lr=loguniform(0,1)": "loguniform(a,b) needs 0 < a",
        "lr=uniform(0)": "uniform(a,b) takes two numbers",
        "lr=uniform(0,x)": "'x' is not a number",
        "layers=uniform(1,4)": "uniform draws floats but --layers is an int; use randint(a,b)",
        "layers=randint(4,1)": "randint(a,b) needs a <= b",
        "act=uniform(0,1)": "--act is not a number parameter; use choice(...)",
        "act=choice(relu,tanh)": "'tanh' is not one of relu, gelu",
        "act=choice()": "choice() needs one value or more",
    }
    for spec, message in cases.items():
        with pytest.raises(ParameterError, match=re.escape(message)):
            parse_sample(spec, PARAMS)


def test_draws_follow_the_sweep_seed_and_stay_in_bounds() -> None:
    samples = [
        parse_sample("lr=loguniform(1e-4,1e-1)", PARAMS),
        parse_sample("layers=randint(1,3)", PARAMS),
        parse_sample("act=choice(relu,gelu)", PARAMS),
    ]
    first = draw_trials(samples, 200, 7, PARAMS)
    assert first == draw_trials(samples, 200, 7, PARAMS)
    assert first != draw_trials(samples, 200, 8, PARAMS)
    assert all(1e-4 <= t["lr"] <= 1e-1 for t in first)
    assert {t["layers"] for t in first} == {1, 2, 3}  # inclusive at both ends
    assert {t["act"] for t in first} == {"relu", "gelu"}
    # loguniform: about as many draws in each decade
    decades = [sum(1 for t in first if 10**-k > t["lr"] >= 10 ** -(k + 1)) for k in (1, 2, 3)]
    assert min(decades) > 40, decades


def test_plan_is_each_trial_times_the_grid_times_the_repeats() -> None:
    points = plan_points({"a": [1, 2], "b": ["x", "y"]}, [{"lr": 0.5}, {"lr": 0.25}])
    assert points[:4] == [
        {"lr": 0.5, "a": 1, "b": "x"},
        {"lr": 0.5, "a": 1, "b": "y"},
        {"lr": 0.5, "a": 2, "b": "x"},
        {"lr": 0.5, "a": 2, "b": "y"},
    ]
    assert len(points) == 8 and points[4]["lr"] == 0.25
    runs = planned_runs(points[:2], repeat=3, sweep_seed=5)
    assert [(r["index"], r["repeat"], r["params"]["b"]) for r in runs] == [
        (0, 0, "x"), (1, 1, "x"), (2, 2, "x"), (3, 0, "y"), (4, 1, "y"), (5, 2, "y"),
    ]  # fmt: skip
    seeds = [r["params"]["random_seed"] for r in runs]
    assert len(set(seeds)) == 6 and seeds == [run_seed(5, i) for i in range(6)]
    assert all(0 <= s < 2**32 for s in seeds)
    # a point that sets the seed keeps it, repeats included
    fixed = planned_runs([{"random_seed": 3}], repeat=2, sweep_seed=5)
    assert [r["params"]["random_seed"] for r in fixed] == [3, 3]


def test_param_matrix() -> None:
    assert ps.param_matrix(lr=[0.1, 0.01], batch_size=[16, 32]) == [
        {"lr": 0.1, "batch_size": 16},
        {"lr": 0.1, "batch_size": 32},
        {"lr": 0.01, "batch_size": 16},
        {"lr": 0.01, "batch_size": 32},
    ]
    assert ps.param_matrix(lr=0.1, act=("relu",)) == [{"lr": 0.1, "act": "relu"}]
    with pytest.raises(ParameterError, match="param_matrix: lr has no values"):
        ps.param_matrix(lr=[])


def test_gpu_slots_go_round_robin() -> None:
    gpus = ["0", "1", "2", "3"]
    assert gpu_slots(gpus, 4, 1) == [["0"], ["1"], ["2"], ["3"]]
    assert gpu_slots(gpus, 2, 2) == [["0", "1"], ["2", "3"]]
    assert gpu_slots(gpus, 6, 1) == [["0"], ["1"], ["2"], ["3"], ["0"], ["1"]]
    assert gpu_slots(["0", "1", "2"], 2, 2) == [["0", "1"], ["2", "0"]]
    with pytest.raises(DistributedError, match="--gpus-per-job 2 needs 2 GPUs but this machine"):
        gpu_slots(["0"], 1, 2)


def test_slurm_times_are_minutes() -> None:
    assert [slurm_minutes(v) for v in (90, "90", "1:30:00", "2-12", "1-0:30", "5:30")] == [
        90, 90, 90, 3600, 1470, 6,
    ]  # fmt: skip
    for bad in ("soon", "0", "1:2:3:4", -5):
        with pytest.raises(ParameterError, match="--slurm-time"):
            slurm_minutes(bad)


def test_settings_come_from_options_then_the_config(tmp_path: Path) -> None:
    config = {"jobs": 3, "slurm": {"partition": "gpu", "time": "1:00:00"}}
    project = Project(root=tmp_path, config_file=tmp_path / "pystematic.toml", sweep=config)
    assert settings({}, project).jobs == 3
    slurm = settings({"executor": "slurm", "slurm_partition": "big", "jobs": 4}, project)
    assert slurm.slurm == {"partition": "big", "time": 60, "array_parallelism": 4}
    with pytest.raises(ConfigError, match=r"\[sweep\] has no setting 'job' \(did you mean 'jobs'"):
        settings({}, Project(root=tmp_path, sweep={"job": 2}))
    with pytest.raises(ConfigError, match=r"\[sweep.slurm\] has no setting 'partitio'"):
        settings({}, Project(root=tmp_path, sweep={"slurm": {"partitio": "x"}}))
    with pytest.raises(ParameterError, match="--slurm-\\* options need --executor slurm"):
        settings({"slurm_partition": "x"}, project)


def test_run_argv_is_the_run_command_of_one_run() -> None:
    info = ps.Experiment(lambda p: None, name="fit", group=ps.group("vision")).describe()
    info.parameters = [PARAMS["lr"], PARAMS["augment"], PARAMS["sizes"]]
    argv = run_argv(info, {"lr": 0.1, "augment": False, "sizes": [1, 2], "random_seed": 7}, None)
    assert argv == [
        "run", "vision", "fit", "--lr", "0.1", "--no-augment",
        "--sizes", "1", "--sizes", "2", "--random-seed", "7",
    ]  # fmt: skip


def test_sweep_json_has_one_line_per_run(tmp_path: Path) -> None:
    runs = planned_runs([{"a": i} for i in range(3)], repeat=1, sweep_seed=1)
    record = SweepRecord.create(tmp_path / "sweeps", {"experiment": "x", "runs": runs})
    text = (record.folder / "sweep.json").read_text()
    assert json.loads(text)["runs"] == runs
    assert sum(1 for line in text.splitlines() if line.startswith('  {"index"')) == 3
    assert SweepRecord.load(record.folder).data == record.data


# ---------------------------------------------------------------- bad input through the CLI

EXPERIMENT = '''
import pystematic as ps

@ps.parameter("a", type=int, default=1)
@ps.parameter("act", type=str, default="relu", choices=["relu", "gelu"])
@ps.parameter("lr", type=float, default=0.1)
@ps.experiment
def toy(params, context):
    """Never runs here."""
'''


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sweep-errors")
    (root / "pystematic.toml").write_text("")
    (root / "sweep_error_toy.py").write_text(textwrap.dedent(EXPERIMENT))
    return root


BAD_INPUT = [
    (["--grid", "a=1,x"], "invalid value for --a: 'x' is not an integer (from --grid a=1,x)"),
    (["--grid", "aa=1,2"], "--grid aa=1,2: unknown parameter 'aa' (did you mean 'a'?)"),
    (["--grid", "a="], "--grid a=: empty grid (give one value or more)"),
    (["--grid", "act=relu,tanh"], "'tanh' is not one of relu, gelu"),
    (["--sample", "lr=gauss(0,1)", "--trials", "2"], "--sample lr=gauss(0,1): expected one of"),
    (["--sample", "lr=uniform(0,1)"], "--sample draws --trials N points: give --trials"),
    (["--trials", "3"], "--trials needs --sample NAME=DIST"),
    (["--grid", "a=1,2", "--jobs", "0"], "--jobs 0: need at least 1 run at a time"),
    (["--grid", "a=1,2", "--repeat", "0"], "--repeat 0: need at least 1"),
    (["--grid", "a=1,2", "--a", "3"], "--a is both given and swept; give one"),
    (["--grid", "a=1", "--grid", "a=2"], "--a is swept twice"),
    (["--grid", "a=1", "--gpus-per-job", "1"], "--gpus-per-job 1 needs 1 GPU but this machine"),
    (["--grid", "a=1", "--executor", "slurn"], "expected local or slurm (did you mean 'slurm'?)"),
    (["--grid", "a=1", "--lr", "fast"], "invalid value for --lr: 'fast' is not a float"),
    (["--grid", "a=1", "--recorder", "jsonnl"], "unknown recorder backend 'jsonnl'"),
    (["--grid", "a=1", "--random-seed", "-1"], "--random-seed"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_creates_nothing(
    toy_root: Path,
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU, whatever the machine has
    assert run_cli(["-C", str(toy_root), "sweep", "toy", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert err.startswith("error: ") and message in err, err
    assert not (toy_root / "output").exists()


def test_resume_needs_a_sweep_folder(
    toy_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for args, message in [
        (["--resume", str(tmp_path)], f"--resume {tmp_path}: not a sweep folder (no sweep.json)"),
        (["--json"], "give an experiment to sweep, or --resume SWEEP_DIR"),
        (["--jobs", "2", "toy", "--grid", "a=1"], "before the experiment name continue a sweep"),
        (["toy", "--resume", str(tmp_path), "--grid", "a=1"], "give no --grid with it"),
    ]:
        assert run_cli(["-C", str(toy_root), "sweep", *args]) == 2, args
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("error: ") and message in err, err
        assert err.count("\n") == 1, err
    assert not (toy_root / "output").exists()


def test_run_parameter_sweep_checks_its_points_first() -> None:
    @ps.parameter("lr", type=float, default=0.1)
    @ps.experiment
    def tiny(params: ps.Params) -> None:
        """Never runs here."""

    cases = [
        ([{"lrr": 1}], "point 0: unknown parameter 'lrr' (did you mean 'lr'?)"),
        ([{"lr": "fast"}], "invalid value for --lr: 'fast' is not a float (from point 0)"),
        ([{"output_dir": "x"}], "point 0: 'output_dir' cannot vary between the runs"),
        ([], "run_parameter_sweep: no parameter dicts given"),
    ]
    for points, message in cases:
        with pytest.raises(ParameterError, match=re.escape(message)):
            ps.run_parameter_sweep(tiny, points, max_num_processes=2)
    with pytest.raises(ParameterError, match="--jobs 0: need at least 1"):
        ps.run_parameter_sweep(tiny, [{}], max_num_processes=0)
    with pytest.raises(ParameterError, match="takes an experiment"):
        ps.run_parameter_sweep(print, [{}])
    namespace: dict[str, object] = {}
    exec("def cell(params):\n    pass\n", namespace)  # as in a notebook: no source file
    cell = ps.experiment(namespace["cell"])  # type: ignore[arg-type]
    for call in (lambda: ps.run_parameter_sweep(cell, [{}]), lambda: cell.run_in_new_process()):
        with pytest.raises(ps.PystematicError, match="has no source file"):
            call()
    assert not (Path(__file__).parent / "output").exists()


def test_slurm_without_submitit_says_how_to_install_it(
    toy_root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if it were not installed
    assert (
        run_cli(["-C", str(toy_root), "sweep", "toy", "--grid", "a=1", "--executor", "slurm"]) == 2
    )
    out, err = capsys.readouterr()
    assert err == "error: --executor slurm needs submitit: pip install 'pystematic[slurm]'\n"
    assert out == "" and not (toy_root / "output").exists()


def test_progress_views(tmp_path: Path) -> None:
    from rich.console import Console

    from pystematic.sweep import LiveProgress, Progress

    runs = planned_runs([{"a": i} for i in range(4)], repeat=1, sweep_seed=1)
    for run, status in zip(runs, ["queued", "running", "completed", "failed"], strict=True):
        run.update(status=status, run_id=f"r{run['index']}", run_dir=str(tmp_path / "r"))
    runs[3]["error"] = "ValueError: boom"
    record = SweepRecord.create(tmp_path / "sweeps", {"experiment": "x", "runs": runs})
    assert Progress(record).line(runs[2]) == "[2/4] completed r2 a=2"
    assert Progress(record).line(runs[3]) == (
        f"[2/4] failed r3 a=3: ValueError: boom ({tmp_path / 'r' / 'output.log'})"
    )
    live = LiveProgress(record)
    live.began = 0.0
    console = Console(width=100, record=True, color_system=None)
    console.print(live)
    text = console.export_text()
    assert f"sweep {record.id}: 1 queued · 1 running · 1 done · 1 failed" in text
    assert "running r1 a=1" in text
