from __future__ import annotations

import pytest
import torch
from torch import nn

from verifier.data import augment, dataset_names, dataset_spec, load_dataset, load_synthetic, normalize
from verifier.errors import UnknownArchitecture, UnknownDataset
from verifier.models import architecture_names, build_model, hidden_axis, prunable_parameters


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32), (1, 28, 28)])
@pytest.mark.parametrize("arch", ["lenet300_100", "resnet20"])
def test_models_build_and_run_for_any_input_shape(arch, shape):
    model = build_model(arch, shape, 7)
    assert model(torch.zeros(2, *shape)).shape == (2, 7)


def test_resnet20_names_and_size():
    model = build_model("resnet20", (3, 32, 32), 10)
    names = set(model.state_dict())
    for name in ("conv1.weight", "bn1.running_mean", "layer1.2.conv2.weight", "layer2.0.downsample.0.weight",
                 "layer3.0.downsample.1.weight", "fc.weight", "fc.bias"):
        assert name in names
    assert "layer1.0.downsample.0.weight" not in names
    parameters = sum(p.numel() for p in model.parameters())
    assert abs(parameters - 0.27e6) / 0.27e6 < 0.02
    prunable = prunable_parameters("resnet20", model)
    assert "conv1.weight" not in prunable and "fc.weight" not in prunable
    assert len(prunable) == 18 + 2 and "layer3.0.downsample.0.weight" in prunable


def test_lenet_names_prunable_and_hidden_axes():
    model = build_model("lenet300_100", (1, 8, 8), 10)
    assert [n for n, _ in model.named_parameters()] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
                                                         "fc3.weight", "fc3.bias"]
    assert model.fc1.weight.shape == (300, 64)
    assert prunable_parameters("lenet300_100", model) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert [hidden_axis("lenet300_100", n) for n in ("fc1.weight", "fc2.weight", "fc3.weight")] == [0, 0, 1]
    assert hidden_axis("resnet20", "layer3.2.conv2.weight") == 0


def test_unknown_names():
    with pytest.raises(UnknownArchitecture, match="resnet20"):
        build_model("vgg99", (1, 8, 8), 10)
    with pytest.raises(UnknownDataset, match="digits"):
        dataset_spec("imagenet")


def test_digits_is_bundled_scaled_and_split_deterministically():
    data = load_dataset("digits")
    assert (data.input_shape, data.num_classes) == dataset_spec("digits") == ((1, 8, 8), 10)
    assert data.x_train.shape == (1438, 1, 8, 8) and data.x_test.shape == (359, 1, 8, 8)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert float(data.x_train.min()) == 0.0 and float(data.x_train.max()) == 1.0
    assert set(data.y_test.tolist()) == set(range(10))
    load_dataset.cache_clear()
    again = load_dataset("digits")
    assert again.x_test.equal(data.x_test) and again.y_train.equal(data.y_train)


NEW_ARCHS = ["conv4", "resnet18", "resnet50", "vgg16"]


def test_registries_list_the_new_names():
    assert set(NEW_ARCHS) <= set(architecture_names())
    assert {"digits", "mnist", "cifar10", "cifar100", "synthetic"} <= set(dataset_names())
    assert dataset_spec("cifar10") == ((3, 32, 32), 10) and dataset_spec("synthetic") == ((3, 32, 32), 10)


@pytest.mark.parametrize("shape, classes", [((1, 8, 8), 10), ((1, 28, 28), 10), ((3, 32, 32), 100)])
@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_new_models_build_and_run(arch, shape, classes):
    model = build_model(arch, shape, classes).eval()
    with torch.no_grad():
        assert model(torch.rand(2, *shape)).shape == (2, classes)
    prunable = prunable_parameters(arch, model)
    params = dict(model.named_parameters())
    assert prunable and all(name in params for name in prunable)
    assert all(hidden_axis(arch, name) == 0 for name in prunable)


@pytest.mark.parametrize("arch, expected, tolerance", [
    ("resnet18", 11.17e6, 0.02), ("resnet50", 23.5e6, 0.02), ("vgg16", 14.7e6, 0.03),
    ("conv4", 2.42e6, 0.02)])
def test_parameter_counts(arch, expected, tolerance):
    model = build_model(arch, (3, 32, 32), 10)
    assert abs(sum(p.numel() for p in model.parameters()) - expected) / expected < tolerance


def test_conv4_names_and_prunable():
    model = build_model("conv4", (1, 28, 28), 10)
    weights = [n for n, p in model.named_parameters() if n.endswith("weight")]
    assert weights == [f"conv{i}.weight" for i in range(1, 5)] + [f"fc{i}.weight" for i in range(1, 4)]
    assert model.fc1.weight.shape == (256, 128 * 7 * 7)
    assert prunable_parameters("conv4", model) == ["conv2.weight", "conv3.weight", "conv4.weight",
                                                   "fc1.weight", "fc2.weight"]


