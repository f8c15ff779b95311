"""Shared fixtures: small, real configurations on scikit-learn's bundled digits; the fast tier's
rules (``make test-fast``: no Ray, no subprocess, no compile; everything else is marked slow)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import torch

torch.set_num_threads(2)

DIGITS_FAST: dict[str, Any] = dict(
    dataset="digits",
    model="cnn",
    epochs=2,
    batch_size=64,
    lr=0.05,
    train_subset=None,
    device="cpu",
)


@pytest.fixture
def digits_settings() -> dict[str, Any]:
    """Settings of a run on digits that trains in about a second on 2 CPU cores."""
    return dict(DIGITS_FAST)


FAST_TIER_ENV = "SHARPCAL_FAST_TIER"


def pytest_configure(config: pytest.Config) -> None:
    if "not slow" in (config.option.markexpr or ""):
        os.environ[FAST_TIER_ENV] = "1"  # tests.test_cli.run_study refuses to start a process


@pytest.fixture(autouse=True)
def _fast_tier_starts_no_ray() -> Iterator[None]:
    yield
    if os.environ.get(FAST_TIER_ENV) and "ray" in sys.modules:
        import ray

        assert not ray.is_initialized(), "this test starts Ray: mark it slow"
