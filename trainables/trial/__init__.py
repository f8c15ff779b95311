"""trainables.trial."""
