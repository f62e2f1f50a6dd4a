"""Readers for dataset files on local disk (never downloads): MNIST idx files and the CIFAR python pickles.

The CIFAR pickles are read with `RestrictedUnpickler`, which resolves only numpy's array/dtype
reconstruction helpers and a latin-1 bytes helper; any other global (os.system, builtins.open, eval, ...)
is refused before it can be called."""

from __future__ import annotations

import codecs
import gzip
import importlib
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from verifier.errors import VerifierError

DATASETS_ENV = "TICKETGUARD_DATASETS_DIR"
DEFAULT_DATASETS_DIR = "./datasets"


def datasets_root() -> Path:
    """The folder holding the dataset folders: env TICKETGUARD_DATASETS_DIR, default ./datasets."""
    return Path(os.environ.get(DATASETS_ENV) or DEFAULT_DATASETS_DIR)


def missing(filename: str, folder: Path) -> VerifierError:
    return VerifierError(f"dataset file {filename!r} not found in folder {str(folder)!r} "
                         f"(set {DATASETS_ENV}; nothing is downloaded)", code="dataset_missing")


def invalid(message: str) -> VerifierError:
    return VerifierError(message, code="dataset_invalid")


# ---------------------------------------------------------------------------------------------- idx

def _idx_bytes(folder: Path, filename: str) -> bytes:
    plain, packed = folder / filename, folder / f"{filename}.gz"
    if plain.is_file():
        return plain.read_bytes()
    if packed.is_file():
        try:
            with gzip.open(packed, "rb") as handle:
                return handle.read()
        except (OSError, EOFError) as error:
            raise invalid(f"{packed}: not a readable gzip file ({error})") from None
    raise missing(f"{filename} (or {filename}.gz)", folder)


def read_idx(folder: Path, filename: str) -> np.ndarray:
    """An unsigned-byte idx array (LeCun's MNIST format) from `folder/filename` or `folder/filename.gz`."""
    raw = _idx_bytes(folder, filename)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise invalid(f"{folder / filename}: not an idx file (bad magic number)")
    if raw[2] != 0x08:
        raise invalid(f"{folder / filename}: idx element type 0x{raw[2]:02x} is not unsigned byte")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise invalid(f"{folder / filename}: truncated idx header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape))
    if len(raw) - header != count:
        raise invalid(f"{folder / filename}: idx header says {count} values, file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_mnist(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) as float32 (N, 1, 28, 28) in [0, 1] and int64 labels."""
    out = []
    for prefix in ("train", "t10k"):
        images = read_idx(folder, f"{prefix}-images-idx3-ubyte")
        labels = read_idx(folder, f"{prefix}-labels-idx1-ubyte")
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1 or len(labels) != len(images):
            raise invalid(f"{folder}: {prefix} images {images.shape} and labels {labels.shape} do not match "
                          "MNIST's (N, 28, 28) / (N,)")
        if labels.size and int(labels.max()) > 9:
            raise invalid(f"{folder}: {prefix} labels outside 0..9")
        out += [(images.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28), labels.astype(np.int64)]
    return out[0], out[1], out[2], out[3]


# ------------------------------------------------------------------------------------------ pickles

def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes; only latin-1, only str."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError("restricted unpickler: _codecs.encode only for latin-1 text")
    return text.encode("latin1")


def _numpy_global(module: str, name: str) -> Any:
    """numpy's array reconstruction helpers, from numpy._core (numpy 2) or numpy.core (numpy 1)."""
    for candidate in ("numpy._core." + module, "numpy.core." + module):
        try:
            return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"restricted unpickler: numpy has no {module}.{name}")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}
_NUMPY_HELPERS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # pickle protocol 5
}
_BUILTINS = {"dict", "list", "tuple", "bytes", "bytearray", "int", "float", "bool", "str", "set", "frozenset"}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles dicts/lists/bytes/numbers and numpy arrays only; every other global raises."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if (module, name) in _NUMPY_HELPERS:
            return _numpy_global(module.split(".")[-1], name)
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return getattr(__import__("builtins"), name)
        raise pickle.UnpicklingError(f"restricted unpickler: global {module}.{name} is not allowed")


def restricted_load(path: Path) -> Any:
    """Unpickle `path` with RestrictedUnpickler (encoding="bytes", as CIFAR's Python 2 pickles need)."""
    try:
        with path.open("rb") as handle:
            return RestrictedUnpickler(handle, encoding="bytes").load()
    except pickle.UnpicklingError as error:
        raise invalid(f"{path}: refused or unreadable pickle ({error})") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as error:
        raise invalid(f"{path}: unreadable pickle ({type(error).__name__}: {error})") from None


def _field(batch: Any, key: str, path: Path) -> Any:
    if not isinstance(batch, dict):
        raise invalid(f"{path}: expected a dict, got {type(batch).__name__}")
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise invalid(f"{path}: no {key!r} entry")


def read_cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle as float32 (N, 3, 32, 32) in [0, 1] and int64 labels from `label_key`."""
    batch = restricted_load(path)
    data, labels = _field(batch, "data", path), _field(batch, label_key, path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise invalid(f"{path}: 'data' must be a uint8 array of shape (N, 3072)")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" or labels.shape != (len(data),):
        raise invalid(f"{path}: {label_key!r} must hold one integer label per image")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise invalid(f"{path}: labels outside 0..{num_classes - 1}")
    return (data.astype(np.float32) / 255.0).reshape(-1, 3, 32, 32), labels.astype(np.int64)


def read_cifar(folder: Path, train_files: list[str], test_files: list[str], label_key: str,
               num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) from the CIFAR pickles in `folder`."""
    for filename in train_files + test_files:
        if not (folder / filename).is_file():
            raise missing(filename, folder)
    out = []
    for files in (train_files, test_files):
        parts = [read_cifar_batch(folder / filename, label_key, num_classes) for filename in files]
        out += [np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])]
    return out[0], out[1], out[2], out[3]
