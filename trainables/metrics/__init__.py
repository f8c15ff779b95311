"""trainables.metrics."""
