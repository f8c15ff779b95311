"""The ``study`` command: argument parsing and printing over the Python API."""

from typing import Any


def main(argv: Any = None) -> int:
    """Entry point of the ``study`` console script (``study.cli.main.main``)."""
    from study.cli.main import main as run

    return run(argv)
