"""Recorder throughput against raw tensorboardX, measured in the same run.

    python benchmarks/recorder.py [--rounds 9] [--steps 50000] [--raw-steps 5000]

Each round times, in alternating order, (a) ``SummaryWriter.add_scalar`` once per
scalar and (b) ``Recorder(dir, ["tensorboard", "jsonl"])`` with ``scalar()`` x4 +
``step()``, both from creating the writer to ``close()`` returning, 4 tags per
step, in a fresh temp dir. Raw tensorboardX runs fewer steps per round (it is
~30x slower; rates are per scalar, so they compare). Prints both rates, per
round and as medians, and the ratio of the medians (target >= 10x, the README's
performance table).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

TAGS = ("loss", "acc", "lr", "grad_norm")


def raw_tensorboardx(out: Path, steps: int) -> float:
    """Scalars per second through ``SummaryWriter.add_scalar``."""
    from tensorboardX import SummaryWriter

    t0 = time.perf_counter()
    writer = SummaryWriter(str(out / "raw"))
    for s in range(steps):
        for i, tag in enumerate(TAGS):
            writer.add_scalar(tag, s * (i + 1) * 0.1, s)
    writer.close()
    return len(TAGS) * steps / (time.perf_counter() - t0)


def recorder(out: Path, steps: int) -> float:
    """Scalars per second through the recorder into tensorboard + jsonl."""
    from pystematic.recording import Recorder

    t0 = time.perf_counter()
    rec = Recorder(out / "rec", backends=["tensorboard", "jsonl"])
    scalar = rec.scalar
    for s in range(steps):
        scalar("loss", s * 0.1)
        scalar("acc", s * 0.2)
        scalar("lr", s * 0.3)
        scalar("grad_norm", s * 0.4)
        rec.step()
    rec.close()
    return len(TAGS) * steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=50_000, help="recorder steps per round")
    parser.add_argument("--raw-steps", type=int, default=5_000, help="raw steps per round")
    args = parser.parse_args()

    import tensorboardX  # noqa: F401  (import costs are not part of either timing)

    import pystematic.recording  # noqa: F401

    raw_rates: list[float] = []
    rec_rates: list[float] = []
    for r in range(args.rounds):
        order = [("raw", raw_tensorboardx), ("rec", recorder)]
        if r % 2:
            order.reverse()
        for name, fn in order:
            out = Path(tempfile.mkdtemp(prefix="pystematic-bench-"))
            try:
                steps = args.raw_steps if name == "raw" else args.steps
                rate = fn(out, steps)
            finally:
                shutil.rmtree(out, ignore_errors=True)
            (raw_rates if name == "raw" else rec_rates).append(rate)
        print(
            f"round {r + 1}: raw tensorboardX {raw_rates[-1]:>10,.0f} scalars/s   "
            f"recorder {rec_rates[-1]:>10,.0f} scalars/s",
            flush=True,
        )
    raw, rec = statistics.median(raw_rates), statistics.median(rec_rates)
    print(f"raw tensorboardX add_scalar: {raw:,.0f} scalars/s (median of {args.rounds})")
    print(f"recorder tensorboard+jsonl:  {rec:,.0f} scalars/s (median of {args.rounds})")
    print(f"ratio: {rec / raw:.1f}x (target >= 10x)")
    sys.exit(0)


if __name__ == "__main__":
    main()
