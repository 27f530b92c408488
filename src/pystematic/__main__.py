"""``python -m pystematic``: the console script."""

from pystematic.cli import main

if __name__ == "__main__":
    main()
