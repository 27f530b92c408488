"""Benchmark: CLI startup (targets: the README's performance table).

Targets: ``pystematic --help`` <= 0.3 s; ``pystematic list`` of 50 experiments in 10
modules that import torch, repeated with unchanged files, <= 0.25 s wall (the discovery
cache in ``<root>/.pystematic_cache/`` answers it without importing the user's modules);
one TAB of shell completion, ``run EXP --help`` and ``show-params EXP`` <= 0.3 s each, from
the cache, without importing torch.

Builds a temp project (``pystematic.toml`` with ``modules = ["experiments"]``; 10 modules,
each ``import torch`` and 5 experiments of 3 parameters), times ``list`` once with no cache
(for information), then times fresh processes interleaved, alternating which goes first:

- ``python -c pass``: the floor (the baseline the ratios are printed against);
- ``import typer``: ``python -c "import typer"``;
- ``--help``: ``pystematic --help`` in the project;
- ``list``: ``pystematic list`` in the project, the cache warm;
- ``TAB run``, ``TAB flags``, ``TAB choices``: one TAB as bash asks for it
  (``env COMP_WORDS=... COMP_CWORD=N _PYSTEMATIC_COMPLETE=complete_bash pystematic``):
  experiment names after ``run``, an experiment's flags, the values of ``--optimizer``;
- ``run EXP --help`` and ``show-params EXP``.

Every experiment module appends a line to ``imports.log`` when imported, so the script
also reports whether the repeated ``list`` imported user modules (it should not).

The typer pin: typer 0.29 imports pydantic at startup (+0.25 s a command), hence
``typer>=0.26,<0.29`` in pyproject.toml. The script prints the installed typer version,
``import typer`` against ``python -c pass``, and whether ``pydantic`` (or ``click``,
``torch``) is in ``sys.modules`` after ``import typer`` and after ``import pystematic.cli``.

    python benchmarks/startup.py [--rounds 9] [--json]
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import _timing

HELP_TARGET_S = 0.3
LIST_TARGET_S = 0.25
TAB_TARGET_S = 0.3
MODULES = 10
PER_MODULE = 5

# Reports on one line: the typer version, then which heavy modules an import pulled in.
PROBE = (
    "import sys, importlib; importlib.import_module(sys.argv[1]); import typer; "
    "print(typer.__version__, *[m for m in ('pydantic', 'click', 'torch', 'tensorboardX') "
    "if m in sys.modules])"
)


def module_text(index: int) -> str:
    lines = [
        "from pathlib import Path",
        "",
        "import pystematic as ps",
        "import torch",
        "",
        "with open(Path(__file__).resolve().parent.parent / 'imports.log', 'a') as _log:",
        "    _log.write(__name__ + '\\n')",
        "",
    ]
    for j in range(PER_MODULE):
        name = f"exp_{index:02d}_{j}"
        lines += [
            "",
            '@ps.parameter("epochs", type=int, default=10, help="Passes over the data.")',
            '@ps.parameter("lr", type=float, default=1e-3, help="Learning rate.")',
            '@ps.parameter("optimizer", type=str, default="adam", choices=["adam", "sgd"])',
            "@ps.experiment",
            f"def {name}(params, context):",
            f'    """Experiment {j} of module {index}."""',
            "    return torch.zeros(params.epochs).sum().item()",
            "",
        ]
    return "\n".join(lines)


def write_project(root: Path) -> None:
    package = root / "experiments"
    package.mkdir(parents=True)
    (root / "pystematic.toml").write_text('modules = ["experiments"]\n')
    (package / "__init__.py").write_text("")
    for i in range(MODULES):
        (package / f"mod{i:02d}.py").write_text(module_text(i))


def tab(words: str, cword: int, ps: list[str]) -> list[str]:
    """One TAB of bash completion, the way the script ``--install-completion`` writes calls it."""
    return [
        "env",
        f"COMP_WORDS={words}",
        f"COMP_CWORD={cword}",
        "_PYSTEMATIC_COMPLETE=complete_bash",
        *ps,
    ]


def imports_logged(root: Path) -> int:
    log = root / "imports.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def main() -> None:
    args = _timing.parse(_timing.parser(__doc__.split("\n\n")[0]))
    py = sys.executable
    ps = _timing.pystematic_exe()
    tmp = Path(tempfile.mkdtemp(prefix="pystematic-startup-bench-"))
    root = tmp / "project"
    stats: dict[str, _timing.Stats] = {}
    verdicts: list[_timing.Verdict] = []
    notes: list[str] = []
    extra: dict[str, object] = {}
    try:
        write_project(root)

        # The typer pin and what the CLI module pulls in at import.
        for label, module in (
            ("import typer", "typer"),
            ("import pystematic.cli", "pystematic.cli"),
        ):
            out = _timing.probe([py, "-c", PROBE, module], cwd=root)
            if out.returncode != 0:
                notes.append(f"{label}: probe failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            version, *heavy = out.stdout.split()
            extra[f"{module}_imports"] = heavy
            if module == "typer":
                extra["typer_version"] = version
                extra["pydantic_after_import_typer"] = "pydantic" in heavy
                notes.append(
                    f"typer {version}: pydantic in sys.modules after `import typer`: "
                    f"{'yes' if 'pydantic' in heavy else 'no'}"
                )
            else:
                shown = ", ".join(heavy) or "none of pydantic, click, torch, tensorboardX"
                notes.append(f"after `import pystematic.cli`, sys.modules has: {shown}")

        # First list: no cache yet, imports all 10 modules (torch once).
        listing = [*ps, "list", "--json"]
        begin = time.perf_counter()
        first = _timing.probe(listing, cwd=root)
        cold = time.perf_counter() - begin
        if first.returncode != 0:
            notes.append(f"cold `list` failed (exit {first.returncode}): {first.stderr.strip()}")
        else:
            found = len(json.loads(first.stdout))
            extra["cold_list_s"] = round(cold, 4)
            extra["experiments_listed"] = found
            notes.append(
                f"cold `list --json` (no cache, imports {MODULES} modules): {cold:.3f} s once; "
                f"{found} experiments listed (expected {MODULES * PER_MODULE})"
            )

        exp = "exp_03_2"
        commands = {
            "python -c pass": [py, "-c", "pass"],
            "import typer": [py, "-c", "import typer"],
            "--help": [*ps, "--help"],
            "list": [*ps, "list"],
            "TAB run": tab("pystematic run ", 2, ps),
            "TAB flags": tab(f"pystematic run {exp} --", 3, ps),
            "TAB choices": tab(f"pystematic run {exp} --optimizer ", 4, ps),
            "run EXP --help": [*ps, "run", exp, "--help"],
            "show-params EXP": [*ps, "show-params", exp],
        }
        for name in ("TAB run", "TAB flags", "TAB choices"):
            said = _timing.probe(commands[name], cwd=root).stdout.split()
            notes.append(f"{name} offers: {' '.join(said[:6])}{' ...' if len(said) > 6 else ''}")
        before = imports_logged(root)
        try:
            stats = _timing.interleave(commands, args.rounds, cwd=root, args=args)
        except _timing.CommandFailed as exc:
            verdicts = [
                _timing.Verdict("pystematic --help", "--help", HELP_TARGET_S, error=str(exc)),
                _timing.Verdict("repeated list", "list", LIST_TARGET_S, error=str(exc)),
                _timing.Verdict("completion and help", "TAB", TAB_TARGET_S, error=str(exc)),
            ]
        else:
            floor = stats["python -c pass"].median
            typer_cost = stats["import typer"].median - floor
            extra["import_typer_minus_pass_s"] = round(typer_cost, 4)
            notes.append(
                f"`import typer` costs {typer_cost * 1000:.0f} ms over `python -c pass` "
                f"(typer 0.29 with pydantic at startup: about +250 ms more; hence <0.29)"
            )
            for name in ("--help", "list"):
                ratio = stats[name].median / floor
                notes.append(f"{name}: {ratio:.1f} x `python -c pass`")
            verdicts = [
                _timing.Verdict(
                    "pystematic --help", "--help", HELP_TARGET_S, stats["--help"].median
                ),
                _timing.Verdict(
                    f"repeated list ({MODULES * PER_MODULE} experiments, {MODULES} modules)",
                    "list",
                    LIST_TARGET_S,
                    stats["list"].median,
                ),
                *(
                    _timing.Verdict(name, name, TAB_TARGET_S, stats[name].median)
                    for name in (
                        "TAB run",
                        "TAB flags",
                        "TAB choices",
                        "run EXP --help",
                        "show-params EXP",
                    )
                ),
            ]
            reimported = imports_logged(root) - before
            extra["user_module_imports_during_timed_rounds"] = reimported
            notes.append(
                "user modules imported by the timed rounds (help, list, completion, "
                f"show-params): {reimported} (0 = the discovery cache answered)"
            )
        _timing.report(args, "startup", stats, verdicts, extra=extra, notes=notes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
