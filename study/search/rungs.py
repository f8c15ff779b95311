"""Multi-objective asynchronous successive halving (MO-ASHA, Schmucker et al. 2021): the rung
logic, pure (no Ray; ``study.search.schedulers`` adapts it to Tune).

Rungs sit at the distinct epochs ``round(grace_period * reduction_factor**k)``, below ``max_t``
(``rung_milestones``: in bounded time for any factor above 1, at most ``MAX_RUNGS`` of them).
When an entry (a trial, or a configuration's seeds under ``repeats``) reaches a rung, its
objective vector is recorded there. While fewer than ``reduction_factor`` entries are in, it
continues (ASHA's rule: none of a rung is promotable before it holds ``reduction_factor``
entries); then the rung's entries are ordered — each objective normalised by its rank among them
(ECE's scale is a tenth of accuracy's), then non-dominated sorting into fronts (strict
dominance), each front ordered by the epsilon-net (greedy farthest-first, from the entry best on
the first objective) or by crowding distance (NSGA-II, boundary entries first), the fronts
concatenated — and the entry continues when its *own* position in that order is at most
``count / reduction_factor`` (exact rational arithmetic on the factor's float value). So the
first entry at a rung always continues, and so does one ranked first when it arrives; a real
factor such as 1.2 or 2.5 means what it says. Every tie is broken by the entry's key, so the
decisions depend only on what was recorded, never on the order it arrived in: a resumed study
that records the same values takes the same decisions.

A configuration repeated over seeds is one entry: its vector at a rung is the mean over the seeds
recorded there, and the first seed to reach a rung decides for all of them (its later seeds get
the same decision there: they are stopped together).

A ladder built with ``agreement`` checks its own assumption (issue 36): that an objective's value at
a rung ranks the entries as their final values do. At each decision it measures, per objective,
the rank agreement between the rung's and the final values over the entries that have finished
(Kendall's tau-b, with a one-sided 95% lower bound: Fisher's z of tau with the standard error
sqrt(0.437 / (n - 4)) of Fieller, Hartley and Pearson 1957), and ranks only on the objectives whose
bound clears ``agreement``; while none does (fewer than ``MIN_AGREEMENT_PAIRS`` finished entries
included) the rung keeps every entry.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Ranking = Literal["eps_net", "crowding"]
RANKINGS: tuple[Ranking, ...] = ("eps_net", "crowding")
# Each trial's rung records live in one Optuna attribute (``study.search.schedulers``, ~120 bytes a
# rung), rewritten at every decision. More than 100 rungs take a factor near 1 (below ~1.11 over
# the longest run allowed, 100 000 epochs), whose rungs each stop little.
MAX_RUNGS = 100
MIN_AGREEMENT_PAIRS = 6  # the bound's standard error needs n > 4; below 6 it is above 0.66
AGREEMENT_Z = 1.6449  # one-sided 95%


def minimised(values: Sequence[float], modes: Sequence[str]) -> list[float]:
    """``values`` turned so that lower is better in every objective (``max`` ones negated)."""
    return [-float(v) if m == "max" else float(v) for v, m in zip(values, modes, strict=True)]


def iter_fronts(points: np.ndarray) -> Iterator[list[int]]:
    """The rows of ``points`` (minimised) as non-dominated fronts, best front first, one at a
    time; each front lists its row indices in ascending order. Equal rows share a front. Each
    row's count of remaining rows that dominate it is kept, so peeling every front costs one
    comparison of all pairs."""
    pts = np.asarray(points, dtype=float).reshape(len(points), -1)
    no_worse = (pts[:, None, :] <= pts[None, :, :]).all(axis=-1)
    better = (pts[:, None, :] < pts[None, :, :]).any(axis=-1)
    beats = no_worse & better  # beats[j, i]: row j strictly dominates row i
    dominators = beats.sum(axis=0)
    remaining = np.ones(len(pts), dtype=bool)
    while remaining.any():
        front = np.flatnonzero(remaining & (dominators == 0))
        yield front.tolist()
        remaining[front] = False
        dominators -= beats[front].sum(axis=0)


def nondominated_fronts(points: np.ndarray) -> list[list[int]]:
    """The rows of ``points`` (minimised) sorted into non-dominated fronts, best front first;
    each front lists its row indices in ascending order. Equal rows share a front."""
    return list(iter_fronts(points))


def rank_normalised(points: np.ndarray) -> np.ndarray:
    """Each column replaced by its average rank among the rows, scaled to [0, 1] (ties share a
    rank; a single row, or a column of equal values, is all 0)."""
    from scipy.stats import rankdata

    n = len(points)
    out = np.zeros_like(points, dtype=float)
    if n < 2:
        return out
    for col in range(points.shape[1]):
        out[:, col] = (rankdata(points[:, col], method="average") - 1) / (n - 1)
    return out


def eps_net_order(points: np.ndarray, keys: Sequence[str]) -> list[int]:
    """Row indices of one front in epsilon-net order: first the row lowest on the first
    objective, then repeatedly the row farthest (Euclidean) from those already chosen; ties to
    the smaller key."""
    if len(points) == 0:
        return []
    by_key = np.array(sorted(range(len(points)), key=lambda i: keys[i]))
    pts = np.asarray(points, dtype=float)[by_key]  # key order: argmax takes the first of equals
    first = min(range(len(pts)), key=lambda i: (pts[i][0], keys[by_key[i]]))
    gap = np.linalg.norm(pts - pts[first], axis=1)  # each row's distance to the nearest chosen
    chosen = np.zeros(len(pts), dtype=bool)
    chosen[first] = True
    order = [first]
    while len(order) < len(pts):
        best = int(np.argmax(np.where(chosen, -np.inf, gap)))
        order.append(best)
        chosen[best] = True
        gap = np.minimum(gap, np.linalg.norm(pts - pts[best], axis=1))
    return by_key[order].tolist()


def crowding_order(points: np.ndarray, keys: Sequence[str]) -> list[int]:
    """Row indices of one front by descending crowding distance (NSGA-II: boundary rows of every
    objective first); ties to the smaller key."""
    n = len(points)
    distance = np.zeros(n)
    for col in range(points.shape[1]):
        order = sorted(range(n), key=lambda i: (points[i, col], keys[i]))
        span = points[order[-1], col] - points[order[0], col]
        distance[order[0]] = distance[order[-1]] = np.inf
        if span <= 0:
            continue
        for a, i, b in zip(order, order[1:], order[2:]):
            distance[i] += (points[b, col] - points[a, col]) / span
    return sorted(range(n), key=lambda i: (-distance[i], keys[i]))


def mo_order(points: np.ndarray, keys: Sequence[str], ranking: Ranking = "eps_net") -> list[int]:
    """All rows of ``points`` (minimised objectives), best first: rank-normalised, sorted into
    non-dominated fronts, each front ordered by ``ranking``."""
    normalised = rank_normalised(np.asarray(points, dtype=float))
    within = eps_net_order if ranking == "eps_net" else crowding_order
    order: list[int] = []
    for front in nondominated_fronts(normalised):
        inner = within(normalised[front], [keys[i] for i in front])
        order += [front[i] for i in inner]
    return order


def mo_position(
    points: np.ndarray, keys: Sequence[str], row: int, ranking: Ranking = "eps_net"
) -> int:
    """``row``'s 1-based place in ``mo_order(points, keys, ranking)``: the sizes of the fronts
    before its own, plus its place within its own front (the only front ordered)."""
    normalised = rank_normalised(np.asarray(points, dtype=float))
    within = eps_net_order if ranking == "eps_net" else crowding_order
    before = 0
    for front in iter_fronts(normalised):
        if row in front:
            inner = within(normalised[front], [keys[i] for i in front])
            return before + [front[i] for i in inner].index(row) + 1
        before += len(front)
    raise IndexError(f"row {row} is not among the {len(points)} points")


def rung_milestones(
    grace_period: int, reduction_factor: float, max_t: int, limit: int | None = None
) -> list[int]:
    """The epochs at which rungs sit: the distinct values of
    ``round(grace_period * reduction_factor**k)`` for k = 0, 1, ... below ``max_t``, ascending
    (at most ``limit + 1`` of them when a ``limit`` is given: enough to tell it is exceeded).

    Bounded work for any factor above 1: while consecutive values are less than a quarter epoch
    apart (``grace_period * reduction_factor**k < 0.25 / (reduction_factor - 1)``) each step
    adds at most one to the rounded value, so every epoch from ``grace_period`` up to there is a
    rung and that stretch is written down in closed form; past it each step adds at least a
    quarter epoch."""
    if not (grace_period >= 1 and math.isfinite(reduction_factor) and reduction_factor > 1):
        raise ValueError(
            f"rung milestones need grace_period >= 1 and a finite reduction_factor > 1 (got "
            f"{grace_period}, {reduction_factor})"
        )
    cap = max_t if limit is None else limit + 1
    milestones: list[int] = []
    k = 0
    dense_below = 0.25 / (reduction_factor - 1)
    if grace_period < dense_below:
        k = int(math.log(dense_below / grace_period) / math.log1p(reduction_factor - 1))
        top = min(round(grace_period * reduction_factor**k), max_t - 1)
        milestones = list(range(grace_period, min(top + 1, grace_period + cap)))
        k += 1
    while len(milestones) < cap and (t := round(grace_period * reduction_factor**k)) < max_t:
        if not milestones or t > milestones[-1]:
            milestones.append(t)
        k += 1
    return milestones


@dataclass
class RungEntry:
    """What one entry (trial or configuration) recorded at one rung: each member's minimised
    vector, and the decision taken when its first member arrived."""

    members: dict[str, list[float]] = field(default_factory=dict)
    stop: bool = False

    def mean(self) -> np.ndarray:
        """The members' mean vector."""
        vectors = list(self.members.values())
        if len(vectors) == 1:
            return np.array(vectors[0])
        return np.array([sum(column) / len(vectors) for column in zip(*vectors, strict=True)])


