"""``python -m pystematic`` and the ``pystematic`` console script."""

from __future__ import annotations


def main() -> None:
    """Stop signals are handled from the first moment (before the CLI's own imports)."""
    from pystematic import interrupts

    interrupts.install()
    from pystematic.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
