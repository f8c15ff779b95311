"""Image classifiers by name: small CNN, CIFAR ResNets, Wide ResNet and any timm model."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from trainables.errors import InputError
from trainables.messages import shown
from trainables.models import MODELS, register_model

if TYPE_CHECKING:
    from trainables.models.rank1 import Rank1Spec

TIMM_PREFIX = "timm:"


class ModelError(InputError):
    """Unknown model name or bad constructor arguments (one-line message)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


ModelFactory = Callable[..., nn.Module]


def model_names() -> list[str]:
    """Registered model names, sorted (timm models are named ``timm:<name>`` on top of these)."""
    return sorted(MODELS.names())


def build_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    dropout: float = 0.0,
    mimo: int | None = None,
    rank1: Rank1Spec | None = None,
    cfg: Any = None,
) -> nn.Module:
    """Construct model ``name`` (registered, ``timm:<name>`` or a bare timm name), untrained;
    ``dropout`` > 0 puts a dropout layer of that rate before its classifier (``with_dropout``);
    ``mimo`` M: the model as M MIMO members (``trainables.models.mimo.Mimo``: M times the input
    channels and the classes); ``rank1``: the model as a rank-1 BNN (``trainables.models.rank1``);
    ``cfg``: the run's settings, for a registered builder that takes them."""
    if rank1 is not None:
        from trainables.models.rank1 import Rank1Ensemble

        return Rank1Ensemble(
            build_model(name, num_classes, in_channels, image_size, cfg=cfg), rank1
        )
    if mimo is not None:
        from trainables.models.mimo import Mimo

        backbone = build_model(
            name, num_classes * mimo, in_channels * mimo, image_size, dropout, cfg=cfg
        )
        return Mimo(backbone, mimo)
    if num_classes < 1 or in_channels < 1 or image_size < 1:
        raise ModelError(
            f"model {name!r}: num_classes={num_classes}, in_channels={in_channels} and "
            f"image_size={image_size} must all be >= 1"
        )
    if name in MODELS:
        model = MODELS.get(name).build(cfg, num_classes, (in_channels, image_size, image_size))
    else:
        check_model_name(name)
        model = _timm_model(name.removeprefix(TIMM_PREFIX), num_classes, in_channels)
    return with_dropout(model, dropout) if dropout > 0 else model


def with_dropout(model: nn.Module, rate: float) -> nn.Module:
    """``model`` with its classifier (its last ``nn.Linear``) preceded by ``nn.Dropout(rate)``:
    the same place for every registered and timm model (timm's own ``drop_rate`` sits there too,
    but not every architecture takes it)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ModelError(f"dropout={rate}: the model has no linear classifier to put it before")
    parent_name, _, child = names[-1].rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Sequential(nn.Dropout(rate), getattr(parent, child)))
    return model


def check_model_name(name: str) -> None:
    """Raise ``ModelError`` unless ``name`` is registered or names a timm model."""
    if name in MODELS or _is_timm_model(name.removeprefix(TIMM_PREFIX)):
        return
    raise ModelError(
        f"unknown model {shown(name)}; registered: {', '.join(model_names())}; "
        f"any timm model can be named as {TIMM_PREFIX}<name>"
    )


def _is_timm_model(name: str) -> bool:
    import timm

    return name in timm.list_models()


def _timm_model(name: str, num_classes: int, in_channels: int) -> nn.Module:
    import timm

    try:
        return timm.create_model(
            name, pretrained=False, num_classes=num_classes, in_chans=in_channels
        )
    except RuntimeError as e:
        raise ModelError(
            f"timm model {shown(name)} cannot be built ({e}); see timm.list_models() for names"
        ) from e


def _init_weights(model: nn.Module) -> nn.Module:
    """He-normal convolutions, unit BatchNorm, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    return model


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


def _classifier_head(width: int, num_classes: int) -> list[nn.Module]:
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)]


# ----------------------------------------------------------------------------- small CNN


@register_model("cnn")
def small_cnn(
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    widths: tuple[int, ...] = (32, 64, 128),
) -> nn.Module:
    """Conv-BN-ReLU stages with 2x2 max-pools between them while the map is >= 4 px wide."""
    layers: list[nn.Module] = []
    c_in, size = in_channels, image_size
    for i, width in enumerate(widths):
        layers += _conv_bn_relu(c_in, width)
        if i < len(widths) - 1 and size >= 4:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        c_in = width
    return _init_weights(nn.Sequential(*layers, *_classifier_head(c_in, num_classes)))


