"""Where a study keeps what it knows: its directory and files (``files``), the driver lock
(``lock``), what is recorded on the Optuna trials (``records``), the per-sample evidence read back
(``evidence``) and a resumed study bound to where it is now (``binding``)."""
