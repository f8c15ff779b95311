"""trainables.data.datasets."""
