"""``python -m pystematic`` and the ``pystematic`` console script."""

from __future__ import annotations


def main() -> None:
    """Stop signals are handled from the first moment (before the CLI's own imports): a
    Ctrl-C or SIGTERM at any point ends the command with 130 or 143, not a traceback."""
    from pystematic import interrupts

    interrupts.install()
    try:
        from pystematic.cli import main as cli_main

        cli_main()
    except (KeyboardInterrupt, interrupts.Terminated) as e:
        raise SystemExit(interrupts.exit_code(e)) from None


if __name__ == "__main__":
    main()
