"""trainables.models.zoo."""
