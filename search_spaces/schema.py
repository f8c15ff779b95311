"""The schema of a search space file, checked before Ray starts.

A space has fixed settings (any ``TrainConfig`` key), a ``search`` section of distributions with
optional conditions, an objective, and how to run the study. Every value a distribution can take is
checked against ``TrainConfig``, and so is every combination the search can reach (each
combination of categorical choices allowed by the ``when`` conditions, with each numeric setting at
both of its bounds), so a space that validates produces valid trials.
"""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from search_spaces import SpaceError, read_space_yaml, resolve_space
from trainables.config import ConfigError, TrainConfig, known_settings, parse_config
from trainables.errors import PluginError
from trainables.layout import check_study_name
from trainables.messages import first_problem, shown
from trainables.methods import METHODS
from trainables.metrics.objectives import (
    DEFAULT_METRICS,
    directions,
    is_cost,
    unknown_objective,
    with_role,
)
from trainables.plugins import load_plugins, resolve_spec

KINDS = ("loguniform", "uniform", "int", "categorical")


class Distribution(BaseModel):
    """Exactly one of ``loguniform: [low, high]``, ``uniform: [low, high]``, ``int: [low, high]``
    or ``categorical: [choices]``; ``when: {param: [values]}`` samples it only where every named
    parameter (sampled earlier, or fixed) takes one of the listed values."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    # ``builtins.int``: inside the class body the name ``int`` is this field (its default None)
    int: tuple[builtins.int, builtins.int] | None = None
    categorical: list[Any] | None = Field(None, min_length=1)
    step: float | None = Field(None, gt=0)
    when: dict[str, list[Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_kind_with_ordered_bounds(self) -> Distribution:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(KINDS)} (got {given or 'none'})")
        bounds = self.bounds
        if bounds is not None:
            low, high = bounds
            if low > high:
                raise ValueError(f"low ({low}) > high ({high})")
            if self.kind == "loguniform" and low <= 0:
                raise ValueError(f"loguniform needs low > 0 (got {low})")
        return self

    @property
    def kind(self) -> str:
        """Which of ``KINDS`` this is."""
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def bounds(self) -> tuple[float, float] | None:
        """(low, high) for numeric kinds, None for categorical."""
        return None if self.kind == "categorical" else getattr(self, self.kind)

    def values_to_check(self) -> list[Any]:
        """Values at the edges of the distribution (every choice, for categorical)."""
        return list(self.categorical) if self.categorical is not None else list(self.bounds or ())

    def applies(self, chosen: dict[str, Any]) -> bool:
        """Whether the ``when`` condition holds for the parameters chosen so far."""
        return all(chosen.get(key) in values for key, values in self.when.items())

    def suggest(self, trial: Any, name: str) -> Any:
        """Draw this parameter from an Optuna trial."""
        if self.categorical is not None:
            return trial.suggest_categorical(name, self.categorical)
        low, high = self.bounds  # type: ignore[misc]
        if self.kind == "int":
            return trial.suggest_int(name, int(low), int(high), step=int(self.step or 1))
        return trial.suggest_float(name, low, high, log=self.kind == "loguniform", step=self.step)


class Objective(BaseModel):
    """What the search optimises. ``pareto``: the front of ``metrics`` (2 or 3 of the
    objective-capable metrics of ``trainables.metrics.METRICS``, a cost among them at most once;
    each one's direction is known); ``weighted``: maximise ``metrics[0] - weight * metrics[1]``, an accuracy metric and a
    calibration metric. Default metrics: val_accuracy and val_ece."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    type: Literal["pareto", "weighted"] = "pareto"
    weight: float = Field(1.0, ge=0.0, le=1e6)
    metrics: tuple[str, ...] = DEFAULT_METRICS

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, metrics: tuple[str, ...]) -> tuple[str, ...]:
        known = directions()
        unknown = [m for m in metrics if m not in known]
        if unknown:
            raise ValueError(unknown_objective(unknown[0]))
        if len(set(metrics)) != len(metrics):
            raise ValueError("a metric is named twice")
        return metrics

    @model_validator(mode="after")
    def _metrics_fit_the_type(self) -> Objective:
        m = self.metrics
        if self.type == "weighted":
            accuracy, calibration = with_role("accuracy"), with_role("calibration")
            if len(m) != 2 or m[0] not in accuracy or m[1] not in calibration:
                raise ValueError(
                    "a weighted objective takes metrics [ACCURACY, CALIBRATION]: one of "
                    f"{', '.join(accuracy)}, then one of {', '.join(calibration)}"
                )
        elif not 2 <= len(m) <= 3 or sum(is_cost(x) for x in m) > 1:
            raise ValueError("a pareto objective takes 2 or 3 metrics, at most one of them a cost")
        return self

    @property
    def optuna_metrics(self) -> list[str]:
        """The result keys handed to Optuna: the metrics (pareto) or ``objective`` (weighted)."""
        return list(self.metrics) if self.type == "pareto" else ["objective"]

    @property
    def names(self) -> list[str]:
        """What each objective is called where users read it (optuna-dashboard's axes)."""
        if self.type == "pareto":
            return list(self.metrics)
        return [f"{self.metrics[0]} - {self.weight:g} * {self.metrics[1]}"]

    @property
    def plot_axes(self) -> tuple[str, str]:
        """The two metrics a 2-D figure of the search shows, (x, y): y the first maximised
        metric (else the first), x the first other metric that is not a cost (else the other)."""
        m = list(self.metrics)
        known = directions()
        y = next((x for x in m if known[x] == "max"), m[0])
        rest = [x for x in m if x != y]
        return next((x for x in rest if not is_cost(x)), rest[0]), y

    @property
    def modes(self) -> list[str]:
        """max/min per Optuna objective."""
        if self.type != "pareto":
            return ["max"]
        known = directions()
        return [known[m] for m in self.metrics]


