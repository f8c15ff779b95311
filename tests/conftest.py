"""Shared fixtures: small, real configurations on scikit-learn's bundled digits; the fast tier's
rules (``make test-fast``: no Ray, no subprocess, no compile; everything else is marked slow)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
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


@pytest.fixture(autouse=True)
def _torch_threads_as_before() -> Iterator[None]:
    """A trainable run in-process sets torch's thread count to its trial's CPUs; the next test
    gets the suite's own (fewer threads change float32 rounding and double CPU tests' time)."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _registries_as_before() -> Iterator[None]:
    """A part a test (or a plugin it loads) registers is gone after the test, its plugin module
    with it: the next test sees sharpcal's own parts and those registered before it."""
    from trainables.registry import REGISTRIES

    modules = set(sys.modules)
    before = {id(r): set(r._parts) for r in REGISTRIES}
    yield
    for registry in list(REGISTRIES):
        for name in set(registry._parts) - before.get(id(registry), set()):
            if not registry.builtin(name):
                origin = registry.origin(name)
                registry.unregister(name)
                if origin not in modules:
                    sys.modules.pop(origin, None)


@pytest.fixture
def mount_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty directory to mount a tmpfs on (root only; skipped elsewhere)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    target = Path(tempfile.mkdtemp(dir=tmp_path))
    yield target
    # lazy: the in-process Optuna engine may still hold the database open
    subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)


def mount_tmpfs(target: Path, options: str) -> None:
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


def fill_disk(mount_dir: Path, chunk: int) -> None:
    """Fill the filesystem at ``mount_dir`` with a file, ``chunk`` bytes at a time, until it is
    full (to the last ``chunk``)."""
    with (mount_dir / "filler").open("wb", buffering=0) as f, pytest.raises(OSError):
        while True:
            f.write(b"\0" * chunk)
