"""Datasets: the registry of datasets (``DATASETS``, ``register_dataset``; the API in
``trainables.data.base``), their readers, splits and batching (``datasets``), the built-in
datasets (``builtin``), the corruptions of the -C sets (``corruptions``) and Fashion-MNIST-C
(``fashion_mnist_c``). Importing this package imports no torch: the built-in datasets load when
the registry is first read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from trainables.errors import PluginError
from trainables.parts import SETTING_REGISTRIES, builtin_settings, check_settings_free
from trainables.registry import Registry, importer

D = TypeVar("D", bound=type)


def _check(name: str, part: Any) -> None:
    from trainables.data.base import check_dataset

    check_dataset(name, part)
    if getattr(part, "settings", None) is not None:  # builtin_settings imports the config
        check_settings_free("dataset", name, part, builtin_settings())


DATASETS: Registry[Any] = Registry(
    "dataset", check=_check, load=importer("trainables.data.builtin")
)
SETTING_REGISTRIES.append(DATASETS)


def register_dataset(name: str) -> Callable[[D], D]:
    """``@register_dataset("name")`` on a ``Dataset`` subclass registers one instance of it
    under ``name`` (a one-line ``PluginError`` when the name is taken or the class breaks the
    contract) and returns the class."""

    def decorate(cls: D) -> D:
        from trainables.data.base import Dataset

        if not (isinstance(cls, type) and issubclass(cls, Dataset)):
            raise PluginError(
                f"dataset {name!r} from {getattr(cls, '__module__', '?')}: register a subclass "
                "of trainables.data.Dataset"
            )
        part = cls()
        part.name = name
        DATASETS.register(name, part)
        return cls

    return decorate


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
