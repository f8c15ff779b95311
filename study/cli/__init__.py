"""study.cli.main."""
