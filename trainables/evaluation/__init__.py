"""Evaluation beyond the test split: the registry of OOD and shifted splits (``SPLITS``,
``register_split``, their base ``Split``; the built-in ones in ``builtin_splits``, the ``ood``
section's models in ``sections`` and ``settings``), their evaluation (``ood``), the per-sample
evidence written to Parquet, the trial's figures. Importing this package imports no torch."""

from trainables.evaluation.splits import SPLITS, Split, register_split

__all__ = ["SPLITS", "Split", "register_split"]