class Asha(BaseModel):
    """MO-ASHA's settings (``study.search.rungs``): rungs at the distinct epochs
    ``round(grace_period * reduction_factor**k)`` below ``max_t`` (default: the trials'
    ``epochs``), at most ``study.search.rungs.MAX_RUNGS`` of them; at a rung holding at least
    ``reduction_factor`` configurations, one continues iff its place is within the first
    count / ``reduction_factor``, ordered by non-dominated fronts and, inside a front, by
    ``ranking`` (``eps_net`` or ``crowding``). ``reduction_factor`` is any real number in
    (1, 1000]. ``agreement`` (a number in [-1, 1)) makes each rung check its assumption: it
    ranks only on the objectives whose rung values rank the finished configurations as their
    final values do (the lower bound of Kendall's tau at least ``agreement``) and keeps every
    configuration while none does; unset, the rule is MO-ASHA's as published."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    grace_period: int = Field(1, ge=1, le=100_000)
    reduction_factor: float = Field(3.0, gt=1.0, le=1000)
    max_t: int | None = Field(None, ge=2, le=100_000)
    ranking: Literal["eps_net", "crowding"] = "eps_net"
    agreement: float | None = Field(None, ge=-1.0, lt=1.0)


class Resources(BaseModel):
    """What one trial holds; a fractional ``gpu`` shares a GPU (a scheduling share only).

    ``workers: K`` > 1 trains each trial data-parallel on K Ray Train workers, each holding
    ``cpu`` and ``gpu``; ``batch_size`` stays the global batch."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    cpu: float = Field(1.0, gt=0.0, le=1024)
    gpu: float = Field(0.0, ge=0.0, le=64)
    workers: int = Field(1, ge=1, le=1024)

    @model_validator(mode="after")
    def _whole_gpus_for_workers(self) -> Resources:
        if self.workers > 1 and self.gpu not in (0.0, 1.0):
            raise ValueError(
                "with workers > 1 each worker needs gpu 0 or 1 (DDP needs its own GPU)"
            )
        return self


