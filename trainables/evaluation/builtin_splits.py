"""sharpcal's own OOD / shift splits, registered in evaluation order exactly as a user's split
is. Their checks and evaluation live in ``trainables.evaluation.ood`` (imported when they run,
so loading the registry imports no torch)."""

from __future__ import annotations

from typing import Any

from trainables.evaluation.sections import (
    FASHION_MNIST_TEST_IMAGES,
    CorruptionSettings,
    DigitsSettings,
    HeldoutSettings,
    SvhnSettings,
)
from trainables.evaluation.splits import Split, register_split


@register_split("ood_svhn")
class Svhn(Split):
    title = "SVHN"
    description = "the SVHN test set (test_32x32.mat) as far-OOD data for a 32x32 RGB model"
    reference = "Netzer et al. 2011"
    section_key = "svhn"
    section = SvhnSettings

    def check(self, cfg: Any, settings: Any, info: Any) -> None:
        from trainables.evaluation import ood

        ood._check_svhn(cfg, info)

    def evaluate(self, trainer: Any, cfg: Any, temperature: float) -> Any:
        from trainables.evaluation import ood

        return ood._evaluate_svhn(trainer, cfg, trainer.data.info)


@register_split("ood_digits")
class Digits(Split):
    title = "DIGITS"
    description = "scikit-learn's digits, framed as MNIST's, as far-OOD data for Fashion-MNIST"
    reference = "scikit-learn load_digits"
    section_key = "digits"
    section = DigitsSettings

    def check(self, cfg: Any, settings: Any, info: Any) -> None:
        from trainables.evaluation import ood

        ood._check_digits(info)

    def evaluate(self, trainer: Any, cfg: Any, temperature: float) -> Any:
        from trainables.evaluation import ood

        return ood._evaluate_detection(trainer, self.name, *ood.digits_images(), cfg.subset)


@register_split("ood_heldout")
class Heldout(Split):
    title = "Held-out classes"
    description = "near-OOD: the test images of classes left out of training"
    section_key = "heldout"
    section = HeldoutSettings

    def check(self, cfg: Any, settings: Any, info: Any) -> None:
        from trainables.evaluation import ood

        ood._check_heldout(cfg, info)

    def evaluate(self, trainer: Any, cfg: Any, temperature: float) -> Any:
        from trainables.evaluation import ood

        return ood._evaluate_heldout(trainer, cfg)


class _CifarC(Split):
    """CIFAR-10-C / CIFAR-100-C: memory-mapped ``<corruption>.npy`` files and ``labels.npy``."""

    reference = "Hendrycks & Dietterich 2019"
    section = CorruptionSettings
    detection = False

    def check(self, cfg: Any, settings: Any, info: Any) -> None:
        from trainables.evaluation import ood

        ood._check_cifar_c(self.name, cfg, info)

    def evaluate(self, trainer: Any, cfg: Any, temperature: float) -> Any:
        from trainables.evaluation import ood

        return ood._evaluate_cifar_c(trainer, self.name, cfg, trainer.data.info, temperature)


@register_split("cifar10_c")
class Cifar10C(_CifarC):
    title = "CIFAR-10-C"
    description = "CIFAR-10's test images under 19 corruptions at 5 severities"
    section_key = "cifar10_c"


@register_split("cifar100_c")
class Cifar100C(_CifarC):
    title = "CIFAR-100-C"
    description = "CIFAR-100's test images under 19 corruptions at 5 severities"
    section_key = "cifar100_c"


@register_split("fashion_mnist_c")
class FashionMnistC(Split):
    title = "FMNIST-C"
    description = "Fashion-MNIST's test images corrupted here (generated once and cached)"
    reference = "Mu & Gilmer 2019 (MNIST-C)"
    section_key = "fashion_mnist_c"
    section = CorruptionSettings
    detection = False

    def check_section(self, cfg: Any) -> None:
        if (cfg.subset_per_severity or 0) > FASHION_MNIST_TEST_IMAGES:
            raise ValueError(
                f"fashion_mnist_c: subset_per_severity {cfg.subset_per_severity} is more than "
                f"the {FASHION_MNIST_TEST_IMAGES} test images it corrupts; give at most that, or "
                "null for all of them"
            )

    def check(self, cfg: Any, settings: Any, info: Any) -> None:
        from trainables.evaluation import ood

        ood._check_fashion_mnist_c(cfg, info, settings.section("ood_heldout"))

    def evaluate(self, trainer: Any, cfg: Any, temperature: float) -> Any:
        from trainables.evaluation import ood

        return ood._evaluate_fashion_mnist_c(trainer, cfg, temperature)


@register_split("imagenet_c")
class ImagenetC(Split):
    title = "ImageNet-C"
    description = "ImageNet-C's corrupted validation images, `<corruption>/<severity>/<class>/`"
    reference = "Hendrycks & Dietterich 2019"
    section_key = "imagenet_c"
    section = CorruptionSettings
    detection = False

    def check(self, cfg: Any, settings: Any, info: Any) -> None:
        from trainables.evaluation import ood

        ood._check_imagenet_c(cfg, info)

    def evaluate(self, trainer: Any, cfg: Any, temperature: float) -> Any:
        from trainables.evaluation import ood

        return ood._evaluate_imagenet_c(trainer, cfg, trainer.data.info, temperature)
