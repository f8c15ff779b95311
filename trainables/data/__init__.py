"""Datasets: their readers, splits and batching (``datasets``), the corruptions of the -C sets
(``corruptions``) and Fashion-MNIST-C (``fashion_mnist_c``)."""

from typing import Any


def __getattr__(name: str) -> Any:
    # ``trainables.data.DataError``: the path a failed trial's pickled error names when it was
    # saved before issue 35
    if name == "DataError":
        from trainables.errors import DataError

        return DataError
    raise AttributeError(f"module 'trainables.data' has no attribute {name!r}")
