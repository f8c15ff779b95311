"""A Ray that sharpcal starts for itself listens on loopback only, never on the machine's address."""

from __future__ import annotations

import pytest

from study.runtime.tuner import LOOPBACK, init_ray, is_loopback_address


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


def test_a_cluster_address_on_loopback_is_joined_from_loopback():
    """A driver joining a loopback cluster must take the loopback address itself (it hung)."""
    assert is_loopback_address("127.0.0.1:6379") and is_loopback_address("localhost:6379")
    assert is_loopback_address("[::1]:6379") and is_loopback_address("ray://127.0.0.1:10001")
    assert not is_loopback_address("10.0.0.5:6379") and not is_loopback_address("auto")
