"""Benchmark: overhead of ``pystematic run`` (targets: the README's performance table).

Target: ``pystematic run`` of a trivial experiment that imports torch takes <= 1.05 x the
wall time of a plain script that parses ``--n`` with argparse, imports torch and prints.

Builds a temp project (``pystematic.toml`` with ``modules = ["experiments"]``; one module
with the experiment below), by default inside a git repository with one commit (as real
projects are: the run records the commit, which costs a ``git`` subprocess; ``--no-git``
leaves it out). The baseline script sits outside the project. Then times fresh processes,
interleaved and alternating which goes first, after one warm-up round that also fills the
discovery cache:

- ``baseline``: ``python baseline.py --n 2`` (argparse + ``import torch`` + print);
- ``pystematic run``: ``pystematic run trivial --n 2`` in the project (a new run dir each
  time, with run.json, parameters.toml, ...; the experiment records nothing);
- ``run, 10 modules``: the same experiment in a project of 10 experiment modules that each
  import torch (the common case): ``run`` imports only the module that defines it;
- ``baseline, frozen heap``: the baseline plus ``gc.freeze()`` after ``import torch``, as a
  run does (its process then exits without walking torch's objects once more). Not a
  target: the overhead against it is what pystematic's own work costs.

    python benchmarks/run_overhead.py [--rounds 9] [--json] [--no-git]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import _timing

TARGET_RATIO = 1.05
MODULES = 10


def other_module(index: int) -> str:
    """One more experiment module of the 10-module project (imports torch, as real ones do)."""
    return (
        "import pystematic as ps\nimport torch\n\n\n"
        f"@ps.experiment\ndef other_{index}(params, context):\n    return torch.zeros(1)\n"
    )


EXPERIMENT = '''\
import pystematic as ps
import torch


@ps.parameter("n", type=int, default=1)
@ps.experiment
def trivial(params, context):
    """Does nothing much."""
    return params.n
'''

BASELINE = """\
import argparse

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--n", type=int, default=1)
args = parser.parse_args()
print(args.n)
"""

FROZEN_BASELINE = BASELINE.replace("import torch\n", "import torch\nimport gc\n\ngc.freeze()\n")


def main() -> None:
    p = _timing.parser(__doc__.split("\n\n")[0])
    p.add_argument("--no-git", action="store_true", help="no git repository around the project")
    args = _timing.parse(p)
    tmp = Path(tempfile.mkdtemp(prefix="pystematic-run-bench-"))
    root = tmp / "project"
    stats: dict[str, _timing.Stats] = {}
    notes: list[str] = []
    try:
        in_git = _timing.write_project(root, EXPERIMENT, git=not args.no_git)
        many = tmp / "many"
        _timing.write_project(many, EXPERIMENT, git=False)
        for i in range(MODULES - 1):
            (many / "experiments" / f"other_{i}.py").write_text(other_module(i))
        if not args.no_git:
            _timing.git_init(many)
        (tmp / "baseline.py").write_text(BASELINE)
        (tmp / "frozen.py").write_text(FROZEN_BASELINE)
        notes.append(f"project in a git repository: {'yes' if in_git else 'no'}")
        exe = _timing.pystematic_exe()
        commands = {
            "baseline": [sys.executable, str(tmp / "baseline.py"), "--n", "2"],
            "pystematic run": [*exe, "run", "trivial", "--n", "2"],
            "run, 10 modules": [*exe, "-C", str(many), "run", "trivial", "--n", "2"],
            "baseline, frozen heap": [sys.executable, str(tmp / "frozen.py"), "--n", "2"],
        }
        what = "pystematic run of a trivial experiment vs argparse + import torch"
        try:
            stats = _timing.interleave(commands, args.rounds, cwd=root, args=args)
        except _timing.CommandFailed as exc:
            verdict = _timing.Verdict(what, "pystematic run", TARGET_RATIO, error=str(exc))
            many_verdict = _timing.Verdict(what, "run, 10 modules", TARGET_RATIO, error=str(exc))
        else:
            verdict = _timing.ratio_verdict(what, stats, "pystematic run", "baseline", TARGET_RATIO)
            many_verdict = _timing.ratio_verdict(
                f"the same in a project of {MODULES} modules that import torch",
                stats,
                "run, 10 modules",
                "baseline",
                TARGET_RATIO,
            )
            for name in ("pystematic run", "run, 10 modules"):
                for base in ("baseline", "baseline, frozen heap"):
                    overhead = stats[name].median - stats[base].median
                    ratio = stats[name].median / stats[base].median
                    notes.append(
                        f"{name} vs {base}: {ratio:.3f} x, {overhead * 1000:+.0f} ms "
                        "(difference of medians)"
                    )
            runs = sorted((root / "output" / "trivial").glob("*/"))
            files = sorted(f.name for f in runs[-1].iterdir()) if runs else []
            notes.append(f"run dirs made: {len(runs)}; the last holds: {', '.join(files)}")
        _timing.report(args, "run_overhead", stats, [verdict, many_verdict], notes=notes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
