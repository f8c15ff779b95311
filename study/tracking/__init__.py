"""study.tracking.runs."""
