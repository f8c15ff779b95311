"""A test hook that holds one trial mid-run until a file appears.

Tests that kill a driver or remove a node must do it while a trial is provably mid-run, whatever
the machine's speed. With ``SHARPCAL_HOLD=<dir>:<epoch>[:<nth>]`` in the environment of the
processes that run trials, the ``nth`` trial (default 1st) to finish ``epoch`` writes
``<dir>/held`` (its trial id and node id, as JSON) once that epoch's checkpoint is reported, then
waits until ``<dir>/release`` exists. Trials are counted by tickets taken with exclusive file
creation, so a restarted trial that reports the epoch again takes a new ticket and does not wait.
With ``*`` for ``nth`` every trial to finish ``epoch`` is held in turn: the one with ticket k
writes ``<dir>/held-k`` and waits for ``<dir>/release-k`` (a test decides which one to stop at).
Unset (always, outside tests), it does nothing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

HOLD_ENV = "SHARPCAL_HOLD"
HELD_FILE = "held"
RELEASE_FILE = "release"
MAX_HOLD_S = 900.0  # a test that died without releasing must not leave trials waiting forever


EVERY = 0  # ``nth`` of ``*``: every trial, each with its own held/release files


def parse_hold(value: str) -> tuple[Path, int, int]:
    """``<dir>:<epoch>[:<nth>|*]`` as (directory, epoch, nth; ``EVERY`` for ``*``)."""
    directory, epoch, *nth = value.split(":")
    if nth and nth[0] == "*":
        return Path(directory), int(epoch), EVERY
    return Path(directory), int(epoch), int(nth[0]) if nth else 1


def _take_ticket(directory: Path) -> int:
    number = 1
    while True:
        try:
            os.close(os.open(directory / f"ticket-{number}", os.O_CREAT | os.O_EXCL))
            return number
        except FileExistsError:
            number += 1


def hold_if_asked(epoch: int, trial_id: str, node_id: str) -> None:
    """Wait here when ``SHARPCAL_HOLD`` names this epoch and this trial's turn (see module doc)."""
    value = os.environ.get(HOLD_ENV)
    if not value:
        return
    directory, hold_epoch, nth = parse_hold(value)
    if epoch != hold_epoch:
        return
    directory.mkdir(parents=True, exist_ok=True)
    ticket = _take_ticket(directory)
    if nth not in (ticket, EVERY):
        return
    held, release = HELD_FILE, RELEASE_FILE
    if nth == EVERY:
        held, release = f"{HELD_FILE}-{ticket}", f"{RELEASE_FILE}-{ticket}"
    tmp = directory / f".{held}.tmp"
    tmp.write_text(json.dumps({"trial_id": trial_id, "node_id": node_id, "epoch": epoch}))
    tmp.replace(directory / held)
    deadline = time.monotonic() + MAX_HOLD_S
    while not (directory / release).exists() and time.monotonic() < deadline:
        time.sleep(0.1)


DRIVER_HOLD_ENV = "SHARPCAL_DRIVER_HOLD"


def hold_driver_if_asked(stage: str) -> None:
    """The driver's counterpart, for tests that stop it at a given stage of its life: with
    ``SHARPCAL_DRIVER_HOLD=<dir>:<stage>``, the driver reaching ``stage`` (``tuner``: about to
    build or restore Tune's state; ``report``: writing the report) writes ``<dir>/held-<stage>``
    and waits until ``<dir>/release`` exists (a signal interrupts the wait as it would the work).
    Unset (always, outside tests), it does nothing."""
    value = os.environ.get(DRIVER_HOLD_ENV)
    if not value:
        return
    directory, _, wanted = value.rpartition(":")
    if wanted != stage:
        return
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"held-{stage}").write_text(str(os.getpid()))
    deadline = time.monotonic() + MAX_HOLD_S
    while not (folder / RELEASE_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
