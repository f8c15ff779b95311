"""When does sharpness-aware training help calibration? The regime map of a study.

A study that trains SGD and other methods under several training budgets (epochs, train-set
size, model: anything but the method's own settings) holds one *regime* per budget. In each
regime, SGD with cross-entropy is the baseline: its fitted temperature T and signed
over-confidence say where the regime lies (T < 1 underconfident, T > 1 overconfident), and every
other method's ECE (and ECE after temperature scaling) is compared with it, paired by seed, with a
Student-t 95% interval (``study.analysis.compare.paired_difference``). The map plots those differences
against SGD's T, one curve per method.

A fit that stopped on a bound of the temperature (``trainables.metrics.calibration.temperature_at_bound``:
a separable val split sends T to 0, one the logits do not predict to infinity) is no verdict: such
a seed is left out of SGD's T, the regime's text says how many seeds were, and a regime with no
SGD fit off the bounds is left out of the map.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from search_spaces.schema import Space  # noqa: E402
from study.analysis.compare import Configuration, PairedDifference, describe, paired_difference  # noqa: E402
from trainables.losses import LOSSES  # noqa: E402
from trainables.methods import METHODS  # noqa: E402
from trainables.metrics.calibration import temperature_at_bound  # noqa: E402


def method_keys() -> tuple[str, ...]:
    """The settings that define a method (its row in the paper's tables): ``method``, every
    registered method's ``defining_keys``, ``loss`` and the losses'; all others define a
    regime."""
    keys = ["method", *(k for m in METHODS.values() for k in m.defining_keys()), "loss"]
    keys += [k for loss in LOSSES.values() for k in loss.defining_keys()]
    return tuple(dict.fromkeys(keys))


def __getattr__(name: str) -> Any:
    if name == "METHOD_KEYS":  # read from the registries each time: plugins add theirs
        return method_keys()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


MAP_METRICS = {"test_ece": "ECE", "test_ece_ts": "ECE after TS"}


@dataclass
class Regime:
    """One training budget: its SGD baseline and the other methods trained under it."""

    settings: dict[str, Any]  # the regime's own settings (over the space's fixed ones)
    baseline: Configuration
    methods: dict[str, Configuration]  # method label -> configuration

    def temperature(self) -> float:
        """SGD's mean fitted temperature in this regime, over the seeds whose fit did not stop
        on a bound (NaN when none did)."""
        return float(np.mean(_fitted_temperatures(self.baseline)[0] or [np.nan]))

    def fits_at_bound(self) -> int:
        """How many of SGD's seeds have a temperature fit that stopped on a bound."""
        return len(_fitted_temperatures(self.baseline)[1])

    def overconfidence(self) -> float:
        """SGD's mean signed over-confidence (mean confidence − accuracy)."""
        return float(np.mean(self.baseline.values("test_overconfidence") or [np.nan]))

    def differences(self, space: Space) -> dict[str, dict[str, PairedDifference]]:
        """Per method and metric: the paired difference to SGD."""
        return {
            label: {
                m: paired_difference(conf.by_seed(m, space), self.baseline.by_seed(m, space))
                for m in MAP_METRICS
            }
            for label, conf in self.methods.items()
        }


def _fitted_temperatures(conf: Configuration) -> tuple[list[float], list[float]]:
    """The temperatures its trials logged: those inside the bounds and those on one (flagged by
    the trial, or beyond the bounds as a fit from before them could be)."""
    inside: list[float] = []
    bound: list[float] = []
    for trial in conf.trials:
        value = trial.user_attrs.get("temperature")
        if not isinstance(value, (int, float)):
            continue
        flagged = bool(trial.user_attrs.get("temperature_at_bound"))
        (bound if flagged or temperature_at_bound(value) else inside).append(float(value))
    return inside, bound


def method_label(conf: Configuration, space: Space) -> str:
    """The configuration's label from its method settings alone (``SAM (ρ=0.1)``, ``CSAM ...``)."""
    return describe({k: v for k, v in conf.settings.items() if k in method_keys()}, space)


def regimes(confs: list[Configuration], space: Space) -> list[Regime]:
    """The study's regimes that have an SGD + cross-entropy baseline, with a temperature fit off
    the bounds, and another method, ordered by SGD's fitted temperature."""
    groups: dict[tuple[tuple[str, str], ...], list[Configuration]] = {}
    for conf in confs:
        own = {k: v for k, v in conf.settings.items() if k not in method_keys()}
        groups.setdefault(tuple(sorted((k, repr(v)) for k, v in own.items())), []).append(conf)
    found = []
    for members in groups.values():
        full = [space.train_config(c.settings) for c in members]
        base = [c for c, f in zip(members, full) if f.method == "sgd" and f.loss == "ce"]
        others = {method_label(c, space): c for c, f in zip(members, full) if c not in base}
        if base and others and _fitted_temperatures(base[0])[0]:
            settings = {k: v for k, v in members[0].settings.items() if k not in method_keys()}
            found.append(Regime(settings, base[0], others))
    return sorted(found, key=lambda r: r.temperature())


def regime_text(regime: Regime) -> str:
    """``epochs=15, train_subset=10000`` (or ``fixed settings`` when the regime sets none), and
    ``(SGD's T on a bound in 1 of 3 seeds, not counted)`` when some seeds' fits were."""
    text = ", ".join(f"{k}={v}" for k, v in sorted(regime.settings.items())) or "fixed settings"
    bound = regime.fits_at_bound()
    if bound:
        seeds = bound + len(_fitted_temperatures(regime.baseline)[0])
        text += f" (SGD's T on a bound in {bound} of {seeds} seeds, not counted)"
    return text


def draw_regime_map(found: list[Regime], space: Space, path: Path) -> None:
    """ECE(method) − ECE(SGD) and the same after temperature scaling against SGD's fitted T, one
    line per method, 95% intervals as error bars."""
    fig, axes = plt.subplots(1, len(MAP_METRICS), figsize=(5.4 * len(MAP_METRICS), 4.2))
    labels = sorted({label for r in found for label in r.methods})
    for ax, (metric, title) in zip(np.atleast_1d(axes), MAP_METRICS.items()):
        for label in labels:
            points = [
                (r.temperature(), r.differences(space)[label][metric])
                for r in found
                if label in r.methods
            ]
            x = np.array([t for t, _ in points])
            d = [p for _, p in points]
            y = 100 * np.array([p.mean for p in d])
            err = 100 * np.array([[p.mean - p.low, p.high - p.mean] for p in d]).T
            ax.errorbar(x, y, yerr=np.nan_to_num(err), marker="o", capsize=3, label=label)
        ax.axhline(0, color="black", linewidth=1)
        ax.axvline(1, color="grey", linewidth=1, linestyle=":")
        ax.set(
            xlabel="SGD's fitted temperature T (< 1 underconfident, > 1 overconfident)",
            ylabel=f"{title}(method) − {title}(SGD), pp",
            title=f"{title}: below 0, the method is better calibrated",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=90)
    plt.close(fig)
