"""study.runtime."""
