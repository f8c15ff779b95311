"""Issue 23, item 2: MO-ASHA's rung decisions on hand-made results (``study.search.rungs``, no Ray)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from study.search.rungs import (
    RungLadder,
    crowding_order,
    eps_net_order,
    minimised,
    mo_order,
    mo_position,
    nondominated_fronts,
    rank_normalised,
    rung_milestones,
)


def test_fronts_use_strict_dominance_and_equal_points_share_a_front():
    points = np.array([[0, 0], [1, 1], [0, 1], [2, 0], [1, 1]], dtype=float)
    assert nondominated_fronts(points) == [[0], [2, 3], [1, 4]]


def test_three_objectives_fronts():
    points = np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0], [1, 1, 1], [2, 2, 2]], dtype=float)
    assert nondominated_fronts(points) == [[0, 1, 2], [3], [4]]


def test_rank_normalisation_shares_ties_and_maps_to_unit_interval():
    points = np.array([[0.9, 0.1], [0.8, 0.1], [0.1, 0.3]])
    assert rank_normalised(points).tolist() == [[1.0, 0.25], [0.5, 0.25], [0.0, 1.0]]
    assert rank_normalised(points[:1]).tolist() == [[0.0, 0.0]]


def test_minimised_negates_the_maximised_objectives():
    assert minimised([0.9, 0.05], ["max", "min"]) == [-0.9, 0.05]


# A front whose raw scales differ by ten (accuracy vs ECE): A best accuracy, D best ECE, B and C
# close together in accuracy. Raw distances make C the third pick, the per-rung ranks make B.
FRONT = np.array([[-0.90, 0.100], [-0.89, 0.020], [-0.88, 0.019], [-0.50, 0.010]])
KEYS = ["a", "b", "c", "d"]


def test_eps_net_starts_at_the_best_first_objective_and_goes_farthest_first():
    assert eps_net_order(FRONT, KEYS) == [0, 3, 2, 1]  # raw scale: ECE hardly counts


def test_the_order_normalises_each_objective_per_rung_first():
    assert nondominated_fronts(FRONT) == [[0, 1, 2, 3]]
    assert mo_order(FRONT, KEYS, "eps_net") == [0, 3, 1, 2]


def test_crowding_puts_the_boundary_points_first():
    normalised = rank_normalised(FRONT)
    assert crowding_order(normalised, KEYS) == [0, 3, 1, 2]
    # an interior point with more room around it comes before a crowded one
    points = np.array([[0.0, 1.0], [0.1, 0.9], [0.5, 0.5], [1.0, 0.0]])
    assert crowding_order(points, KEYS) == [0, 3, 2, 1]


def test_fronts_come_before_anything_they_dominate():
    points = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [0.6, 0.6], [2.0, 2.0]])
    order = mo_order(points, ["p0", "p1", "p2", "p3", "p4"], "eps_net")
    assert set(order[:3]) == {0, 1, 2} and order[3:] == [3, 4]


def test_milestones():
    assert rung_milestones(1, 3, 20) == [1, 3, 9]
    assert rung_milestones(2, 2, 20) == [2, 4, 8, 16]
    assert rung_milestones(1, 3, 9) == [1, 3]  # none at max_t
    assert rung_milestones(1, 1.5, 5) == [1, 2, 3]  # rounded, distinct


def test_one_objective_is_plain_asha():
    ladder = RungLadder(1, max_t=8, grace_period=1, reduction_factor=2)
    assert ladder.milestones == [1, 2, 4]
    assert not ladder.on_result("a", 1, [0.5]).stop  # fewer than round(eta) at the rung
    b = ladder.on_result("b", 1, [0.3])
    assert (b.stop, b.position, b.count) == (False, 1, 2)
    c = ladder.on_result("c", 1, [0.9])
    assert (c.stop, c.position, c.count) == (True, 3, 3)
    assert not ladder.on_result("d", 1, [0.1]).stop
    assert ladder.on_result("b", 1, [0.3]) is None  # recorded there already
    assert ladder.stopped_at("c") == 1 and ladder.stopped_at("b") is None


def test_a_dominated_result_stops_and_a_non_dominated_one_continues():
    ladder = RungLadder(2, max_t=9, grace_period=1, reduction_factor=3)
    for key, values in [("a", [-0.9, 0.05]), ("b", [-0.7, 0.02]), ("c", [-0.8, 0.03])]:
        ladder.on_result(key, 1, values)
    assert ladder.on_result("worse", 1, [-0.6, 0.06]).stop  # dominated by all three
    assert not ladder.on_result("best", 1, [-0.95, 0.01]).stop  # dominates all


def test_a_result_dominating_every_other_is_never_stopped():
    """The case Syne Tune's MOASHA gets wrong (BENCHMARKS.md): it reads the sorted order as
    each entry's rank, so the newcomer is judged by the place of whoever is last."""
    ladder = RungLadder(2, max_t=9, grace_period=1, reduction_factor=3)
    for i, values in enumerate([[0.1, 0.9], [0.9, 0.1], [0.5, 0.5], [0.6, 0.6], [0.95, 0.95]]):
        ladder.on_result(f"t{i}", 1, values)
    decision = ladder.on_result("t5", 1, [0.0, 0.0])
    assert (decision.stop, decision.position) == (False, 1)


def test_three_objectives_rank_by_fronts():
    ladder = RungLadder(3, max_t=9, grace_period=1, reduction_factor=3)
    for key, values in [("a", [0, 1, 1]), ("b", [1, 0, 1]), ("c", [1, 1, 0])]:
        ladder.on_result(key, 1, values)
    assert ladder.on_result("d", 1, [1, 1, 1]).stop  # second front, 4th of 4
    assert ladder.on_result("e", 1, [2, 2, 2]).stop


