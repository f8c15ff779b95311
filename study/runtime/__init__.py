"""Running a study: the Tuner and the Ray it starts or joins (``tuner``), the trial events on
the console (``events``), signals (``interrupts``), Ray's private temporary directory
(``ray_temp``), the cluster's nodes (``cluster``) and the autoscaler rehearsal
(``rehearsal``)."""
