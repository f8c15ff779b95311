"""The Python API (``study.api.study``: ``Study``), the checks made before anything runs
(``arguments``, ``inputs``), ``study train`` (``train``) and ``study status`` (``status``)."""
