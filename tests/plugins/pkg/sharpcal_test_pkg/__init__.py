"""A test plugin package that is not installed (``plugins: [sharpcal_test_pkg]``): it registers
nothing and marks every process that imports it (in ``$SHARPCAL_PLUGIN_MARKERS``)."""

from __future__ import annotations

import os
from pathlib import Path

if os.environ.get("SHARPCAL_PLUGIN_MARKERS"):
    import ray

    where = "driver"
    if ray.is_initialized():
        where = "actor" if ray.get_runtime_context().get_actor_id() else "task"
    folder = os.environ["SHARPCAL_PLUGIN_MARKERS"]
    Path(folder, f"pkg-{where}-{os.getpid()}").write_text(__file__)
