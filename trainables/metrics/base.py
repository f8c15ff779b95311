"""The metric registry: every per-split metric a trial logs, and everything the rest of sharpcal
knows about it, lives on one registered ``Metric`` (torchmetrics-style: the metadata sits on the
metric). A metric's bare name (``ece``) gives its keys by rule: ``val_<name>`` and ``test_<name>``
in a trial's results, ``test_<name>@<calibrator>`` after post-hoc calibration; a cost or a fitted
quantity (``train_seconds``, ``temperature``) keeps its bare name.

Who reads it: the trial (``calibration.calibration_report`` computes every ``split`` metric on
val and test), the space schema (which metrics an objective may name, their directions, a
weighted objective's roles), the value a diverged trial reports, ``study compare`` (columns,
titles, percent formatting, paired differences), post-hoc recalibration, the report, the trial
lines, and the recomputation of metrics from stored per-sample evidence.

A new metric is one file::

    from trainables.metrics import Metric, register_metric

    @register_metric("my_ece")
    class MyEce(Metric):
        title = "My ECE"
        direction = "min"
        role = "calibration"
        diverged = 1.0

        def compute(self, probs, labels):  # (N, C) probabilities, (N,) labels -> float
            ...

Importing this module imports no torch: the built-in metrics load lazily on the first read.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, TypeVar

from trainables.parts import Part
from trainables.registry import Registry, importer

if TYPE_CHECKING:
    from torch import Tensor

Direction = Literal["max", "min"]
Role = Literal["accuracy", "calibration", "cost"]
Scope = Literal["split", "fit", "cost"]
InCompare = Literal["always", "objective", "never"]
N_BINS = 15  # every binned metric: in trials (calibration_report's default) and from evidence
M = TypeVar("M", bound="type[Metric]")


class SplitOutputs(NamedTuple):
    """What a metric of one evaluated split can read inside a trial."""

    logits: Tensor  # (N, C) in the working dtype (at least float32)
    probs: Tensor  # (N, C) softmax of logits
    labels: Tensor  # (N,) int64
    num_classes: int
    n_bins: int
    temperature: float | None  # the val-fitted temperature (test), None on val


class Metric(Part):
    """A registered metric. Subclasses set the metadata and implement ``compute``.

    Attributes:
        title: short column title ("smECE"); ``long_title`` the prose one ("smooth ECE").
        direction: "max" or "min" (better), None where neither is (signed, fitted quantities).
        percent: a fraction shown x100 with "(%)" (paired differences in "(pp)").
        signed: can be negative; shown with a sign (over-confidence).
        unit: for costs and the manual ("s", "epochs").
        diverged: what a diverged trial reports (the worst value); needed by objective metrics
            other than costs (those are measured).
        role: "accuracy" / "calibration": may be an objective (a weighted objective takes one of
            each); "cost": a bare cost objective; None: never an objective.
        scope: "split": computed on every evaluated split (``val_<name>``, ``test_<name>``);
            "fit": a fitted quantity (``temperature``); "cost": a bare cost key.
        needs_temperature: computed only where a val-fitted temperature is known (test).
        val_by_trial: the trial logs its val value itself (``ece_ts``, cross-fitted on val),
            which lets a ``needs_temperature`` metric be an objective.
        stored: recomputable from stored per-sample evidence (report, ensembles, post-hoc).
        needs_probs: the evidence recomputation needs the full probability vectors (NaN where
            the evidence has none, above ``MAX_PROBS_CLASSES`` classes).
        compare: a column of ``study compare``'s main table "always", only when the study
            optimises it ("objective"), or "never".
        paired: in the paired-difference table against a baseline.
        posthoc: recomputed after each post-hoc calibrator (``test_<name>@<cal>``).
        in_report: a column of the report's per-method table (recomputed from evidence).
    """

    title: ClassVar[str] = ""
    long_title: ClassVar[str] = ""
    direction: ClassVar[Direction | None] = "min"
    percent: ClassVar[bool] = True
    signed: ClassVar[bool] = False
    unit: ClassVar[str] = ""
    diverged: ClassVar[float | None] = None
    role: ClassVar[Role | None] = None
    scope: ClassVar[Scope] = "split"
    needs_temperature: ClassVar[bool] = False
    val_by_trial: ClassVar[bool] = False
    stored: ClassVar[bool] = True
    needs_probs: ClassVar[bool] = True
    compare: ClassVar[InCompare] = "always"
    paired: ClassVar[bool] = False
    posthoc: ClassVar[bool] = False
    in_report: ClassVar[bool] = True

    name: str = ""  # set when it registers

    # --- computing -------------------------------------------------------------------------

    def compute(self, probs: Tensor, labels: Tensor) -> Tensor | float:
        """The metric of ``(N, C)`` probabilities and ``(N,)`` labels: a Python float or a
        0-dim tensor (tensors of a split are fetched to the host together)."""
        raise NotImplementedError(f"metric {self.name!r} does not implement compute")

    def from_outputs(self, out: SplitOutputs) -> Tensor | float:
        """The metric of one split inside a trial (``calibration_report``). The default:
        ``compute`` of the probabilities, after the val-fitted temperature where the metric
        ``needs_temperature``."""
        probs = out.probs
        if self.needs_temperature:
            assert out.temperature is not None
            probs = (out.logits / out.temperature).softmax(dim=1)
        return self.compute(probs, out.labels)

    def from_evidence(self, split: Any) -> float:
        """The metric recomputed from a stored split (``study.storage.evidence.StoredSplit``).
        The default: ``compute`` of the stored probability vectors (scaled by the stored
        temperature where the metric ``needs_temperature``); NaN where they are missing."""
        if split.probs is None:
            return math.nan
        if self.needs_temperature:
            if not math.isfinite(split.temperature):
                return math.nan
            return float(self.compute(split.scaled_probs(), split.labels))
        return float(self.compute(split.probs, split.labels))

    # --- naming ----------------------------------------------------------------------------

    @property
    def heading(self) -> str:
        """The long title (prose, report tables)."""
        return self.long_title or self.title

    def key(self, split: str) -> str:
        """The result key on ``split`` (``val``, ``test``): ``<split>_<name>``, or the bare name
        of a cost or fitted quantity."""
        return f"{split}_{self.name}" if self.scope == "split" else self.name

    @property
    def objective(self) -> bool:
        """Whether a space's objective may name it (as ``objective_key``)."""
        return self.role is not None and self.direction is not None

    @property
    def objective_key(self) -> str:
        return self.key("val")

    @property
    def test_key(self) -> str:
        return self.key("test")

    def better(self, value: float) -> float:
        """``value`` turned so that higher is better."""
        return value if self.direction == "max" else -value

    def format(self, value: float) -> str:
        """A value in a trial line: 4 decimals, with a sign where the metric is signed."""
        return f"{value:+.4f}" if self.signed else f"{value:.4f}"


