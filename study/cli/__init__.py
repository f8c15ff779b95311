"""The ``study`` command: argument parsing and printing over the Python API."""

from typing import Any, NoReturn


def main(argv: Any = None) -> int:
    """The ``study`` command run on ``argv`` (``study.cli.main.main``); returns its exit code."""
    from study.cli.main import main as run

    return run(argv)


def console() -> NoReturn:
    """Entry point of the ``study`` console script and of ``python -m study``: ``main()``, then
    the process ends without tearing the interpreter down (``exit_now``)."""
    import faulthandler
    import signal

    from study.cli.main import exit_now
    from study.cli.main import main as run

    # `kill -USR2 <pid>` prints every thread's stack to stderr: a driver that seems stuck says
    # where (Tune takes SIGUSR1)
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    exit_now(run())
