"""Issue 34, item 4: MO-ASHA's rung rule is correct for every allowed ``reduction_factor``.

``asha: {reduction_factor: 1.2}`` used to stop every trial (``round(1.2) == 1``: a trial alone at
a rung was "1 of 1" and stopped), 2.4 stopped the best of two, and a factor just above 1 made the
driver loop for ever over the rung milestones, deaf to SIGTERM. Pure properties over the whole
allowed range (hypothesis), the dry run's refusals, and one small real study stopped by SIGTERM.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest
import ray
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optuna.trial import TrialState

from search_spaces import SpaceError
from search_spaces.schema import check_space
from study.cli.main import main
from study.search.rungs import MAX_RUNGS, RungLadder, rung_milestones
from study.storage.records import RUNGS_ATTR
from tests.test_study import (
    DIGITS,
    held_trial,
    hold_env,
    optuna_study,
    release_hold,
    start_study_run,
    write_space,
)

JUST_ABOVE_ONE = 1 + 2**-52  # the smallest float above 1
PROPERTIES = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

# Every allowed factor, the awkward ones often: just above 1, below 1.5 (round(rf) == 1), just
# below and above the integers, and the whole (1, 1000].
factors = st.one_of(
    st.integers(min_value=1, max_value=52).map(lambda e: 1 + 2.0**-e),
    st.floats(min_value=1.0, max_value=1.5, exclude_min=True),
    st.integers(min_value=2, max_value=6).flatmap(
        lambda n: st.sampled_from([n - 1e-9, float(n), n + 1e-9, n - 0.5, n + 0.4])
    ),
    st.floats(min_value=1.0, max_value=1000.0, exclude_min=True),
)


@contextlib.contextmanager
def within(seconds: int) -> Iterator[None]:
    """Fail (not hang) when the block runs longer than ``seconds`` (SIGALRM: the old milestone
    loop was pure Python, so the alarm interrupts it)."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def naive_milestones(grace_period: int, factor: float, max_t: int) -> list[int]:
    """The definition, step by step: distinct ``round(grace_period * factor**k)`` below max_t."""
    out: list[int] = []
    k = 0
    while (t := round(grace_period * factor**k)) < max_t:
        if not out or t > out[-1]:
            out.append(t)
        k += 1
    return out


@pytest.mark.parametrize("factor", [1.2, 1.0001, JUST_ABOVE_ONE, 1.49, 2.4, 2.5, 3.3])
def test_an_entry_alone_at_a_rung_continues_and_so_does_the_best(factor):
    with within(10):
        ladder = RungLadder(1, max_t=8, grace_period=1, reduction_factor=factor)
    for milestone in ladder.milestones:  # alone at each rung it reaches: never stopped
        decision = ladder.on_result("first", milestone, [0.5])
        assert decision is not None and not decision.stop, decision
    assert ladder.stopped_at("first") is None
    for i, value in enumerate([0.4, 0.3, 0.2, 0.1]):  # each newcomer better than all before it
        decision = ladder.on_result(f"better{i}", 1, [value])
        assert not decision.stop and decision.position in (0, 1), decision


def test_milestones_of_a_factor_just_above_one_take_bounded_time():
    """The old loop stepped k by one: about 5e15 steps for 1 + 2**-52 (for ever, in the Tune
    driver's event loop). Now every epoch below a quarter-epoch spacing is written down at
    once."""
    with within(10):
        assert rung_milestones(1, JUST_ABOVE_ONE, 4) == [1, 2, 3]
        assert rung_milestones(1, JUST_ABOVE_ONE, 100_000) == list(range(1, 100_000))
        assert len(rung_milestones(1, JUST_ABOVE_ONE, 100_000, limit=MAX_RUNGS)) == MAX_RUNGS + 1
        assert rung_milestones(7, 1.0001, 12) == [7, 8, 9, 10, 11]
        with pytest.raises(ValueError, match="more than 100 rungs"):
            RungLadder(2, max_t=100_000, reduction_factor=JUST_ABOVE_ONE)
    with pytest.raises(ValueError):
        rung_milestones(1, 1.0, 10)


