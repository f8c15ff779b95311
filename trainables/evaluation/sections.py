"""The settings models of the built-in OOD splits' sections (``ood.svhn``, ``ood.cifar10_c``, ...):
pydantic only, so that ``trainables.config`` (which re-exports them) imports no evaluation code."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from trainables.messages import shown, uri_credentials

SEVERITIES = (1, 2, 3, 4, 5)
FASHION_MNIST_TEST_IMAGES = 10_000  # what Fashion-MNIST-C corrupts: the whole test set


def no_credentials(uri: str | None) -> str | None:
    """A data root without user info: credentials in a URI would be stored in every file and
    message that records the setting (MLflow params, Tune's state, results, reports)."""
    redacted = uri_credentials(uri) if uri else None
    if redacted:
        raise ValueError(
            "the URI holds credentials: remove them from it and set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or the machine's IAM role) instead"
        )
    return uri


class SvhnSettings(BaseModel):
    """SVHN test set as out-of-distribution data for a 32x32 RGB model."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    root: str | None = None  # directory holding test_32x32.mat (default: the svhn data dirs)
    subset: int | None = Field(None, ge=1)  # a seeded choice of this many images; None: all

    _root_has_no_credentials = field_validator("root")(no_credentials)


class DigitsSettings(BaseModel):
    """scikit-learn's digits as far-OOD data for a 1-channel 28x28 model (Fashion-MNIST): the
    8x8 images scaled to 0..255, resized to 20x20 and centred in 28x28 as MNIST's digits are
    (``trainables.evaluation.ood.digits_images``). Both store the background as 0
    (black), so no inversion is needed."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    subset: int | None = Field(None, ge=1)  # a seeded choice of this many images; None: all 1797


class HeldoutSettings(BaseModel):
    """The near-OOD protocol: the model trains, is validated and tested on the other classes
    only (their labels renumbered in order), and the test images of ``classes`` are its OOD
    set."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    classes: tuple[int, ...] = Field(min_length=1)

    @field_validator("classes")
    @classmethod
    def _distinct(cls, classes: tuple[int, ...]) -> tuple[int, ...]:
        if any(c < 0 for c in classes) or len(set(classes)) != len(classes):
            raise ValueError(f"classes {list(classes)} must be distinct class numbers >= 0")
        return tuple(sorted(classes))


class CorruptionSettings(BaseModel):
    """A corrupted test set (CIFAR-10-C, CIFAR-100-C or ImageNet-C)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    root: str | None = None
    corruptions: tuple[str, ...] | None = None  # None: every corruption present under root
    severities: tuple[int, ...] = SEVERITIES
    # the same seeded images at every severity; at most a whole set's (ImageNet-C's 50 000)
    subset_per_severity: int | None = Field(None, ge=1, le=50_000)

    _root_has_no_credentials = field_validator("root")(no_credentials)

    @field_validator("corruptions")
    @classmethod
    def _corruption_names(cls, names: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if names is None:
            return None
        if not names:
            raise ValueError("list no corruptions as null (all present), not as an empty list")
        for name in names:
            if not name or "/" in name or name.startswith(".") or name.endswith(".npy"):
                raise ValueError(f"{shown(name)} is not a corruption name such as 'gaussian_noise'")
        if len(set(names)) != len(names):
            raise ValueError(f"corruptions {list(names)} lists a name twice")
        return names

    @field_validator("severities")
    @classmethod
    def _severity_levels(cls, levels: tuple[int, ...]) -> tuple[int, ...]:
        if not levels:
            raise ValueError("give at least one severity out of 1..5")
        bad = [s for s in levels if s not in SEVERITIES]
        if bad:
            raise ValueError(f"severities {bad} are outside 1..5")
        if len(set(levels)) != len(levels):
            raise ValueError(f"severities {list(levels)} lists a level twice")
        return tuple(sorted(levels))