def test_ties_are_decided_by_key_not_by_arrival():
    results = {"t0": [0.5, 0.5], "t1": [0.5, 0.5], "t2": [0.5, 0.5], "t3": [0.5, 0.5]}
    outcomes = set()
    for arrival in itertools.permutations(results):
        ladder = RungLadder(2, max_t=4, grace_period=1, reduction_factor=2)
        for key in arrival:
            ladder.on_result(key, 1, results[key])
        final = ladder._place(1, "t3", None)
        outcomes.add((final.position, final.stop))
    assert outcomes == {(4, True)}


def test_recorded_results_restore_the_same_decisions():
    ladder = RungLadder(2, max_t=9, grace_period=1, reduction_factor=3)
    history = [("a", [-0.9, 0.05]), ("b", [-0.7, 0.02]), ("c", [-0.6, 0.09]), ("d", [-0.5, 0.1])]
    decisions = {key: ladder.on_result(key, 1, values) for key, values in history}
    restored = RungLadder(2, max_t=9, grace_period=1, reduction_factor=3)
    for key, values in history:
        restored.record(1, key, key, values, decisions[key].stop)
    for probe in ([-0.65, 0.04], [-0.95, 0.2], [-0.4, 0.2]):
        assert restored.on_result("new", 1, probe) == ladder.on_result("new", 1, probe)
        del ladder.rungs[1]["new"], restored.rungs[1]["new"]
    assert restored.stopped_at("c") == ladder.stopped_at("c") == 1


def test_a_configurations_seeds_are_ranked_by_their_mean_and_stopped_together():
    ladder = RungLadder(1, max_t=4, grace_period=1, reduction_factor=2)
    ladder.on_result("x", 1, [0.2])
    first = ladder.on_result("conf", 1, [0.9], member="seed0")
    assert first.stop  # worse than x: the configuration stops at rung 1
    again = ladder.on_result("conf", 1, [0.0], member="seed1")
    assert again.stop  # its other seed is stopped there too, whatever it scored
    assert ladder.rungs[1]["conf"].mean().tolist() == [0.45]  # ranked by the seeds' mean
    assert ladder.on_result("y", 1, [0.3]).stop  # 3rd of 3: x 0.2, y 0.3, conf 0.45


def test_higher_rungs_are_recorded_as_they_are_reached():
    ladder = RungLadder(1, max_t=20, grace_period=1, reduction_factor=3)
    assert ladder.on_result("a", 0, [0.5]) is None  # before the first rung
    assert ladder.on_result("a", 1, [0.5]).milestone == 1
    assert ladder.on_result("a", 2, [0.4]) is None
    assert ladder.on_result("a", 3, [0.3]).milestone == 3
    assert set(ladder.rungs[3]) == {"a"} and ladder.rungs[1]["a"].members == {"a": [0.5]}


@pytest.mark.parametrize(
    "kwargs", [dict(reduction_factor=1.0), dict(grace_period=0), dict(ranking="nsga")]
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        RungLadder(2, max_t=10, **kwargs)


def test_non_finite_values_are_refused():
    ladder = RungLadder(2, max_t=10)
    with pytest.raises(ValueError, match="finite"):
        ladder.on_result("a", 1, [float("nan"), 0.1])


def _naive_fronts(points: np.ndarray) -> list[list[int]]:
    def dominates(a: np.ndarray, b: np.ndarray) -> bool:
        return bool(np.all(a <= b) and np.any(a < b))

    remaining, fronts = list(range(len(points))), []
    while remaining:
        front = [
            i for i in remaining if not any(dominates(points[j], points[i]) for j in remaining)
        ]
        fronts.append(front)
        remaining = [i for i in remaining if i not in front]
    return fronts


def _naive_eps_net(points: np.ndarray, keys: list[str]) -> list[int]:
    left = sorted(range(len(points)), key=lambda i: keys[i])
    order = [min(left, key=lambda i: (points[i][0], keys[i]))]
    left.remove(order[0])
    while left:
        gaps = [float(np.linalg.norm(points[order] - points[i], axis=1).min()) for i in left]
        order.append(left.pop(gaps.index(max(gaps))))
    return order


@pytest.mark.parametrize("seed", range(5))
def test_the_vectorised_sorts_equal_their_pairwise_definitions(seed):
    """Fronts and the epsilon-net are computed on whole arrays (a rung of 1000 trials decides in
    milliseconds); on random points with ties they equal the pair-by-pair definitions."""
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 6, size=(60, 1 + seed % 3)).astype(float)  # many ties
    assert nondominated_fronts(points) == _naive_fronts(points)
    keys = [f"k{i:02d}" for i in rng.permutation(60)]
    front = np.array(points[nondominated_fronts(points)[0]])
    front_keys = keys[: len(front)]
    assert eps_net_order(front, front_keys) == _naive_eps_net(front, front_keys)
    assert eps_net_order(points, keys) == _naive_eps_net(points, keys)


@pytest.mark.parametrize("seed", range(6))
def test_a_rows_position_is_its_place_in_the_whole_order(seed):
    """``mo_position`` orders only the row's own front; it agrees with ``mo_order`` for every
    row, ties and both rankings included."""
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 5, size=(40, 2 + seed % 2)).astype(float)
    keys = [f"k{i:02d}" for i in rng.permutation(40)]
    for ranking in ("eps_net", "crowding"):
        order = mo_order(points, keys, ranking)
        assert [mo_position(points, keys, row, ranking) for row in range(40)] == [
            order.index(row) + 1 for row in range(40)
        ]