def test_resnet18_and_50_torchvision_names_and_prunable():
    r18 = build_model("resnet18", (3, 32, 32), 10)
    names = set(r18.state_dict())
    assert {"conv1.weight", "bn1.running_var", "layer1.1.conv2.weight", "layer2.0.downsample.0.weight",
            "layer4.0.downsample.1.weight", "layer4.1.bn2.bias", "fc.weight"} <= names
    assert "layer1.0.downsample.0.weight" not in names and "layer5.0.conv1.weight" not in names
    assert r18.conv1.kernel_size == (3, 3) and r18.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in r18.modules())
    prunable = prunable_parameters("resnet18", r18)
    assert "conv1.weight" not in prunable and "fc.weight" not in prunable
    assert len(prunable) == 16 + 3
    r50 = build_model("resnet50", (3, 32, 32), 10)
    names = set(r50.state_dict())
    assert {"layer1.0.conv3.weight", "layer1.0.bn3.weight", "layer1.0.downsample.0.weight",
            "layer3.5.conv3.weight", "layer4.2.bn3.running_mean", "fc.weight"} <= names
    assert r50.fc.in_features == 2048 and r50.layer2[0].conv2.stride == (2, 2)
    prunable = prunable_parameters("resnet50", r50)
    assert "conv1.weight" not in prunable and "fc.weight" not in prunable and len(prunable) == 48 + 4


def test_vgg16_names_pools_and_prunable():
    model = build_model("vgg16", (3, 32, 32), 10)
    names = set(model.state_dict())
    # torchvision vgg16_bn conv indices
    convs = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]
    assert {f"features.{i}.weight" for i in convs} <= names and "features.1.running_mean" in names
    assert model.classifier.weight.shape == (10, 512)
    prunable = prunable_parameters("vgg16", model)
    assert prunable == [f"features.{i}.weight" for i in convs[1:]]
    small = build_model("vgg16", (1, 8, 8), 10)
    assert set(small.state_dict()) == names  # skipped pools stay as Identity: same names for any input
    assert sum(isinstance(m, nn.MaxPool2d) for m in small.features) == 3
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 5


def test_resnet20_still_builds_with_the_shared_blocks():
    model = build_model("resnet20", (3, 32, 32), 10)
    assert [name for name, _ in model.named_children()] == ["conv1", "bn1", "layer1", "layer2", "layer3",
                                                            "avgpool", "fc"]


def test_synthetic_is_deterministic_per_seed_and_learnable():
    a = load_synthetic(shape=(3, 8, 8), classes=4, size=200, test_size=40, seed=3)
    b = load_synthetic(shape=(3, 8, 8), classes=4, size=200, test_size=40, seed=3)
    c = load_synthetic(shape=(3, 8, 8), classes=4, size=200, test_size=40, seed=4)
    assert a.x_train.equal(b.x_train) and a.y_train.equal(b.y_train) and a.x_test.equal(b.x_test)
    assert not a.x_train.equal(c.x_train)
    assert a.x_train.shape == (200, 3, 8, 8) and a.x_test.shape == (40, 3, 8, 8) and a.num_classes == 4
    assert a.x_train.dtype == torch.float32 and a.y_train.dtype == torch.int64
    assert float(a.x_train.min()) >= 0.0 and float(a.x_train.max()) <= 1.0
    assert len(a.mean) == len(a.std) == 3 and a.mean == b.mean
    # class-dependent means: nearest class mean classifies the test split well
    means = torch.stack([a.x_train[a.y_train == k].mean(0) for k in range(4)])
    distances = ((a.x_test[:, None] - means[None]) ** 2).flatten(2).sum(-1)
    assert (distances.argmin(1) == a.y_test).float().mean() > 0.9


def test_normalisation_stats_and_digits_untouched():
    digits = load_dataset("digits")
    assert digits.mean == (0.0,) and digits.std == (1.0,)
    assert normalize(digits.x_test, digits).equal(digits.x_test)
    data = load_synthetic(shape=(3, 8, 8), classes=2, size=64, test_size=8)
    z = normalize(data.x_train, data)
    assert z.mean(dim=(0, 2, 3)).abs().max() < 1e-4 and (z.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-2


def test_augment_is_deterministic_shape_preserving_and_per_dataset():
    batch = torch.rand(16, 3, 32, 32)
    first = augment(batch, "cifar10", torch.Generator().manual_seed(0))
    again = augment(batch, "cifar10", torch.Generator().manual_seed(0))
    other = augment(batch, "cifar10", torch.Generator().manual_seed(1))
    assert first.shape == batch.shape and first.dtype == batch.dtype
    assert first.equal(again) and not first.equal(other) and not first.equal(batch)
    assert augment(batch, "synthetic", torch.Generator().manual_seed(0)).equal(first)
    assert augment(batch[:, :1, :8, :8], "digits", torch.Generator()).equal(batch[:, :1, :8, :8])
    assert augment(batch[:, :1, :28, :28], "mnist", torch.Generator()).equal(batch[:, :1, :28, :28])
    # each output is a shifted (by at most 4 px, zero-filled) and possibly mirrored copy of its input
    image = torch.arange(1.0, 1 + 32 * 32).reshape(1, 1, 32, 32)
    generator = torch.Generator().manual_seed(5)
    for _ in range(20):
        out = augment(image, "cifar100", generator)[0, 0]
        values = out[out > 0]
        assert (out > 0).sum() >= 28 * 28 and set(values.tolist()) <= set(image.flatten().tolist())
        row = out[16][out[16] > 0]
        steps = set((row[1:] - row[:-1]).tolist())
        assert steps in ({1.0}, {-1.0})
    with pytest.raises(UnknownDataset):
        augment(batch, "imagenet", torch.Generator())
