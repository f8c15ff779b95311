"""study.api.study."""
