"""The training engine: the epoch loop (``loop``), seeded evaluation passes (``passes``) and
data-parallel training (``distributed``)."""
