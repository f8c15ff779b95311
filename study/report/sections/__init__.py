"""study.report.writer.sections."""