@PROPERTIES
@given(
    factor=factors,
    grace_period=st.integers(min_value=1, max_value=2000),
    span=st.integers(min_value=1, max_value=100_000),
)
def test_milestones_are_finite_increasing_below_max_t_and_fast(factor, grace_period, span):
    max_t = min(grace_period + span, 100_000)
    start = time.perf_counter()
    with within(5):
        full = rung_milestones(grace_period, factor, max_t)
        capped = rung_milestones(grace_period, factor, max_t, limit=MAX_RUNGS)
    assert time.perf_counter() - start < 2.0
    assert all(isinstance(m, int) for m in full)
    assert full[:1] == ([grace_period] if grace_period < max_t else [])
    assert all(a < b for a, b in zip(full, full[1:])) and all(m < max_t for m in full)
    assert capped == full[: MAX_RUNGS + 1]
    if math.log(max_t / grace_period) / math.log1p(factor - 1) < 5_000:  # short: step it out
        assert full == naive_milestones(grace_period, factor, max_t)
    try:
        ladder = RungLadder(1, max_t=max_t, grace_period=grace_period, reduction_factor=factor)
    except ValueError:
        assert len(full) > MAX_RUNGS
    else:
        assert ladder.milestones == full and len(full) <= MAX_RUNGS


vectors = st.lists(
    st.lists(st.integers(min_value=0, max_value=4).map(float), min_size=3, max_size=3),
    min_size=1,
    max_size=14,
)


@PROPERTIES
@given(
    factor=factors,
    objectives=st.integers(min_value=1, max_value=3),
    ranking=st.sampled_from(["eps_net", "crowding"]),
    raw=vectors,
    probe=st.lists(st.integers(0, 4).map(float), min_size=3, max_size=3),
)
def test_the_rung_rule_over_the_whole_range(factor, objectives, ranking, raw, probe):
    """For any allowed factor and any arrivals at a rung: an entry continues iff fewer than
    ``factor`` entries are in or its place is within the first count / factor (checked here in
    exact fractions); so the first entry, an entry first when it arrives, and one dominating all
    before it never stop, and at least min(n, ceil(factor) - 1) entries of n continue. A ladder
    restored from the records decides as the original."""
    eta = Fraction(factor)
    rung = 3
    with within(5):
        ladder = RungLadder(objectives, max_t=4, grace_period=rung, reduction_factor=factor)
    assert ladder.milestones == [rung]
    seen: list[list[float]] = []
    stops: list[bool] = []
    for i, full in enumerate(raw):
        values = full[:objectives]
        dominates_all = all(all(a <= b for a, b in zip(values, o)) and values != o for o in seen)
        decision = ladder.on_result(f"k{i:02d}", rung, values)
        seen.append(values)
        count = len(seen)
        assert decision is not None and decision.count == count
        waits = count < eta
        assert decision.stop == (not waits and decision.position > count / eta), decision
        if waits:
            assert decision.position == 0
        if i == 0 or decision.position == 1 or (dominates_all and i > 0):
            assert not decision.stop
        if objectives == 1 and not waits:  # one objective: the place is the plain rank
            better = sum(s[0] < values[0] for s in seen[:-1])
            tied = sum(s[0] == values[0] for s in seen[:-1])
            assert 1 + better <= decision.position <= 1 + better + tied
        stops.append(decision.stop)
    assert not stops[0] and stops.count(False) >= min(len(raw), math.ceil(factor) - 1)

    restored = RungLadder(objectives, max_t=4, grace_period=rung, reduction_factor=factor)
    for i, (full, stop) in enumerate(zip(raw, stops)):
        restored.record(rung, f"k{i:02d}", f"k{i:02d}", full[:objectives], stop)
    assert restored.on_result("new", rung, probe[:objectives]) == ladder.on_result(
        "new", rung, probe[:objectives]
    )


@PROPERTIES
@given(
    factor=st.sampled_from([2.0, 3.0, 4.0]),
    raw=vectors,
)
def test_integer_factors_decide_as_before(factor, raw):
    """For integer factors (the default 3 included) the rule is the one studies ran with:
    wait for round(factor) entries, then stop when place / count > 1 / factor (floats)."""
    ladder = RungLadder(2, max_t=9, grace_period=1, reduction_factor=factor)
    for i, full in enumerate(raw):
        decision = ladder.on_result(f"k{i:02d}", 1, full[:2])
        count = decision.count
        old = count >= round(factor) and decision.position / count > 1 / factor
        assert decision.stop == old


def dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str], asha: object, epochs: int):
    """`study run SPACE --dry-run` in process on a space with ``asha``: (exit code, out, err)."""
    path = write_space(tmp_path, fixed={"epochs": epochs}, scheduler="asha", asha=asha)
    with contextlib.chdir(tmp_path), within(30):
        code = main(["run", str(path), "--dry-run", "--storage", "studies"])
    out, err = capsys.readouterr()
    assert not ray.is_initialized() and not (tmp_path / "studies").exists()
    return code, out, err


