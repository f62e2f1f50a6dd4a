"""Owner-uploaded datasets: `.npz` archives of x_train, y_train, x_test, y_test, validated strictly."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from service.errors import APIError
from verifier.data import Dataset

ARRAYS = ("x_train", "y_train", "x_test", "y_test")
MAX_CLASSES = 1000


def _invalid(message: str) -> APIError:
    return APIError(422, "invalid_dataset", message)


def read_npz(path: Path, *, name: str, max_bytes: int) -> Dataset:
    """Load and check an uploaded dataset; never unpickles (allow_pickle=False).

    x arrays: float (any range) or uint8 (scaled by 1/255), shape (N, C, H, W), (N, H, W) or (N, D);
    y arrays: integers in [0, K) with K >= 2 classes, one label per example.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise _invalid(f"not an .npz archive: {exc}") from None
    if declared > 4 * max_bytes:
        raise _invalid(f"the archive unpacks to {declared} bytes, more than 4x the upload limit")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ARRAYS if key not in archive.files]
            extra = sorted(set(archive.files) - set(ARRAYS))
            if missing or extra:
                raise _invalid(f"expected exactly the arrays {', '.join(ARRAYS)}; "
                               f"missing {missing or 'none'}, unexpected {extra or 'none'}")
            arrays = {key: archive[key] for key in ARRAYS}
            for key, value in arrays.items():
                if not isinstance(value, np.ndarray):
                    raise _invalid(f"{key} is not a .npy array")
    except APIError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise _invalid(f"unreadable array in the archive: {exc}") from None
    xs = {split: _inputs(arrays[f"x_{split}"], f"x_{split}") for split in ("train", "test")}
    ys = {split: _labels(arrays[f"y_{split}"], f"y_{split}", len(xs[split])) for split in ("train", "test")}
    if xs["train"].shape[1:] != xs["test"].shape[1:]:
        raise _invalid(f"x_train examples have shape {xs['train'].shape[1:]}, x_test {xs['test'].shape[1:]}")
    classes = int(max(ys["train"].max(), ys["test"].max())) + 1
    if classes < 2 or classes > MAX_CLASSES:
        raise _invalid(f"labels must span 2 to {MAX_CLASSES} classes; found {classes}")
    return Dataset(name=name, input_shape=tuple(int(d) for d in xs["train"].shape[1:]), num_classes=classes,
                   x_train=torch.from_numpy(xs["train"]), y_train=torch.from_numpy(ys["train"]),
                   x_test=torch.from_numpy(xs["test"]), y_test=torch.from_numpy(ys["test"]))


def _inputs(array: np.ndarray, key: str) -> np.ndarray:
    if array.ndim not in (2, 3, 4) or array.shape[0] == 0:
        raise _invalid(f"{key} must have shape (N, C, H, W), (N, H, W) or (N, D) with N > 0; got {array.shape}")
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    elif np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
    else:
        raise _invalid(f"{key} must be floating point or uint8; got {array.dtype}")
    if not np.isfinite(array).all():
        raise _invalid(f"{key} holds NaN or infinite values")
    if array.ndim == 3:
        array = array[:, None]
    return np.ascontiguousarray(array)


def _labels(array: np.ndarray, key: str, count: int) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.integer):
        raise _invalid(f"{key} must hold integer class labels; got {array.dtype}")
    if array.shape != (count,):
        raise _invalid(f"{key} must have shape ({count},) to match its inputs; got {array.shape}")
    if array.min() < 0:
        raise _invalid(f"{key} holds negative labels")
    return array.astype(np.int64)
