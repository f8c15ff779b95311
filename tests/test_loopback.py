"""A Ray that sharpcal starts for itself listens on loopback only, never on the machine's address."""

from __future__ import annotations

import pytest

from study.tuner import LOOPBACK, init_ray


@pytest.mark.slow
def test_a_private_local_ray_binds_loopback_only():
    import ray

    assert not ray.is_initialized()
    init_ray(None, num_cpus=1)
    try:
        nodes = ray.nodes()
        assert nodes and {n["NodeManagerAddress"] for n in nodes} == {LOOPBACK}
        assert ray.get_runtime_context().gcs_address.startswith(f"{LOOPBACK}:")
    finally:
        ray.shutdown()