REFUSED = {
    "one": ({"reduction_factor": 1}, "greater than 1"),
    "below one": ({"reduction_factor": 0.5}, "greater than 1"),
    "above 1000": ({"reduction_factor": 1001}, "less than or equal to 1000"),
    "nan": ({"reduction_factor": float("nan")}, "finite"),
    "inf": ({"reduction_factor": float("inf")}, "finite"),
    "a word": ({"reduction_factor": "fast"}, "valid number"),
    "a list": ({"reduction_factor": [3]}, "valid number"),
    "too many rungs": ({"reduction_factor": 1.01}, "more than 100 rungs below max_t (200)"),
    "too many rungs, max_t": (
        {"reduction_factor": JUST_ABOVE_ONE, "max_t": 150},
        "more than 100 rungs below max_t (150)",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_the_dry_run_refuses_a_bad_factor_with_one_line(tmp_path, capsys, case):
    asha, expected = REFUSED[case]
    code, out, err = dry_run(tmp_path, capsys, asha, epochs=200)
    (line,) = err.strip().splitlines()
    assert code == 2 and "asha" in line and expected in line, line
    assert "reduction_factor" in line and str(tmp_path / "space.yaml") in line


@pytest.mark.parametrize("factor", [1.2, JUST_ABOVE_ONE, 2.5, 1000])
def test_the_dry_run_accepts_any_factor_in_range(tmp_path, capsys, factor):
    code, out, err = dry_run(tmp_path, capsys, {"reduction_factor": factor}, epochs=100)
    assert code == 0 and "dry run" in out and not err.strip(), err
    check_space({"fixed": {**DIGITS, "epochs": 100}, "scheduler": "asha",
                 "asha": {"reduction_factor": factor}}, "inline")  # fmt: skip


def test_the_cap_message_names_the_way_out():
    """Checked by the study (the scheduler's own check), not the schema: search_spaces
    imports nothing of study."""
    from study.api.study import resolve

    with pytest.raises(
        SpaceError, match="^space: asha: .*raise reduction_factor .* or grace_period"
    ):
        resolve(
            {"fixed": {**DIGITS, "epochs": 500}, "scheduler": "asha",
             "asha": {"reduction_factor": 1.0001}},
        )  # fmt: skip


def _rungs_of(tmp_path: Path, name: str) -> dict[int, dict]:
    """Optuna trial number -> its stored rung records; {} while the study is not made yet."""
    if not (tmp_path / "studies" / name / "optuna.db").is_file():
        return {}
    try:
        trials = optuna_study(tmp_path, name).get_trials(deepcopy=False)
    except KeyError:
        return {}
    return {t.number: t.user_attrs[RUNGS_ATTR] for t in trials if RUNGS_ATTR in t.user_attrs}


@pytest.mark.slow
def test_a_study_with_a_factor_just_above_one_ranks_and_answers_sigterm(tmp_path):
    """The smallest allowed factor, in a real study (concurrency 1, epochs 3: rungs at 1 and 2).
    The first trial, alone at both rungs, runs to the end; the second is ranked at rung 1
    against it; SIGTERM then ends the driver with exit code 130 (within 150 s). Before the
    fix the driver never got past the first result (milestones loop), so the second trial was
    never ranked (and SIGTERM went unanswered)."""
    path = write_space(
        tmp_path, fixed={"epochs": 3, "method": "sgd"},
        search={"lr": {"loguniform": [0.01, 0.2]}}, samples=3, concurrency=1, seed=1,
        scheduler="asha", asha={"grace_period": 1, "reduction_factor": JUST_ABOVE_ONE},
    )  # fmt: skip
    hold_dir, out, err = tmp_path / "hold", tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as stdout, err.open("w") as stderr:  # files: a pipe could fill and block
        driver = start_study_run(
            tmp_path, path, "eta", "studies", env=hold_env(hold_dir, epoch=1, nth=2),
            stdout=stdout, stderr=stderr, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while held_trial(hold_dir) is None or "1" not in _rungs_of(tmp_path, "eta").get(1, {}):
            assert driver.poll() is None, "the study ended before its second trial was ranked"
            assert time.monotonic() < deadline, "the second trial was never ranked at rung 1"
            time.sleep(0.2)
        driver.send_signal(signal.SIGTERM)
        release_hold(hold_dir)
        driver.wait(timeout=150)  # ~30 s on a loaded 2-core machine
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 130, out.read_text()[-2000:] + err.read_text()[-2000:]
    rungs = _rungs_of(tmp_path, "eta")
    first = optuna_study(tmp_path, "eta").trials[0]
    assert first.state == TrialState.COMPLETE and first.user_attrs["epoch"] == 3
    assert {m: (r["stop"], r["count"]) for m, r in rungs[0].items()} == {
        "1": (False, 1), "2": (False, 1),
    }  # fmt: skip
    second = rungs[1]["1"]
    assert second["count"] == 2 and second["stop"] == (second["position"] == 2)
