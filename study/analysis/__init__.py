"""What a study found, computed from what it stored: the front, the comparison table and its
statistics, deep ensembles, post-hoc calibrators, regimes, the hypervolume."""
