"""study.report.writer."""