def _check(name: str, metric: Metric) -> None:
    """The metric contract (``ValueError`` with the reason)."""
    if not isinstance(metric, Metric):
        raise TypeError("a metric is a subclass of trainables.metrics.Metric")
    if not metric.title:
        raise ValueError("it needs a title (its column title)")
    if metric.direction not in ("max", "min", None):
        raise ValueError(f"direction must be 'max', 'min' or None, not {metric.direction!r}")
    if metric.role not in ("accuracy", "calibration", "cost", None):
        raise ValueError(
            f"role must be 'accuracy', 'calibration', 'cost' or None, not {metric.role!r}"
        )
    if metric.scope not in ("split", "fit", "cost"):
        raise ValueError(f"scope must be 'split', 'fit' or 'cost', not {metric.scope!r}")
    if metric.compare not in ("always", "objective", "never"):
        raise ValueError(
            f"compare must be 'always', 'objective' or 'never', not {metric.compare!r}"
        )
    if metric.role is not None and metric.direction is None:
        raise ValueError(f"a metric with role {metric.role!r} needs a direction")
    if metric.role == "accuracy" and metric.direction != "max":
        raise ValueError("an accuracy metric is maximised (direction 'max')")
    if metric.role == "calibration" and metric.direction != "min":
        raise ValueError("a calibration metric is minimised (direction 'min')")
    if (metric.role == "cost") != (metric.scope == "cost"):
        raise ValueError("a cost metric has scope 'cost', and only a cost metric has")
    if metric.role in ("accuracy", "calibration"):
        if metric.scope != "split":
            raise ValueError("an objective metric other than a cost has scope 'split'")
        d = metric.diverged
        if not isinstance(d, (int, float)) or isinstance(d, bool) or not math.isfinite(d):
            raise ValueError("an objective metric needs a finite diverged value (its worst)")
    if metric.needs_temperature and metric.objective and not metric.val_by_trial:
        raise ValueError(
            "a metric that needs the val-fitted temperature has no val value, so it cannot be "
            "an objective: give it role None"
        )
    overridden = type(metric).compute is not Metric.compute
    if (
        metric.scope == "split"
        and not overridden
        and type(metric).from_outputs is Metric.from_outputs
    ):
        raise ValueError("it implements neither compute(probs, labels) nor from_outputs(out)")
    if metric.stored and not overridden and type(metric).from_evidence is Metric.from_evidence:
        raise ValueError("stored = True needs compute(probs, labels) or from_evidence(split)")


METRICS: Registry[Metric] = Registry(
    "metric", check=_check, load=importer("trainables.metrics.builtin")
)


def register_metric(name: str) -> Any:
    """``@register_metric("name")`` on a ``Metric`` subclass registers an instance of it under
    ``name`` and returns the class."""

    def decorate(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, Metric)):
            METRICS.register(name, cls)  # type: ignore[arg-type]  # the contract's TypeError
        metric = cls()
        metric.name = name
        METRICS.register(name, metric, origin=cls.__module__)
        return cls

    return decorate


def split_metrics() -> list[Metric]:
    """The metrics computed on every evaluated split, in registration order."""
    return [m for m in METRICS.values() if m.scope == "split"]


def stored_metrics() -> list[Metric]:
    """The metrics recomputable from stored evidence, in registration order."""
    return [m for m in METRICS.values() if m.stored]


def objective_metrics() -> dict[str, Metric]:
    """Objective key -> metric, for every metric an objective may name (registration order)."""
    return {m.objective_key: m for m in METRICS.values() if m.objective}
