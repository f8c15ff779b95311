"""MO-ASHA's rung decisions: sharpcal's ``RungLadder`` beside Syne Tune's MOASHA on hand examples.

Syne Tune's MOASHA (``syne_tune.optimizer.schedulers.asha.Bracket`` with its default
``NonDominatedPriority``) turns a rung's results into a *sorted order* (indices, best first) and
then reads that order as each result's priority; the newcomer's "rank" is therefore the position
of whichever result the order puts *last*, not its own. This script feeds the same results, in the
same order, to both and prints each decision, so the difference can be seen (BENCHMARKS.md).

    pip install syne-tune==0.16.0   # not a sharpcal dependency: only this check needs it
    python bench/moasha_rank_check.py

Objectives are minimised on both sides; reduction factor 3, one rung at epoch 1.
"""

from __future__ import annotations

import numpy as np

from study.search.rungs import RungLadder

EXAMPLES = {
    "a newcomer dominating every earlier result": [
        [0.1, 0.9], [0.9, 0.1], [0.5, 0.5], [0.6, 0.6], [0.95, 0.95], [0.0, 0.0],
    ],
    "a newcomer dominated by every earlier result": [
        [0.1, 0.9], [0.9, 0.1], [0.5, 0.5], [0.2, 0.2], [0.3, 0.3], [1.0, 1.0],
    ],
}  # fmt: skip
ETA = 3


def sharpcal_decisions(results: list[list[float]]) -> list[str]:
    ladder = RungLadder(2, max_t=9, grace_period=1, reduction_factor=ETA)
    out = []
    for i, values in enumerate(results):
        decision = ladder.on_result(f"t{i}", 1, values)
        out.append(
            f"{'STOP' if decision.stop else 'CONTINUE'} ({decision.position}/{decision.count})"
        )
    return out


def syne_tune_decisions(results: list[list[float]]) -> list[str] | None:
    try:
        from syne_tune.optimizer.schedulers.asha import Bracket
        from syne_tune.optimizer.schedulers.multiobjective.multiobjective_priority import (
            NonDominatedPriority,
        )
    except ImportError:
        return None
    bracket = Bracket(1, 9, ETA, 0, priority=NonDominatedPriority())
    out = []
    for i, (a, b) in enumerate(results):
        out.append(str(bracket.on_result(trial_id=i, cur_iter=1, metrics={"a": a, "b": b})))
    priorities = NonDominatedPriority()(np.array(results, dtype=float))
    out.append(f"priority vector of all six: {priorities.tolist()}")
    return out


def main() -> None:
    for title, results in EXAMPLES.items():
        print(f"\n{title} (reduction factor {ETA}):")
        ours = sharpcal_decisions(results)
        theirs = syne_tune_decisions(results)
        for i, values in enumerate(results):
            other = theirs[i] if theirs else "(syne-tune not installed)"
            print(f"  t{i} {values}: sharpcal {ours[i]:<16} syne-tune {other}")
        if theirs:
            print(f"  syne-tune {theirs[-1]}")


if __name__ == "__main__":
    main()
