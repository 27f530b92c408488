"""Benchmark: ``pystematic distributed --nproc 2`` against torchrun.

Target: ``pystematic distributed trivial --nproc 2`` takes <= 1.10 x the wall time of
``torchrun --nproc_per_node 2 --standalone worker.py`` running the same work.

Both launch 2 CPU ranks with torch's elastic launcher (spawned processes, each importing
torch; measured here: about 3.3 s, dominated by the imports). To be fair,
the baseline worker does what a pystematic rank does around a trivial experiment:

    import argparse, torch, torch.distributed as dist
    parse --steps; dist.init_process_group("gloo"); dist.barrier();
    dist.destroy_process_group(); print

and the experiment just returns its parameter. The parameter is ``steps``, not ``n``:
torchrun's own argparse rejects ``--n`` after the script as an ambiguous abbreviation of
its options (``--nnodes``, ``--nproc-per-node``, ...).

The baseline is the ``torchrun`` script beside this interpreter, or
``python -m torch.distributed.run`` without it. The project (``modules = ["experiments"]``)
is a git repository with one commit unless ``--no-git``. One warm-up round is not counted.
Each round costs about 7 s here, so ``--rounds`` below 9 is allowed (a smoke test).

    python benchmarks/launch.py [--rounds 9] [--json] [--no-git] [--timeout 180]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import _timing

TARGET_RATIO = 1.10

EXPERIMENT = '''\
import pystematic as ps
import torch


@ps.parameter("steps", type=int, default=1)
@ps.experiment
def trivial(params, context):
    """Does nothing much, on every rank."""
    return params.steps
'''

WORKER = """\
import argparse

import torch
import torch.distributed as dist

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=1)
args = parser.parse_args()
dist.init_process_group("gloo")
dist.barrier()
dist.destroy_process_group()
print(args.steps)
"""


def torchrun() -> list[str]:
    exe = Path(sys.executable).parent / "torchrun"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


def main() -> None:
    p = _timing.parser(__doc__.split("\n\n")[0])
    p.add_argument("--no-git", action="store_true", help="no git repository around the project")
    p.add_argument(
        "--timeout", type=float, default=180.0, help="seconds before a launch counts as hung"
    )
    args = _timing.parse(p)
    tmp = Path(tempfile.mkdtemp(prefix="pystematic-launch-bench-"))
    root = tmp / "project"
    stats: dict[str, _timing.Stats] = {}
    notes: list[str] = []
    try:
        in_git = _timing.write_project(root, EXPERIMENT, git=not args.no_git)
        (tmp / "worker.py").write_text(WORKER)
        notes.append(f"project in a git repository: {'yes' if in_git else 'no'}")
        commands = {
            "torchrun": [
                *torchrun(),
                "--nproc_per_node",
                "2",
                "--standalone",
                str(tmp / "worker.py"),
                "--steps",
                "2",
            ],
            "pystematic distributed": [
                *_timing.pystematic_exe(),
                "distributed",
                "trivial",
                "--nproc",
                "2",
                "--steps",
                "2",
            ],
        }
        what = "pystematic distributed --nproc 2 vs torchrun --nproc_per_node 2"
        try:
            stats = _timing.interleave(
                commands, args.rounds, cwd=root, args=args, timeout=args.timeout
            )
        except _timing.CommandFailed as exc:
            verdict = _timing.Verdict(what, "pystematic distributed", TARGET_RATIO, error=str(exc))
        else:
            verdict = _timing.ratio_verdict(
                what, stats, "pystematic distributed", "torchrun", TARGET_RATIO
            )
            overhead = stats["pystematic distributed"].median - stats["torchrun"].median
            notes.append(f"overhead (difference of medians): {overhead * 1000:+.0f} ms")
        _timing.report(args, "launch", stats, [verdict], notes=notes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