class Space(BaseModel):
    """A whole search space file.

    ``points`` are configurations (settings over ``fixed``) run before anything is sampled, e.g.
    the rows of a fixed comparison; ``samples`` defaults to their number (8 without points).
    ``repeats: K`` runs every configuration with K seeds (seed, seed + 1, ...): ``samples * K``
    trials. An ``ood`` section is a training setting and is kept under ``fixed``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str | None = None
    description: str = ""
    fixed: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, Distribution] = Field(default_factory=dict)
    points: list[dict[str, Any]] = Field(default_factory=list)
    repeats: int = Field(1, ge=1, le=1000)
    objective: Objective = Field(default_factory=Objective)
    samples: int = Field(None, ge=1, le=100_000)  # type: ignore[assignment]  # None: see the docstring
    concurrency: int = Field(2, ge=1, le=10_000)
    sampler: Literal["tpe", "nsga2", "gp", "random", "grid"] = "tpe"
    # a name in ``study.search.schedulers.SCHEDULERS`` (none, asha, or a plugin's): the study
    # checks it there (search_spaces imports nothing of study); ``asha`` is MO-ASHA's section
    scheduler: str = Field("none", pattern=r"^[a-z][a-z0-9_]{0,47}$")
    asha: Asha = Field(default_factory=Asha)
    seed: int = Field(0, ge=0, lt=2**32)
    resources: Resources = Field(default_factory=Resources)
    max_failures: int = Field(1, ge=0, le=100)
    evidence: Literal["last", "every"] = "last"
    # Late checkpoints (``trainables.trial.late``): the last fraction of each trial's epochs whose
    # own val front is kept, checkpoints and evidence, the front being over (trial, epoch) pairs
    late_checkpoints: float | Literal["off"] = "off"
    # A user's own parts (``trainables.plugins``): module names, and ``.py`` files stored as
    # absolute paths (a space file's relative ones are resolved against its directory).
    plugins: list[str] = Field(default_factory=list)

    @field_validator("late_checkpoints", mode="before")
    @classmethod
    def _late_fraction(cls, value: Any) -> Any:
        if value is False or value == "off":  # YAML reads a bare off as False
            return "off"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ValueError(
                f"late_checkpoints takes the fraction of each trial's last epochs to keep, in "
                f"(0, 1] (for example 0.25), or off; not {value!r}"
            )
        return float(value)

    @property
    def late_fraction(self) -> float:
        """``late_checkpoints`` as a number: 0 when off."""
        return 0.0 if self.late_checkpoints == "off" else float(self.late_checkpoints)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str | None) -> str | None:
        return None if name is None else check_study_name(name, "name")

    @model_validator(mode="before")
    @classmethod
    def _ood_is_a_fixed_setting(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("ood") is not None:
            data = dict(data)
            data["fixed"] = {**(data.get("fixed") or {}), "ood": data.pop("ood")}
        return data

    @model_validator(mode="after")
    def _study_settings_agree(self) -> Space:
        if self.samples is None:
            self.samples = len(self.points) or 8
        if self.samples < len(self.points):
            raise ValueError(
                f"samples ({self.samples}) < the number of points ({len(self.points)})"
            )
        if self.repeats > 1 and "seed" in self.search:
            raise ValueError("repeats > 1 sets the seeds itself: remove 'seed' from 'search'")
        if self.scheduler == "asha":
            self._check_asha()
        if self.sampler == "grid" and any(d.kind != "categorical" for d in self.search.values()):
            raise ValueError("sampler grid needs every search parameter to be categorical")
        return self

    def _check_asha(self) -> None:
        epochs = self.train_config().epochs
        max_t = self.asha.max_t or epochs
        if max_t > epochs:
            raise ValueError(
                f"asha: max_t ({max_t}) > epochs ({epochs}): rungs past the last epoch"
            )
        if self.asha.grace_period >= max_t:
            raise ValueError(
                f"asha: grace_period ({self.asha.grace_period}) must be below max_t ({max_t}): "
                "no rung would stop anything"
            )

    @property
    def asha_max_t(self) -> int:
        """The epoch below which MO-ASHA's rungs sit (``asha.max_t``, default ``epochs``)."""
        return self.asha.max_t or self.train_config().epochs

    @property
    def trials(self) -> int:
        """How many trials the study runs: every configuration, ``repeats`` times."""
        return self.samples * self.repeats

    def train_config(self, sampled: dict[str, Any] | None = None) -> TrainConfig:
        """The TrainConfig of one trial: fixed settings plus sampled ones."""
        return parse_config({**self.fixed, **(sampled or {})}, where="space")


def space_plugins(data: dict[str, Any], source: str, base: Path | None = None) -> list[str]:
    """The ``plugins`` of a parsed space, file plugins resolved against ``base`` (the space
    file's directory; default the working directory) to absolute paths; a one-line
    ``PluginError`` (naming ``source``) for a list that is not one of names, or a missing file."""
    specs = data.get("plugins")
    if specs is None:
        return []
    if not isinstance(specs, list) or not all(isinstance(s, str) and s.strip() for s in specs):
        raise SpaceError(
            f"{source}: 'plugins': give a list of module names (my_pkg.parts) or .py files "
            f"(./my_parts.py), got {shown(specs)}"
        )
    try:
        return list(dict.fromkeys(resolve_spec(spec.strip(), base) for spec in specs))
    except PluginError as err:
        raise PluginError(f"{source}: 'plugins': {err}") from None


