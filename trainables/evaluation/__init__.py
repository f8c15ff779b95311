"""trainables.evaluation."""
