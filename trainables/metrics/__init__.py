"""Metrics: calibration and accuracy measures, and the objectives a study can optimise."""