def import_plugins(data: dict[str, Any], source: str, base: Path | None = None) -> dict[str, Any]:
    """Import a parsed space's plugins and the installed ``sharpcal.plugins`` entry points, so
    that the names their parts register validate; returns ``data`` with the plugins resolved
    (``space_plugins``). A plugin that does not import, takes a name or breaks its kind's
    contract is a one-line ``PluginError`` naming ``source``."""
    specs = space_plugins(data, source, base)
    try:
        load_plugins(specs)
    except PluginError as err:
        raise PluginError(f"{source}: 'plugins': {err}") from None
    if "plugins" in data:
        data = {**data, "plugins": specs}
    return data


def check_space(data: dict[str, Any], source: str) -> Space:
    """Validate a parsed space, after importing its plugins (``import_plugins``; relative
    files against the working directory); raise ``SpaceError`` naming the file, the key and
    the reason."""
    data = import_plugins(data, source)
    try:
        space = Space(**data)
    except ValidationError as err:
        problem = first_problem(err)
        raise SpaceError(f"{source}: '{problem.key('(top level)')}': {problem.reason}") from None
    fields = known_settings()
    for key in space.fixed:
        if key not in fields:
            raise SpaceError(f"{source}: 'fixed.{key}': unknown setting (see README's settings)")
    try:
        space.train_config()
    except ConfigError as err:
        raise SpaceError(f"{source}: 'fixed': {str(err).removeprefix('space: ')}") from None
    _check_batch_fits_workers(space, source)
    _check_methods_on_workers(space, source)
    _check_points(space, source)
    seen: set[str] = set(space.fixed)
    for name, dist in space.search.items():
        where = f"{source}: 'search.{name}'"
        if name not in fields:
            raise SpaceError(f"{where}: unknown setting (see README's settings)")
        if name in space.fixed:
            raise SpaceError(f"{where}: also set in 'fixed'; keep one")
        for key in dist.when:
            if key not in seen:
                raise SpaceError(
                    f"{where}: 'when' names {key!r}, which is neither fixed nor searched before it"
                )
        for value in dist.values_to_check():
            try:
                space.train_config({name: value})
            except ConfigError as err:
                reason = str(err).split(": ", 1)[-1]
                raise SpaceError(
                    f"{where}: value {shown(value)} is not allowed: {reason}"
                ) from None
        seen.add(name)
    _check_combinations(space, source)
    return space


MAX_COMBINATIONS = 100_000  # configurations checked at most; beyond it a space cannot be meant


def reachable_combinations(space: Space) -> list[dict[str, Any]]:
    """The searched settings of every configuration to check: each combination of categorical
    choices reachable under the ``when`` conditions, and in each, the numeric settings all at
    their low bounds, all at their high bounds, and each at its other bound alone."""
    combos: list[dict[str, Any]] = [{}]
    for name, dist in space.search.items():
        grown = []
        for combo in combos:
            if not dist.applies({**space.fixed, **combo}):
                grown.append(combo)
            elif dist.categorical is not None:
                grown += [{**combo, name: v} for v in dist.categorical]
            else:
                grown.append({**combo, name: dist.bounds[0]})  # type: ignore[index]
        combos = grown
        if len(combos) > MAX_COMBINATIONS:
            raise SpaceError(f"more than {MAX_COMBINATIONS} categorical combinations")
    out = []
    for low in combos:  # the categorical choices, numeric settings at their low bounds
        high = {n: space.search[n].bounds[1] for n in low if space.search[n].categorical is None}  # type: ignore[index]
        out.append(low)
        if high:
            out.append({**low, **high})
        if len(high) > 1:
            out += [{**low, name: value} for name, value in high.items()]
    return out


def _check_combinations(space: Space, source: str) -> None:
    try:
        combos = reachable_combinations(space)
    except SpaceError as err:
        raise SpaceError(f"{source}: 'search': {err}; split it into several spaces") from None
    for combo in combos:
        try:
            space.train_config(combo)
        except ConfigError as err:
            reason = str(err).split(": ", 1)[-1]
            shown_combo = ", ".join(f"{k}={shown(v)}" for k, v in combo.items())
            raise SpaceError(
                f"{source}: 'search': the combination {shown_combo} is not allowed: {reason}; "
                "restrict it with 'when'"
            ) from None


