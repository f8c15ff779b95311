"""Metrics: calibration and accuracy measures (``calibration``), the metric registry
(``METRICS``: every metric with its metadata, see ``base``) and the objectives a study can
optimise (``objectives``, read from the registry)."""

from trainables.metrics.base import METRICS, Metric, SplitOutputs, register_metric

__all__ = ["METRICS", "Metric", "SplitOutputs", "register_metric"]
