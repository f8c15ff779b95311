"""Models: the registered architectures and timm's (``zoo``), and the MIMO and rank-1 BNN
wrappers."""

from typing import Any


def __getattr__(name: str) -> Any:
    # ``trainables.models.ModelError``: the path a failed trial's pickled error names when it was
    # saved before issue 35
    if name == "ModelError":
        from trainables.models.zoo import ModelError

        return ModelError
    raise AttributeError(f"module 'trainables.models' has no attribute {name!r}")