@dataclass(frozen=True)
class Agreement:
    """How well one objective's values at one rung rank the entries as their final values do,
    over the ``pairs`` finished entries recorded there: Kendall's tau-b, its one-sided 95% lower
    bound (None: fewer than ``MIN_AGREEMENT_PAIRS``) and whether the rung ranks on it."""

    tau: float | None
    lower: float | None
    pairs: int
    acts: bool


def kendall_lower_bound(rung: Sequence[float], final: Sequence[float]) -> tuple[float, float]:
    """Kendall's tau-b between two rankings and its one-sided 95% lower bound (Fisher's z with
    Fieller, Hartley and Pearson's standard error); needs at least ``MIN_AGREEMENT_PAIRS`` pairs.
    A constant side has no ranking: tau 0, bound -1."""
    from scipy.stats import kendalltau

    n = len(rung)
    if n < MIN_AGREEMENT_PAIRS or n != len(final):
        raise ValueError(f"need {MIN_AGREEMENT_PAIRS} or more pairs of equal length (got {n})")
    tau = float(kendalltau(rung, final).statistic)
    if not math.isfinite(tau):
        return 0.0, -1.0
    z = math.atanh(min(max(tau, -0.999999), 0.999999))
    return tau, math.tanh(z - AGREEMENT_Z * math.sqrt(0.437 / (n - 4)))


