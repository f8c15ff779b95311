"""Datasets: the registry of datasets (``DATASETS``, ``register_dataset``; the API in
``trainables.data.base``), their readers, splits and batching (``datasets``), the built-in
datasets (``builtin``), the corruptions of the -C sets (``corruptions``) and Fashion-MNIST-C
(``fashion_mnist_c``). Importing this package imports no torch: the built-in datasets load when
the registry is first read."""

from __future__ import annotations

from typing import Any

from trainables.parts import (
    SETTING_REGISTRIES,
    builtin_settings,
    check_settings_free,
    instance_registrar,
)
from trainables.registry import Registry, importer


def _check(name: str, part: Any) -> None:
    from trainables.data.base import check_dataset

    check_dataset(name, part)
    if getattr(part, "settings", None) is not None:  # builtin_settings imports the config
        check_settings_free("dataset", name, part, builtin_settings())


DATASETS: Registry[Any] = Registry(
    "dataset", check=_check, load=importer("trainables.data.builtin")
)
SETTING_REGISTRIES.append(DATASETS)


def _dataset_base() -> type:
    from trainables.data.base import Dataset  # torch: imported when a dataset registers

    return Dataset


register_dataset = instance_registrar(DATASETS, _dataset_base, "trainables.data.Dataset")
"""``@register_dataset("name")`` on a ``Dataset`` subclass registers one instance of it under
``name`` (a one-line ``PluginError`` when the name is taken or the class breaks the contract)."""


def __getattr__(name: str) -> Any:
    if name in ("Dataset",):
        from trainables.data import base

        return getattr(base, name)
    if name in ("Arrays", "DatasetInfo", "Data"):
        from trainables.data import datasets

        return getattr(datasets, name)
    # ``trainables.data.DataError``: the path a failed trial's pickled error names when it was
    # saved before issue 35
    if name == "DataError":
        from trainables.errors import DataError

        return DataError
    raise AttributeError(f"module 'trainables.data' has no attribute {name!r}")