@register_model("cnn_fc")
def cnn_fc(
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    widths: tuple[int, ...] = (16, 32),
    hidden: int = 128,
) -> nn.Module:
    """Conv-ReLU stages, each followed by a 2x2 max-pool, then a fully connected head (flatten,
    ``hidden`` units, ReLU, classifier): no BatchNorm, no global pooling.

    The classic small network of the overconfident regime: trained until its training loss is
    near zero, its max-softmax confidence exceeds its accuracy (see BENCHMARKS.md)."""
    layers: list[nn.Module] = []
    c_in, size = in_channels, image_size
    for width in widths:
        layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        c_in, size = width, size // 2
    head = [nn.Flatten(), nn.Linear(c_in * size * size, hidden), nn.ReLU(inplace=True)]
    return _init_weights(nn.Sequential(*layers, *head, nn.Linear(hidden, num_classes)))


# ----------------------------------------------------------------------------- CIFAR ResNets


class BasicBlock(nn.Module):
    """Post-activation 3x3-3x3 residual block (He et al. 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int, shortcut: str = "conv") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            if shortcut == "pad":
                self.shortcut = _PadShortcut(c_out - c_in, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
                )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class _PadShortcut(nn.Module):
    """Parameter-free "option A" shortcut: subsample and zero-pad the extra channels."""

    def __init__(self, extra_channels: int, stride: int) -> None:
        super().__init__()
        self.extra = extra_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return nn.functional.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class CifarResNet(nn.Module):
    """3x3 stride-1 stem (no max-pool), stages of BasicBlocks, global pooling, linear head."""

    def __init__(
        self,
        blocks: tuple[int, ...],
        widths: tuple[int, ...],
        num_classes: int,
        in_channels: int = 3,
        shortcut: str = "conv",
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, widths[0]))
        stages: list[nn.Module] = []
        c_in = widths[0]
        for i, (n, width) in enumerate(zip(blocks, widths, strict=True)):
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                stages.append(BasicBlock(c_in, width, stride, shortcut))
                c_in = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(*_classifier_head(c_in, num_classes))
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))


@register_model("resnet18")
def resnet18(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """CIFAR ResNet-18: BasicBlocks [2, 2, 2, 2], widths 64-128-256-512 (11.2M parameters)."""
    return CifarResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes, in_channels)


@register_model("resnet56")
def resnet56(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """CIFAR ResNet-56 of He et al.: 3 stages of 9 BasicBlocks, widths 16-32-64 (0.85M params)."""
    return CifarResNet((9, 9, 9), (16, 32, 64), num_classes, in_channels, shortcut="pad")


# ----------------------------------------------------------------------------- Wide ResNet


class PreActBlock(nn.Module):
    """Pre-activation wide block: BN-ReLU-conv3x3-(dropout)-BN-ReLU-conv3x3 plus shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        skip = x if self.shortcut is None else self.shortcut(pre)
        return out + skip


class WideResNet(nn.Module):
    """WRN-depth-k (Zagoruyko & Komodakis 2016) with pre-activation blocks."""

    def __init__(
        self,
        depth: int,
        widen: int,
        num_classes: int,
        in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ModelError(f"WideResNet depth={depth} must be 6n+4 (e.g. 28)")
        n = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        c_in = 16
        for i, width in enumerate(widths):
            for j in range(n):
                blocks.append(PreActBlock(c_in, width, 2 if i > 0 and j == 0 else 1, dropout))
                c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.final = nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(inplace=True))
        self.head = nn.Sequential(*_classifier_head(c_in, num_classes))
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.final(self.blocks(self.stem(x))))


@register_model("wrn28_10")
def wrn28_10(
    num_classes: int, in_channels: int = 3, image_size: int = 32, dropout: float = 0.0
) -> nn.Module:
    """Wide ResNet 28-10 (36.5M parameters), dropout 0 by default."""
    return WideResNet(28, 10, num_classes, in_channels, dropout)