@dataclass(frozen=True)
class Decision:
    """A rung decision: whether the entry stops, at which rung, and its place there."""

    stop: bool
    milestone: int
    position: int  # 1-based, in the rung's order
    count: int  # entries at the rung then
    agreement: tuple[Agreement, ...] = ()  # as measured for it (a ladder with ``agreement``)


class RungLadder:
    """MO-ASHA's bookkeeping for one study (one bracket), in minimised objectives.

    Args:
        num_objectives: the length of every recorded vector (1: plain ASHA).
        max_t: no rung at or above this epoch.
        grace_period: the first rung's epoch.
        reduction_factor: eta > 1 (real); an entry waits for eta entries at its rung, then
            continues iff its place is within the first count / eta. At most ``MAX_RUNGS``
            rungs (``rung_milestones``), else ValueError.
        ranking: the order inside a front, ``eps_net`` or ``crowding``.
        agreement: None (MO-ASHA as published), or the lower bound of the rank agreement an
            objective needs at a rung to be ranked on there (``agreement_at``); the final values
            come from ``record_final``.
    """

    def __init__(
        self,
        num_objectives: int,
        max_t: int,
        grace_period: int = 1,
        reduction_factor: float = 3.0,
        ranking: Ranking = "eps_net",
        agreement: float | None = None,
    ) -> None:
        if agreement is not None and not -1.0 <= agreement < 1.0:
            raise ValueError(f"agreement must be in [-1, 1) (got {agreement})")
        if (
            num_objectives < 1
            or grace_period < 1
            or max_t < 1
            or not (math.isfinite(reduction_factor) and reduction_factor > 1)
        ):
            raise ValueError(
                "MO-ASHA needs num_objectives >= 1, grace_period >= 1, max_t >= 1 and a finite "
                f"reduction_factor > 1 (got {num_objectives}, {grace_period}, {max_t}, "
                f"{reduction_factor})"
            )
        if ranking not in RANKINGS:
            raise ValueError(f"ranking must be one of {RANKINGS} (got {ranking!r})")
        self.num_objectives = num_objectives
        self.reduction_factor = reduction_factor
        # eta as an exact ratio: the waiting and cut rules compare integers, never rounded floats
        self._eta = float(reduction_factor).as_integer_ratio()
        self.ranking: Ranking = ranking
        self.milestones = rung_milestones(grace_period, reduction_factor, max_t, limit=MAX_RUNGS)
        if len(self.milestones) > MAX_RUNGS:
            raise ValueError(
                f"reduction_factor {reduction_factor} with grace_period {grace_period} puts more "
                f"than {MAX_RUNGS} rungs below max_t {max_t}"
            )
        self.rungs: dict[int, dict[str, RungEntry]] = {m: {} for m in self.milestones}
        self.agreement = agreement
        self.finals: dict[str, dict[str, list[float]]] = {}  # key -> member -> final vector

    def record_final(self, key: str, values: Sequence[float], member: str | None = None) -> None:
        """An entry's member finished with ``values`` (minimised): a pair for the agreement."""
        self.finals.setdefault(key, {})[key if member is None else member] = self._vector(values)

    def agreement_at(self, milestone: int) -> list[Agreement]:
        """Per objective, the rank agreement at ``milestone`` between the entries' values there
        and their final ones (each a mean over the members that have both), over the finished
        entries recorded there; ``acts`` where the lower bound clears ``agreement``."""
        pairs = []
        for key, entry in sorted(self.rungs[milestone].items()):
            members = [m for m in entry.members if m in self.finals.get(key, {})]
            if members:
                rung = np.mean([entry.members[m] for m in members], axis=0)
                pairs.append((rung, np.mean([self.finals[key][m] for m in members], axis=0)))
        out = []
        for j in range(self.num_objectives):
            if len(pairs) < MIN_AGREEMENT_PAIRS:
                out.append(Agreement(None, None, len(pairs), False))
                continue
            tau, lower = kendall_lower_bound([p[0][j] for p in pairs], [p[1][j] for p in pairs])
            acts = self.agreement is not None and lower >= self.agreement
            out.append(Agreement(tau, lower, len(pairs), acts))
        return out

    def record(
        self, milestone: int, key: str, member: str, values: Sequence[float], stop: bool
    ) -> None:
        """Put back a result recorded earlier, with the decision taken then (a resume)."""
        entry = self.rungs[milestone].setdefault(key, RungEntry(stop=stop))
        entry.members[member] = self._vector(values)

    def on_result(
        self, key: str, epoch: int, values: Sequence[float], member: str | None = None
    ) -> Decision | None:
        """An entry's result after ``epoch`` epochs, ``values`` minimised. Records it at the
        highest rung it has reached and not yet recorded, and returns that rung's decision (None:
        no rung reached, or this member was recorded there already — then its earlier decision
        stands, see ``stopped_at``)."""
        member = key if member is None else member
        vector = self._vector(values)
        reached = [m for m in self.milestones if m <= epoch]
        for milestone in reversed(reached):
            entries = self.rungs[milestone]
            if member in entries.get(key, RungEntry()).members:
                return None
            entry = entries.get(key)
            if entry is not None:  # another seed of the configuration decided here
                entry.members[member] = vector
                return self._place(milestone, key, entry.stop)
            entries[key] = RungEntry({member: vector})
            decision = self._decide(milestone, key)
            entries[key].stop = decision.stop
            return decision
        return None

    def stopped_at(self, key: str) -> int | None:
        """The rung at which ``key`` was stopped, if it was."""
        for milestone in self.milestones:
            entry = self.rungs[milestone].get(key)
            if entry is not None and entry.stop:
                return milestone
        return None

    def _vector(self, values: Sequence[float]) -> list[float]:
        vector = [float(v) for v in values]
        if len(vector) != self.num_objectives or not np.all(np.isfinite(vector)):
            raise ValueError(
                f"expected {self.num_objectives} finite objective values, got {list(values)}"
            )
        return vector

    def _measure(self, milestone: int) -> tuple[tuple[Agreement, ...], list[int]]:
        """The agreement at ``milestone`` (none without ``agreement``) and the objectives ranked
        on there: all, or those whose agreement acts."""
        if self.agreement is None:
            return (), list(range(self.num_objectives))
        measured = tuple(self.agreement_at(milestone))
        return measured, [j for j, a in enumerate(measured) if a.acts]

    def _decide(self, milestone: int, key: str) -> Decision:
        entries = self.rungs[milestone]
        measured, columns = self._measure(milestone)
        numerator, denominator = self._eta
        if len(entries) * denominator < numerator:  # fewer than eta in: none is judged yet
            return Decision(False, milestone, 0, len(entries), measured)
        if not columns:  # no objective ranks as it ends: keep everyone
            return Decision(False, milestone, 0, len(entries), measured)
        return self._place(milestone, key, None, measured, columns)

    def _place(
        self,
        milestone: int,
        key: str,
        stop: bool | None,
        measured: tuple[Agreement, ...] | None = None,
        columns: list[int] | None = None,
    ) -> Decision:
        """``key``'s place in its rung's order over the objectives ``columns`` (all, when none
        acts; measured here when not given); ``stop`` as given, else from that place."""
        if measured is None or columns is None:
            measured, columns = self._measure(milestone)
        entries = self.rungs[milestone]
        keys = sorted(entries)
        columns = columns or list(range(self.num_objectives))
        points = np.array([entries[k].mean() for k in keys])[:, columns]
        position = mo_position(points, keys, keys.index(key), self.ranking)
        if stop is None:  # beyond the first count / eta places
            numerator, denominator = self._eta
            stop = position * numerator > len(keys) * denominator
        return Decision(stop, milestone, position, len(keys), measured)
