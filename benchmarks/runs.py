"""Benchmark: listing 2,000 runs (targets: ``pystematic runs`` ≤ 1 s,
``ps.runs_dataframe()`` ≤ 1.5 s).

Writes synthetic run dirs (``<dir>/<experiment>/<run-id>/run.json``, shaped like the
ones rundir.py writes) into a temp folder, then times fresh processes, interleaved and
alternating which goes first, over ``--rounds`` rounds (after one warm-up round):

- ``baseline``: ``json.loads`` of every ``*/*/run.json`` found by ``pathlib`` glob, nothing else;
- ``table``: ``import pystematic.runs``; ``load_runs`` + ``select_runs`` + ``runs_table``
  rendered by rich to a colour terminal of 200 columns (into memory);
- ``json``: the same load and select, then ``json.dumps`` of the records (``--json``);
- ``dataframe``: ``import pystematic``; ``pystematic.runs_dataframe(DIR)`` (pandas included);
- ``cli --json`` / ``cli table``: ``pystematic runs [--json] --output-dir DIR``, when that
  command exists and works (the table with ``COLUMNS=200 FORCE_COLOR=1``, as on a terminal).

About 3 % of the runs say ``running`` with an old heartbeat from another host: they show as
``died``, so their metrics.jsonl (2,000 steps each) is read from its end.

Prints the median wall time of each, its ratio to the baseline, and whether it is under its
target, plus an in-process breakdown (load / select / table / DataFrame) of the library calls.

    python benchmarks/runs.py [--runs 2000] [--rounds 9] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

TARGET_S = 1.0
DATAFRAME_TARGET_S = 1.5
EXPERIMENTS = ("train", "finetune", "vision.fit", "vision.eval")

BASELINE = (
    "import json, pathlib, sys\n"
    "[json.loads(p.read_text()) for p in pathlib.Path(sys.argv[1]).glob('*/*/run.json')]\n"
)
TABLE = (
    "import io, sys\n"
    "from rich.console import Console\n"
    "from pystematic.runs import load_runs, select_runs\n"
    "from pystematic.runs_table import runs_table\n"
    "records = select_runs(load_runs(sys.argv[1]))\n"
    "console = Console(file=io.StringIO(), width=200, force_terminal=True,"
    " color_system='truecolor')\n"
    "console.print(runs_table(records))\n"
    "assert len(records) == int(sys.argv[2]), len(records)\n"
)
JSON = (
    "import json, sys\n"
    "from pystematic.runs import load_runs, select_runs\n"
    "records = select_runs(load_runs(sys.argv[1]))\n"
    "text = json.dumps(records)\n"
    "assert len(records) == int(sys.argv[2]), len(records)\n"
)
DATAFRAME = (
    "import sys\n"
    "import pystematic\n"
    "df = pystematic.runs_dataframe(sys.argv[1])\n"
    "assert len(df) == int(sys.argv[2]), len(df)\n"
    "df.sort_values('metrics.val/acc')\n"
)


def iso(moment: datetime) -> str:
    return moment.isoformat()


def write_runs(root: Path, count: int, seed: int = 0) -> None:
    """*count* run dirs like real ones: mostly completed, some failed, running and died."""
    rng = random.Random(seed)
    t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    traceback = "Traceback (most recent call last):\n" + '  File "train.py", line 1\n' * 30
    for i in range(count):
        experiment = EXPERIMENTS[i % len(EXPERIMENTS)]
        start = t0 + timedelta(minutes=7 * i, seconds=rng.random())
        run_id = start.strftime("%Y%m%d-%H%M%S-") + f"{rng.getrandbits(16):04x}"
        status = rng.choices(
            ["completed", "failed", "interrupted", "running"], weights=[85, 8, 4, 3]
        )[0]
        duration = rng.uniform(5, 20000)
        ended = status != "running"
        heartbeat = start + timedelta(seconds=duration)
        record = {
            "id": run_id,
            "experiment": experiment,
            "module": "experiments." + experiment.split(".")[0],
            "file": "/home/user/project/experiments/train.py",
            "argv": ["pystematic", "run", experiment, "--lr", "0.01"],
            "status": status,
            "start": iso(start),
            "end": iso(heartbeat) if ended else None,
            "duration": duration if ended else None,
            "error": "RuntimeError: CUDA out of memory" if status == "failed" else None,
            "traceback": traceback if status == "failed" else None,
            "failed_rank": 1 if status == "failed" and i % 2 else None,
            "pid": 100000 + i,
            "host": "gpu-node-" + str(i % 7),
            "user": "someone",
            "heartbeat": iso(heartbeat),
            "python_version": "3.11.7",
            "torch_version": "2.13.0",
            "cuda_version": "12.4",
            "gpu": "NVIDIA H100 80GB HBM3",
            "pystematic_version": "1.0.0",
            "world_size": rng.choice([1, 1, 2, 4]),
            "backend": "nccl",
            "git_commit": f"{rng.getrandbits(160):040x}",
            "git_branch": "main",
            "git_dirty": rng.random() < 0.3,
            "resumes": [],
            "tags": rng.sample(["baseline", "ablation", "sweep", "final"], k=rng.randint(0, 2)),
            "params": {
                "epochs": rng.choice([10, 20, 50]),
                "lr": rng.choice([0.1, 0.01, 0.001, 0.0003]),
                "batch_size": rng.choice([32, 64, 128]),
                "optimizer": rng.choice(["adam", "sgd"]),
                "augment": rng.random() < 0.5,
                "weight_decay": 0.0001,
                "dropout": 0.1,
                "model": "resnet18",
                "random_seed": rng.getrandbits(32),
                "deterministic": False,
            },
            "metrics": {
                "loss": rng.uniform(0.01, 2.0),
                "val/loss": rng.uniform(0.01, 2.0),
                "val/acc": rng.uniform(0.5, 0.99),
                "lr": 0.001,
                "epoch": 9.0,
                "grad_norm": rng.uniform(0.1, 10.0),
            },
        }
        run_dir = root / experiment / run_id
        run_dir.mkdir(parents=True)
        (run_dir / "run.json").write_text(json.dumps(record, indent=2))
        if status == "running":  # died long ago: `runs` reads the end of its metrics.jsonl
            beat = heartbeat.timestamp()
            (run_dir / "metrics.jsonl").write_text(
                "".join(
                    json.dumps({"step": s, "time": beat - 2000 + s, "loss": 1 / (s + 1)}) + "\n"
                    for s in range(2000)
                )
            )


# The table as a 200-column colour terminal would get it, though stdout is not one here.
TERMINAL = {**os.environ, "COLUMNS": "200", "FORCE_COLOR": "1"}


def timed(argv: list[str]) -> float:
    begin = time.perf_counter()
    env = TERMINAL if "runs" in argv and "--json" not in argv else None
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - begin


def cli_commands(root: Path) -> dict[str, list[str]]:
    """``pystematic runs`` variants, if the command is installed and lists these runs."""
    exe = shutil.which("pystematic") or shutil.which(
        "pystematic", path=os.path.dirname(sys.executable)
    )
    if exe is None:
        print("cli: `pystematic` not found on PATH; skipped")
        return {}
    json_cmd = [exe, "runs", "--json", "--output-dir", str(root)]
    probe = subprocess.run(json_cmd, capture_output=True, text=True)
    try:
        ok = probe.returncode == 0 and isinstance(json.loads(probe.stdout), list)
    except ValueError:
        ok = False
    if not ok:
        tail = (probe.stderr or probe.stdout).strip().splitlines()[-1:] or [""]
        print(
            f"cli: `pystematic runs --json` does not work yet (exit {probe.returncode}: "
            f"{tail[0][:120]}); skipped"
        )
        return {}
    return {
        "cli --json": json_cmd,
        "cli table": [exe, "runs", "--output-dir", str(root)],
    }


def in_process(root: Path, rounds: int) -> None:
    """Where the time goes inside one process (imports excluded)."""
    import io

    from rich.console import Console

    from pystematic.errors import PystematicError
    from pystematic.runs import load_runs, runs_dataframe, select_runs
    from pystematic.runs_table import runs_table

    parts: dict[str, list[float]] = {
        "load_runs": [],
        "select_runs": [],
        "runs_table+print": [],
        "runs_dataframe": [],
    }
    for _ in range(rounds):
        t0 = time.perf_counter()
        records = load_runs(root)
        t1 = time.perf_counter()
        selected = select_runs(records, filters=["optimizer=adam"], sort="-val/acc")
        t2 = time.perf_counter()
        console = Console(file=io.StringIO(), width=200, force_terminal=True)
        console.print(runs_table(records))
        t3 = time.perf_counter()
        with contextlib.suppress(PystematicError):  # no pandas: main() said so
            runs_dataframe(root)
        t4 = time.perf_counter()
        parts["load_runs"].append(t1 - t0)
        parts["select_runs"].append(t2 - t1)
        parts["runs_table+print"].append(t3 - t2)
        parts["runs_dataframe"].append(t4 - t3)
    print(
        f"in-process medians over {rounds} rounds ({len(records)} runs, {len(selected)} selected):"
    )
    for name, values in parts.items():
        print(f"  {name:<18} {statistics.median(values) * 1000:7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--keep", type=Path, help="write the runs here and keep them")
    args = parser.parse_args()
    if args.rounds < 9:
        parser.error("--rounds: at least 9 (these machines are noisy)")

    tmp = None
    if args.keep:
        root = args.keep
    else:
        tmp = tempfile.mkdtemp(prefix="pystematic-runs-bench-")
        root = Path(tmp) / "output"
    try:
        t0 = time.perf_counter()
        write_runs(root, args.runs)
        print(
            f"wrote {args.runs} runs under {root} in {time.perf_counter() - t0:.1f} s "
            f"(python {sys.version.split()[0]}, {os.cpu_count()} cpus, {socket.gethostname()}, "
            f"load average {os.getloadavg()[0]:.1f})"
        )

        py = sys.executable
        n = str(args.runs)
        commands: dict[str, list[str]] = {
            "baseline": [py, "-c", BASELINE, str(root)],
            "table": [py, "-c", TABLE, str(root), n],
            "json": [py, "-c", JSON, str(root), n],
        }
        try:
            import pandas  # noqa: F401
        except ImportError:
            print("dataframe: pandas is not installed (pip install 'pystematic[pandas]'); skipped")
        else:
            commands["dataframe"] = [py, "-c", DATAFRAME, str(root), n]
        commands.update(cli_commands(root))
        names = list(commands)
        for name in names:  # warm-up: page cache, .pyc files
            timed(commands[name])
        times: dict[str, list[float]] = {name: [] for name in names}
        for i in range(args.rounds):
            order = names if i % 2 == 0 else names[::-1]
            for name in order:
                times[name].append(timed(commands[name]))

        base = statistics.median(times["baseline"])
        print(f"wall time of a fresh process, medians of {args.rounds} interleaved rounds:")
        for name in names:
            med = statistics.median(times[name])
            spread = f"{min(times[name]):.3f}-{max(times[name]):.3f}"
            target = DATAFRAME_TARGET_S if name == "dataframe" else TARGET_S
            verdict = (
                ""
                if name == "baseline"
                else (f"  ok (<= {target} s)" if med <= target else f"  OVER the {target} s target")
            )
            print(
                f"  {name:<12} {med:6.3f} s  (range {spread})  "
                f"ratio {med / base:5.2f} x baseline{verdict}"
            )
        in_process(root, args.rounds)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
