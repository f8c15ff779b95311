"""trainables.engine."""