def _check_points(space: Space, source: str) -> None:
    fields = known_settings()
    for i, point in enumerate(space.points):
        for key in point:
            if key not in fields:
                raise SpaceError(f"{source}: 'points.{i}.{key}': unknown setting")
        try:
            space.train_config(point)
        except ConfigError as err:
            reason = str(err).split(": ", 1)[-1]
            raise SpaceError(f"{source}: 'points.{i}': {reason}") from None


def _check_batch_fits_workers(space: Space, source: str) -> None:
    workers = space.resources.workers
    if workers == 1:
        return
    smallest = space.train_config().batch_size
    if "batch_size" in space.search:
        smallest = min(int(v) for v in space.search["batch_size"].values_to_check())
    if smallest < 2 * workers:
        raise SpaceError(
            f"{source}: 'resources.workers': {workers} workers need batch_size >= {2 * workers} "
            f"(at least 2 samples per worker for BatchNorm; got {smallest})"
        )


def _check_methods_on_workers(space: Space, source: str) -> None:
    """A method that cannot train data-parallel (``Method.data_parallel``, e.g. bSAM, whose
    weight noise is drawn per process) is refused with several workers."""
    if space.resources.workers == 1:
        return
    methods = [space.train_config().method, *(p.get("method") for p in space.points)]
    if "method" in space.search:
        methods += [str(v) for v in space.search["method"].categorical or []]
    for name in dict.fromkeys(m for m in methods if m in METHODS):
        method = METHODS.get(name)
        if not method.data_parallel:
            raise SpaceError(
                f"{source}: 'resources.workers': method {name} trains on one worker "
                f"({method.one_worker_reason}); set workers: 1 or leave {name} out"
            )


def load_space(name_or_file: str, overrides: dict[str, Any] | None = None) -> Space:
    """Read, apply top-level ``overrides`` (e.g. samples from the command line) and validate."""
    path = resolve_space(name_or_file)
    data = read_space_yaml(path)
    data.setdefault("name", Path(path).stem)
    if "plugins" in data:  # relative to the space file, wherever it is read from
        data["plugins"] = space_plugins(data, str(path), Path(path).parent)
    return check_overridden(data, overrides or {}, str(path))


def check_overridden(data: dict[str, Any], overrides: dict[str, Any], source: str) -> Space:
    """``check_space`` of ``data`` with ``overrides`` applied; when only the overrides make it
    invalid, the ``SpaceError`` names them (``--set rho=-1: ...``), not ``source``."""
    try:
        return check_space(apply_overrides(data, overrides), source)
    except SpaceError as err:
        if not overrides:
            raise
        try:
            check_space(data, source)
        except SpaceError:
            raise err from None  # the space itself is invalid: say so as it is
        reason = str(err).removeprefix(f"{source}: ").removeprefix("'fixed': ")
        given = ", ".join(_given(k, v) for k, v in overrides.items())
        raise SpaceError(f"--set {given}: {reason}") from None


def _given(key: str, value: Any) -> str:
    """``rho=-1`` as the user gave it, or just ``model`` for a value too long to echo twice."""
    text = shown(value)
    return f"{key}={text}" if len(text) <= 40 else key


def unsearched(data: dict[str, Any], overrides: dict[str, Any]) -> list[str]:
    """The settings of ``overrides`` that ``data``'s ``search`` section searched: overriding one
    fixes it, which takes it out of the search."""
    search = data.get("search")
    if not isinstance(search, dict):
        return []
    return [k for k in overrides if k not in Space.model_fields and k in search]


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A parsed space with ``overrides`` applied: study keys (``samples``...) replace the
    space's, any other key becomes a fixed setting (and leaves ``search``). The description,
    written for the space as it was, says what was overridden."""
    data = dict(data)
    for key, value in overrides.items():
        if key in Space.model_fields:
            data[key] = value
        else:
            data["fixed"] = {**(data.get("fixed") or {}), key: value}
            if key == "ood":  # the top-level section too, or it would come back over the override
                data.pop("ood", None)
            if key in (data.get("search") or {}):
                data["search"] = {k: v for k, v in data["search"].items() if k != key}
    description = data.get("description")
    settings = {k: v for k, v in overrides.items() if k != "description"}
    if settings and isinstance(description, str) and description:
        given = ", ".join(f"{k}={_setting(v)}" for k, v in settings.items())
        data["description"] = f"{description} (overridden: {given})"
    return data


def _setting(value: Any) -> str:
    """An override as ``--set`` writes it (``null``, ``true``, ``0.1``)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)
