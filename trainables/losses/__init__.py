"""Losses: what a step minimises (cross-entropy, label smoothing, focal, FLSD-53, AdaFocal,
CSAM's descent loss)."""
