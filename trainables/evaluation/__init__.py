"""Evaluation beyond the test split: OOD and shifted sets, the per-sample evidence written to
Parquet, the trial's figures."""
