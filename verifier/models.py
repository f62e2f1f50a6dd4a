"""Architecture registry: models built for a dataset's input shape and class count."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from verifier.errors import UnknownArchitecture, VerifierError


class LeNet300100(nn.Module):
    """Fully connected input -> 300 -> 100 -> classes (LeCun et al.; Frankle & Carbin's LeNet)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(math.prod(input_shape), 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity or 1x1-conv projection shortcut (torchvision names)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _projection(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, torchvision's ResNet v1.5), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.downsample = _projection(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


def _image_shape(input_shape: tuple[int, ...], arch: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise VerifierError(f"{arch} needs image inputs (C, H, W), got shape {tuple(input_shape)}")
    return int(input_shape[0]), int(input_shape[1]), int(input_shape[2])


class CifarResNet(nn.Module):
    """CIFAR ResNets with torchvision names: a 3x3 stride-1 stem conv, no max-pool, then stages
    `layer1..layerK` (first stride 1, the others 2), global average pool and `fc`.

    Defaults are He et al.'s ResNet-20 (three stages of `blocks`=3 BasicBlocks, widths 16/32/64);
    `blocks` may also be one count per stage, e.g. (2, 2, 2, 2) with widths 64..512 for ResNet-18."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, blocks: int | tuple[int, ...] = 3,
                 widths: tuple[int, ...] = (16, 32, 64), block: type[nn.Module] = BasicBlock) -> None:
        super().__init__()
        counts = (blocks,) * len(widths) if isinstance(blocks, int) else tuple(blocks)
        if len(counts) != len(widths):
            raise ValueError("one block count per stage width")
        expansion = getattr(block, "expansion", 1)
        self.num_stages = len(widths)
        self.conv1 = nn.Conv2d(input_shape[0], widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        for index, (planes, count) in enumerate(zip(widths, counts, strict=True), start=1):
            layers = []
            for position in range(count):
                stride = 2 if index > 1 and position == 0 else 1
                layers.append(block(in_planes, planes, stride))
                in_planes = planes * expansion
            setattr(self, f"layer{index}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{index}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(input_shape: tuple[int, ...], num_classes: int) -> CifarResNet:
    """CIFAR ResNet-18: BasicBlocks [2, 2, 2, 2], widths 64/128/256/512 (about 11.17M parameters)."""
    _image_shape(input_shape, "resnet18")
    return CifarResNet(input_shape, num_classes, (2, 2, 2, 2), (64, 128, 256, 512), BasicBlock)


def resnet50(input_shape: tuple[int, ...], num_classes: int) -> CifarResNet:
    """CIFAR ResNet-50: Bottlenecks [3, 4, 6, 3], widths 64..512 x 4 (about 23.5M parameters)."""
    _image_shape(input_shape, "resnet50")
    return CifarResNet(input_shape, num_classes, (3, 4, 6, 3), (64, 128, 256, 512), Bottleneck)


class Conv4(nn.Module):
    """Frankle & Carbin's Conv-4: conv 64, 64, max-pool, conv 128, 128, max-pool, fc 256, 256, classes.

    3x3 convs with padding 1 and ReLU; the flatten size is 128 * (H // 4) * (W // 4) from the input
    shape, so 8x8, 28x28 and 32x32 inputs all work."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        channels, height, width = _image_shape(input_shape, "conv4")
        if height < 4 or width < 4:
            raise VerifierError(f"conv4 needs inputs of at least 4x4 pixels, got {height}x{width}")
        self.conv1 = nn.Conv2d(channels, 64, 3, 1, 1)
        self.conv2 = nn.Conv2d(64, 64, 3, 1, 1)
        self.conv3 = nn.Conv2d(64, 128, 3, 1, 1)
        self.conv4 = nn.Conv2d(128, 128, 3, 1, 1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(128 * (height // 4) * (width // 4), 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc3 = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv2(torch.relu(self.conv1(x)))))
        x = self.pool(torch.relu(self.conv4(torch.relu(self.conv3(x)))))
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc3(torch.relu(self.fc2(x)))


VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                                     512, 512, 512, "M")


class VGG(nn.Module):
    """CIFAR VGG with BatchNorm: `features.N` numbered as torchvision's vgg16_bn (conv, bn, ReLU per
    entry, MaxPool2d(2) per "M"), global average pool, then `classifier` = Linear(512, classes).

    Small inputs: a max-pool that would act on a 1x1 (or smaller) feature map is replaced by
    nn.Identity() at the same index, so parameter names do not depend on the input size; e.g. 8x8
    inputs keep the first three pools, 28x28 the first four, 32x32 all five. The average pool makes
    the classifier see 512 features for any input size."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int,
                 cfg: tuple[int | str, ...] = VGG16_CFG) -> None:
        super().__init__()
        channels, height, width = _image_shape(input_shape, "vgg")
        layers: list[nn.Module] = []
        for entry in cfg:
            if entry == "M":
                if height <= 1 or width <= 1:
                    layers.append(nn.Identity())
                else:
                    layers.append(nn.MaxPool2d(2, 2))
                    height, width = height // 2, width // 2
            else:
                layers += [nn.Conv2d(channels, int(entry), 3, padding=1), nn.BatchNorm2d(int(entry)),
                           nn.ReLU(inplace=True)]
                channels = int(entry)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg16(input_shape: tuple[int, ...], num_classes: int) -> VGG:
    """CIFAR VGG-16 with BatchNorm (about 14.7M parameters for 10 classes)."""
    return VGG(input_shape, num_classes, VGG16_CFG)


def _all_weights(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if name.endswith("weight") and p.dim() > 1]


def _convs_but_stem(model: nn.Module) -> list[str]:
    return [f"{name}.weight" for name, module in model.named_modules()
            if isinstance(module, nn.Conv2d) and name != "conv1"]


def _conv4_prunable(model: nn.Module) -> list[str]:
    return [name for name in _all_weights(model) if name not in ("conv1.weight", "fc3.weight")]


def _vgg_prunable(model: nn.Module) -> list[str]:
    return [f"{name}.weight" for name, module in model.named_modules()
            if isinstance(module, nn.Conv2d) and name != "features.0"]


@dataclass(frozen=True)
class ArchSpec:
    name: str
    build: Callable[[tuple[int, ...], int], nn.Module]
    prunable: Callable[[nn.Module], list[str]]
    last_layer: str | None  # a prunable layer whose outputs are classes, not hidden units
    input_layer: str | None = None  # a prunable layer whose inputs have fixed positions: input pixels,
    # or a flattened feature map (its columns permute only in whole-channel blocks)


ARCHITECTURES: dict[str, ArchSpec] = {
    "lenet300_100": ArchSpec("lenet300_100", LeNet300100, _all_weights, "fc3.weight", "fc1.weight"),
    "resnet20": ArchSpec("resnet20", CifarResNet, _convs_but_stem, None),
    "conv4": ArchSpec("conv4", Conv4, _conv4_prunable, None, "fc1.weight"),
    "resnet18": ArchSpec("resnet18", resnet18, _convs_but_stem, None),
    "resnet50": ArchSpec("resnet50", resnet50, _convs_but_stem, None),
    "vgg16": ArchSpec("vgg16", vgg16, _vgg_prunable, None),
}


def architecture_names() -> list[str]:
    return list(ARCHITECTURES)


def _spec(arch: str) -> ArchSpec:
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise UnknownArchitecture(f"unknown arch {arch!r}; known: {', '.join(ARCHITECTURES)}") from None


def build_model(arch: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build `arch` for inputs of `input_shape` (C, H, W or flat) and `num_classes` outputs."""
    return _spec(arch).build(tuple(input_shape), num_classes)


def prunable_parameters(arch: str, model: nn.Module) -> list[str]:
    """Names of the weights that pruning touches (paper default: not the stem conv, not BatchNorm)."""
    return _spec(arch).prunable(model)


def hidden_axis(arch: str, param_name: str) -> int:
    """Axis of a prunable weight indexed by hidden units (no identity across independent training)."""
    return 1 if param_name == _spec(arch).last_layer else 0


def permutable_axes(arch: str, param_name: str) -> tuple[bool, bool]:
    """Whether a prunable weight's rows (outputs) and columns (inputs) can be permuted freely without
    changing the network's function: not the class outputs, not the input pixels, not the columns of
    a flattened feature map."""
    spec = _spec(arch)
    return param_name != spec.last_layer, param_name != spec.input_layer
