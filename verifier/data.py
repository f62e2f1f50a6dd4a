"""Dataset registry. `digits` is scikit-learn's bundled 8x8 digits; `mnist`, `cifar10` and `cifar100` are
read from local files under env TICKETGUARD_DATASETS_DIR (default ./datasets); `synthetic` is generated.
Nothing is ever downloaded.

Tensors hold raw pixel values in [0, 1]; each Dataset carries the per-channel `mean` / `std` to
normalise with (`normalize`), and `augment` applies the dataset's training augmentation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from verifier.datasets_io import datasets_root, read_cifar, read_mnist
from verifier.errors import UnknownDataset

SPLIT_SEED, TEST_FRACTION = 0, 0.2
CROP_PADDING = 4

# Per-channel (mean, std) of the training images; digits keeps identity (its tensors stay as they were).
MNIST_STATS = ((0.1307,), (0.3081,))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


@dataclass(frozen=True)
class Dataset:
    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: tuple[float, ...] = (0.0,)  # per channel (or one value for all); the default is identity
    std: tuple[float, ...] = (1.0,)


def normalize(x: torch.Tensor, dataset: Dataset) -> torch.Tensor:
    """(x - mean) / std per channel (axis 1 of an (N, C, H, W) batch); a new tensor."""
    shape = (1, -1) + (1,) * (x.dim() - 2) if len(dataset.mean) > 1 else (1,)
    mean = torch.tensor(dataset.mean, dtype=x.dtype, device=x.device).reshape(shape)
    std = torch.tensor(dataset.std, dtype=x.dtype, device=x.device).reshape(shape)
    return (x - mean) / std


def _digits() -> Dataset:
    """1,797 8x8 digits as float32 pixel/16 in [0, 1], shape (N, 1, 8, 8); a fixed 80/20 split
    (numpy permutation with seed 0)."""
    from sklearn.datasets import load_digits  # lazily: the verifier core needs only torch/numpy

    bunch = load_digits()
    x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    n_test = int(round(TEST_FRACTION * len(x)))
    test, train = order[:n_test], order[n_test:]
    return Dataset("digits", (1, 8, 8), 10, torch.from_numpy(x[train]), torch.from_numpy(y[train]),
                   torch.from_numpy(x[test]), torch.from_numpy(y[test]))


def _folder(folder: str | Path | None, default: str) -> Path:
    return Path(folder) if folder is not None else datasets_root() / default


def _from_arrays(name: str, shape: tuple[int, ...], classes: int, arrays: tuple[np.ndarray, ...],
                 stats: tuple[tuple[float, ...], tuple[float, ...]]) -> Dataset:
    x_train, y_train, x_test, y_test = (torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)
    return Dataset(name, shape, classes, x_train, y_train, x_test, y_test, stats[0], stats[1])


def load_mnist(folder: str | Path | None = None) -> Dataset:
    """MNIST from the idx files (plain or .gz) in `folder` (default $TICKETGUARD_DATASETS_DIR/mnist):
    train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte.
    Images float32 (N, 1, 28, 28) in [0, 1]. A missing file raises VerifierError(code="dataset_missing")."""
    return _from_arrays("mnist", (1, 28, 28), 10, read_mnist(_folder(folder, "mnist")), MNIST_STATS)


def load_cifar10(folder: str | Path | None = None) -> Dataset:
    """CIFAR-10 from the python pickles data_batch_1..5 and test_batch in `folder` (default
    $TICKETGUARD_DATASETS_DIR/cifar-10-batches-py), read with a restricted unpickler."""
    train = [f"data_batch_{i}" for i in range(1, 6)]
    arrays = read_cifar(_folder(folder, "cifar-10-batches-py"), train, ["test_batch"], "labels", 10)
    return _from_arrays("cifar10", (3, 32, 32), 10, arrays, CIFAR10_STATS)


def load_cifar100(folder: str | Path | None = None) -> Dataset:
    """CIFAR-100 (fine labels) from the python pickles train and test in `folder` (default
    $TICKETGUARD_DATASETS_DIR/cifar-100-python), read with a restricted unpickler."""
    arrays = read_cifar(_folder(folder, "cifar-100-python"), ["train"], ["test"], "fine_labels", 100)
    return _from_arrays("cifar100", (3, 32, 32), 100, arrays, CIFAR100_STATS)


def load_synthetic(shape: tuple[int, ...] = (3, 32, 32), classes: int = 10, size: int = 50000,
                   test_size: int = 10000, seed: int = 0) -> Dataset:
    """Deterministic random images for speed measurements: each class has its own random mean image
    (uniform in [0.25, 0.75]); samples add Gaussian noise (std 0.2), clipped to [0, 1], float32.
    Same arguments, same tensors. mean/std are per channel, measured on the first 1,000 train images."""
    shape = tuple(int(d) for d in shape)
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(0.25, 0.75, (classes, *shape)).astype(np.float32)

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, classes, count).astype(np.int64)
        images = np.empty((count, *shape), dtype=np.float32)
        for start in range(0, count, 4096):  # chunks keep peak memory near the output size
            chunk = slice(start, min(start + 4096, count))
            noise = rng.standard_normal((chunk.stop - start, *shape), dtype=np.float32)
            noise *= 0.2
            noise += prototypes[labels[chunk]]
            np.clip(noise, 0.0, 1.0, out=images[chunk])
        return images, labels

    x_train, y_train = draw(size)
    x_test, y_test = draw(test_size)
    sample = x_train[:1000].astype(np.float64)
    if len(shape) == 3:
        axes = (0, 2, 3)
        mean = tuple(float(v) for v in sample.mean(axis=axes)) if len(sample) else (0.0,) * shape[0]
        std = tuple(float(v) or 1.0 for v in sample.std(axis=axes)) if len(sample) else (1.0,) * shape[0]
    else:
        mean = (float(sample.mean()),) if sample.size else (0.0,)
        std = (float(sample.std()) or 1.0,) if sample.size else (1.0,)
    return _from_arrays("synthetic", shape, classes, (x_train, y_train, x_test, y_test), (mean, std))


_LOADERS: dict[str, Callable[[], Dataset]] = {
    "digits": _digits,
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "synthetic": load_synthetic,
}
_SPECS = {
    "digits": ((1, 8, 8), 10),
    "mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
    "synthetic": ((3, 32, 32), 10),
}
_FROM_FILES = {"mnist", "cifar10", "cifar100"}
_AUGMENTED = {"cifar10", "cifar100", "synthetic"}


def dataset_names() -> list[str]:
    return list(_LOADERS)


def dataset_spec(name: str) -> tuple[tuple[int, ...], int]:
    """(input shape, number of classes) of a registered dataset, without loading it."""
    if name not in _SPECS:
        raise UnknownDataset(f"unknown dataset {name!r}; known: {', '.join(_LOADERS)}")
    return _SPECS[name]


@lru_cache(maxsize=4)
def _load_cached(name: str, root: str) -> Dataset:
    return _LOADERS[name]()


def load_dataset(name: str) -> Dataset:
    """Load a registered dataset (cached in-process per name and datasets folder; tensors must not be
    modified). `load_dataset.cache_clear()` empties the cache."""
    dataset_spec(name)
    root = str(datasets_root().resolve()) if name in _FROM_FILES else ""
    return _load_cached(name, root)


load_dataset.cache_clear = _load_cached.cache_clear  # type: ignore[attr-defined]


def augment(batch: torch.Tensor, dataset_name: str, generator: torch.Generator) -> torch.Tensor:
    """Training augmentation of an (N, C, H, W) batch, deterministic under `generator`.

    cifar10, cifar100, synthetic: per image a random crop of the zero-padded (4 pixels each side)
    image, then a horizontal flip with probability 1/2; digits and mnist: identity (the batch itself).
    The output has the input's shape, dtype and device."""
    dataset_spec(dataset_name)
    if dataset_name not in _AUGMENTED or batch.dim() != 4 or batch.shape[0] == 0:
        return batch
    n, _, height, width = batch.shape
    pad = CROP_PADDING
    padded = torch.nn.functional.pad(batch, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator, device=generator.device)
    flips = torch.rand(n, generator=generator, device=generator.device) < 0.5
    offsets, flips = offsets.to(batch.device), flips.to(batch.device)
    rows = offsets[:, :1] + torch.arange(height, device=batch.device)  # (N, H)
    cols = torch.arange(width, device=batch.device).expand(n, width)
    cols = torch.where(flips[:, None], cols.flip(1), cols) + offsets[:, 1:]  # (N, W)
    index_n = torch.arange(n, device=batch.device)[:, None, None, None]
    index_c = torch.arange(batch.shape[1], device=batch.device)[None, :, None, None]
    return padded[index_n, index_c, rows[:, None, :, None], cols[:, None, None, :]]
