"""What a study prints while it runs: event lines and a live progress line on the console, and
everything else printed in the driver (Ray's and Tune's tables, worker lines that Ray relays,
warnings, log records) in the study's ``driver.log``.

On a terminal the progress line is a tqdm bar kept below the event lines; without one (CI, a
pipe) there is no bar and no ANSI code. No Ray here: the report and tracking warn through it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def duration(seconds: float) -> str:
    """``1m05s``, or ``2h03m`` from an hour on."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class Display:
    """Where the events go: ``stream`` (the console as it was before Ray's output was sent to
    the log), with a tqdm progress bar when it is a terminal."""

    def __init__(self, stream: IO[str], errors: IO[str], total: int) -> None:
        self.stream = stream
        self.errors = errors
        self.bar: Any = None
        if stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, file=stream, bar_format="{desc}", leave=False)

    def line(self, text: str, error: bool = False) -> None:
        """Print one line (above the bar, if any) on the console's stdout, or its stderr."""
        stream = self.errors if error else self.stream
        if self.bar is not None:
            self.bar.write(text, file=stream)
        else:
            print(text, file=stream, flush=True)

    def progress(self, text: str) -> None:
        """Show ``text`` as the live progress line (terminal only)."""
        if self.bar is not None:
            self.bar.set_description_str(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


_display: Display | None = None  # the running study's, while ``console()`` is open


def current() -> Display | None:
    """The display of the study running in this process, if any."""
    return _display


def warn(message: str) -> None:
    """A one-line warning for the user: on the console's stderr (above the progress line) while
    a study runs, and in its log; on stderr otherwise."""
    line = f"warning: {message}"
    print(line, file=sys.stderr, flush=True)  # the log, inside ``console()``
    if _display is not None:
        _display.line(line, error=True)


def _swap_handler_streams(
    old: tuple[IO[str], ...], new: IO[str]
) -> list[tuple[logging.StreamHandler, IO[str]]]:
    """Point every logging StreamHandler writing to one of ``old`` at ``new``; returns each
    handler swapped with the stream it had."""
    loggers = [logging.getLogger()] + [
        v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger)
    ]
    swapped = []
    for logger in loggers:
        for handler in logger.handlers:
            if _follows_sys_stderr(handler):  # redirected with sys.stderr, needs no swap
                continue
            if isinstance(handler, logging.StreamHandler) and handler.stream in old:
                swapped.append((handler, handler.setStream(new)))
    return swapped


def _follows_sys_stderr(handler: logging.Handler) -> bool:
    """A handler of logging's last-resort kind (dill attaches one to its logger): its stream is a
    read-only property, ``sys.stderr`` at each write."""
    return isinstance(getattr(type(handler), "stream", None), property)


class DiskLog(io.TextIOBase):
    """The driver's log file, which never raises: a write that fails (a full disk, a quota, an
    I/O error) drops that text and every later one, and ``failure`` says why. Ray, Tune and
    logging write here from any thread; a full disk must not turn their prints into the
    driver's death."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.failure: OSError | None = None
        try:
            self._file: IO[str] | None = open(path, "a", buffering=1)  # noqa: SIM115
        except OSError as err:
            self._file, self.failure = None, err

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self._file is not None:
            try:
                self._file.write(text)
            except OSError as err:
                self._give_up(err)
        return len(text)

    def flush(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as err:
                self._give_up(err)

    def _give_up(self, err: OSError) -> None:
        self.failure = self.failure or err
        file, self._file = self._file, None
        with contextlib.suppress(OSError):
            file.close()

    def close(self) -> None:
        if self._file is not None:
            self.flush()
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        super().close()


@contextlib.contextmanager
def console(log_path: Path, total: int, verbose: bool = False) -> Iterator[None]:
    """Inside the block, trial events and the progress line go to the console and everything
    else printed in this process (Ray's and Tune's output, worker lines relayed by Ray, warnings,
    log records) to ``log_path``, appended. ``verbose``: nothing is redirected."""
    global _display
    import optuna

    optuna.logging.get_logger("optuna")  # its handler exists before the streams are swapped
    _display = Display(sys.stdout, sys.stderr, total)
    if verbose:
        try:
            yield
        finally:
            _display.close()
            _display = None
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(DiskLog(log_path)) as log:
        consoles = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
        swapped = _swap_handler_streams(tuple(s for s in consoles if s is not None), log)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        finally:
            _swap_handler_streams((log,), sys.stderr)  # handlers made inside the block
            for handler, previous in swapped:
                handler.setStream(previous)
            _display.close()
            _display = None
            if log.failure is not None:
                print(
                    f"warning: {log_path} could not be written "
                    f"({log.failure.strerror or type(log.failure).__name__}): Ray's and Tune's "
                    "output after that was dropped",
                    file=sys.stderr,
                    flush=True,
                )


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 trial``, ``2 trials`` (``many``: the plural when it is not ``word + "s"``)."""
    return f"{count} {word if count == 1 else many or word + 's'}"
