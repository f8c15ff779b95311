"""trainables.methods."""
