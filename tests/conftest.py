"""Shared fixtures: small, real configurations on scikit-learn's bundled digits."""

from __future__ import annotations

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
