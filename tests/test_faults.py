"""Issue 9's fault suite, a trial or two per attack: real ``pystematic`` processes stopped by
signals at random moments, crashes, SIGKILL then ``--resume``, a full disk (a real tmpfs:
these tests need root, as CI has), failing and hanging ranks.

``benchmarks/faults.py`` runs the same attacks N times each (the README's table); every
check lives there, in the attack's function, so the two never drift apart.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import faults  # benchmarks/faults.py: the same attacks, N trials

pytestmark = pytest.mark.slow


def attack(tmp_path: Path, *names: str, trials: int = 1) -> None:
    """``trials`` trials of each attack, two at a time (they mostly wait); all must hold."""
    jobs = [(name, n) for name in names for n in range(trials)]

    def one(job: tuple[str, int]) -> faults.Outcome:
        name, n = job
        return faults.run_trial(name, tmp_path / f"{name}-{n}", seed=n)

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(one, jobs))
    problems = [
        f"{o.attack}: {o.skipped or o.problem}"
        + (" (mounting a tmpfs needs root; CI runs as root)" if o.skipped else "")
        for o in outcomes
        if not o.held
    ]
    assert not problems, "\n".join(problems)


def test_signals_during_dataloader_forks_stop_the_run_as_interrupted(tmp_path: Path) -> None:
    attack(tmp_path, "sigint-dataloader", "sigterm-dataloader")


def test_signals_in_a_tight_step_loop_keep_every_step_once(tmp_path: Path) -> None:
    attack(tmp_path, "sigint-steploop", "sigterm-steploop")


def test_sigkill_after_a_checkpoint_then_resume_has_no_holes(tmp_path: Path) -> None:
    attack(tmp_path, "sigkill-checkpoint-resume", "resume-after-crash")


def test_crashes_keep_output_fatal_report_and_metrics(tmp_path: Path) -> None:
    attack(tmp_path, "crash-segfault", "crash-abort", "crash-os-exit")


def test_signals_in_the_startup_window_leave_no_running_or_bare_run_dir(tmp_path: Path) -> None:
    attack(tmp_path, "startup-sigterm", "startup-sigint", trials=2)


def test_a_full_disk_fails_with_one_error_line(tmp_path: Path) -> None:
    attack(tmp_path, "disk-full-start", "disk-full-midrun")


def test_the_rank_that_ends_is_blamed(tmp_path: Path) -> None:
    attack(tmp_path, "dist-sys-exit", "dist-raise", "dist-os-exit", "dist-sigkill")


def test_a_hung_group_ends_by_timeout_or_ctrl_c(tmp_path: Path) -> None:
    attack(tmp_path, "dist-hang-timeout", "dist-hang-sigint", "dist-hang-ctrl-c")


def test_every_attack_of_the_benchmark_is_tested() -> None:
    """A new attack in benchmarks/faults.py gets a trial here too."""
    source = Path(__file__).read_text()
    assert [a.name for a in faults.ATTACKS if f'"{a.name}"' not in source] == []
