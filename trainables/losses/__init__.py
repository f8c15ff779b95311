"""trainables.losses.common."""
