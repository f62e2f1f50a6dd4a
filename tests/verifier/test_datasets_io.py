from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from verifier.data import dataset_spec, load_cifar10, load_cifar100, load_dataset, load_mnist
from verifier.datasets_io import RestrictedUnpickler, restricted_load
from verifier.errors import VerifierError


def _idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _write_mnist(folder, compress: bool, n_train: int = 5, n_test: int = 3) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    arrays["train-images-idx3-ubyte"][0, 0, 0] = 255
    for name, array in arrays.items():
        if compress:
            with gzip.open(folder / f"{name}.gz", "wb") as handle:
                handle.write(_idx(array))
        else:
            (folder / name).write_bytes(_idx(array))
    return arrays


@pytest.fixture
def datasets_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TICKETGUARD_DATASETS_DIR", str(tmp_path))
    load_dataset.cache_clear()
    yield tmp_path
    load_dataset.cache_clear()


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_reads_idx_and_gz_idx(datasets_dir, compress):
    arrays = _write_mnist(datasets_dir / "mnist", compress)
    data = load_dataset("mnist")
    assert (data.input_shape, data.num_classes) == dataset_spec("mnist") == ((1, 28, 28), 10)
    assert data.x_train.shape == (5, 1, 28, 28) and data.x_test.shape == (3, 1, 28, 28)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert float(data.x_train.min()) >= 0.0 and float(data.x_train.max()) == 1.0
    expected = arrays["train-images-idx3-ubyte"].astype(np.float32) / 255
    assert np.allclose(data.x_train[:, 0].numpy(), expected)
    assert data.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert data.mean == (0.1307,) and data.std == (0.3081,)


def test_mnist_missing_file_names_file_and_folder(datasets_dir):
    folder = datasets_dir / "mnist"
    _write_mnist(folder, compress=False)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(VerifierError, match="t10k-labels-idx1-ubyte") as caught:
        load_dataset("mnist")
    assert caught.value.code == "dataset_missing" and str(folder) in str(caught.value)
    with pytest.raises(VerifierError, match="train-images-idx3-ubyte") as caught:
        load_mnist(datasets_dir / "elsewhere")
    assert str(datasets_dir / "elsewhere") in str(caught.value)


def test_mnist_rejects_a_corrupt_idx(datasets_dir):
    folder = datasets_dir / "mnist"
    _write_mnist(folder, compress=False)
    (folder / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    with pytest.raises(VerifierError, match="idx header"):
        load_mnist()


def _cifar_batch(rng, n: int, label_key: bytes, classes: int) -> dict:
    return {b"batch_label": b"batch", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: rng.integers(0, classes, n).tolist(), b"filenames": [b"x.png"] * n}


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_reads_python_pickles(datasets_dir, protocol):
    folder = datasets_dir / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = _cifar_batch(rng, 2, b"labels", 10)
        with (folder / name).open("wb") as handle:
            pickle.dump(batches[name], handle, protocol=protocol)
    data = load_dataset("cifar10")
    assert data.x_train.shape == (10, 3, 32, 32) and data.x_test.shape == (2, 3, 32, 32)
    assert data.x_train.dtype == torch.float32
    assert float(data.x_train.min()) >= 0.0 and float(data.x_train.max()) <= 1.0
    first = batches["data_batch_1"][b"data"][0].reshape(3, 32, 32).astype(np.float32) / 255
    assert np.allclose(data.x_train[0].numpy(), first)
    assert data.y_test.tolist() == batches["test_batch"][b"labels"]
    assert len(data.mean) == len(data.std) == 3


def test_cifar100_reads_fine_labels(datasets_dir):
    folder = datasets_dir / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", 4), ("test", 2)):
        batch = _cifar_batch(rng, n, b"fine_labels", 100)
        batch[b"coarse_labels"] = [0] * n
        batch[b"fine_labels"][0] = 99
        with (folder / name).open("wb") as handle:
            pickle.dump(batch, handle)
    data = load_cifar100()
    assert (data.input_shape, data.num_classes) == dataset_spec("cifar100") == ((3, 32, 32), 100)
    assert data.x_train.shape == (4, 3, 32, 32) and data.y_train[0] == 99 and data.y_test.shape == (2,)


def test_cifar_missing_file_names_file_and_folder(datasets_dir):
    folder = datasets_dir / "cifar-10-batches-py"
    folder.mkdir()
    with pytest.raises(VerifierError, match="data_batch_1") as caught:
        load_cifar10()
    assert caught.value.code == "dataset_missing" and str(folder) in str(caught.value)
    with pytest.raises(VerifierError, match="'train'") as caught:
        load_dataset("cifar100")
    assert str(datasets_dir / "cifar-100-python") in str(caught.value)


class _RunsCommand:
    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _OpensFile:
    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


class _Evals:
    def __reduce__(self):
        return eval, ("__import__('os')",)


@pytest.mark.parametrize("payload", [_RunsCommand, _OpensFile, _Evals])
def test_malicious_cifar_pickle_is_refused_and_does_not_run(datasets_dir, payload):
    folder = datasets_dir / "cifar-100-python"
    folder.mkdir()
    marker = datasets_dir / "pwned"
    evil = payload(marker) if payload is not _Evals else payload()
    rng = np.random.default_rng(0)
    for name in ("train", "test"):
        batch = _cifar_batch(rng, 2, b"fine_labels", 100)
        batch[b"filenames"] = [evil, b"x.png"]
        with (folder / name).open("wb") as handle:
            pickle.dump(batch, handle, protocol=2)
    with pytest.raises(VerifierError, match="not allowed") as caught:
        load_dataset("cifar100")
    assert caught.value.code == "dataset_invalid"
    assert not marker.exists()


def test_restricted_unpickler_allows_numpy_arrays_only(tmp_path):
    path = tmp_path / "ok"
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path.write_bytes(pickle.dumps({b"a": array, b"b": [1, 2.5, b"x", "y", (1,)]}, protocol=2))
    loaded = restricted_load(path)
    assert np.array_equal(loaded[b"a"], array) and loaded[b"b"] == [1, 2.5, b"x", "y", (1,)]
    with path.open("rb") as handle:
        unpickler = RestrictedUnpickler(handle)
        for module, name in (("os", "system"), ("builtins", "eval"), ("builtins", "getattr"),
                             ("numpy", "load"), ("subprocess", "Popen"), ("builtins", "__import__")):
            with pytest.raises(pickle.UnpicklingError):
                unpickler.find_class(module, name)
