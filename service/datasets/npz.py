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


def _invalid(message: str, code: str = "invalid_dataset") -> APIError:
    return APIError(422, code, message)


def read_arrays(path: Path, names: tuple[str, ...], *, max_bytes: int, code: str = "invalid_dataset",
                what: str = "archive") -> dict[str, np.ndarray]:
    """Exactly the arrays `names` from an uploaded .npz; never unpickles (allow_pickle=False); an
    archive that unpacks to more than 4x `max_bytes` is refused before it is read. APIError(422, code)."""
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise _invalid(f"the {what} is not an .npz archive: {exc}", code) from None
    if declared > 4 * max_bytes:
        raise _invalid(f"the {what} unpacks to {declared} bytes, more than 4x the upload limit", code)
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in names if key not in archive.files]
            extra = sorted(set(archive.files) - set(names))
            if missing or extra:
                raise _invalid(f"expected exactly the arrays {', '.join(names)}; "
                               f"missing {missing or 'none'}, unexpected {extra or 'none'}", code)
            arrays = {key: archive[key] for key in names}
            for key, value in arrays.items():
                if not isinstance(value, np.ndarray):
                    raise _invalid(f"{key} is not a .npy array", code)
    except APIError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise _invalid(f"unreadable array in the {what}: {exc}", code) from None
    return arrays


def read_npz(path: Path, *, name: str, max_bytes: int) -> Dataset:
    """Load and check an uploaded dataset; never unpickles (allow_pickle=False).

    x arrays: float (any range) or uint8 (scaled by 1/255), shape (N, C, H, W), (N, H, W) or (N, D);
    y arrays: integers in [0, K) with K >= 2 classes, one label per example.
    """
    arrays = read_arrays(path, ARRAYS, max_bytes=max_bytes)
    xs = {split: validate_inputs(arrays[f"x_{split}"], f"x_{split}") for split in ("train", "test")}
    ys = {split: validate_labels(arrays[f"y_{split}"], f"y_{split}", len(xs[split])) for split in ("train", "test")}
    if xs["train"].shape[1:] != xs["test"].shape[1:]:
        raise _invalid(f"x_train examples have shape {xs['train'].shape[1:]}, x_test {xs['test'].shape[1:]}")
    classes = int(max(ys["train"].max(), ys["test"].max())) + 1
    if classes < 2 or classes > MAX_CLASSES:
        raise _invalid(f"labels must span 2 to {MAX_CLASSES} classes; found {classes}")
    return Dataset(name=name, input_shape=tuple(int(d) for d in xs["train"].shape[1:]), num_classes=classes,
                   x_train=torch.from_numpy(xs["train"]), y_train=torch.from_numpy(ys["train"]),
                   x_test=torch.from_numpy(xs["test"]), y_test=torch.from_numpy(ys["test"]))


def validate_inputs(array: np.ndarray, key: str, code: str = "invalid_dataset") -> np.ndarray:
    """float32 inputs, (N, C, H, W) (an (N, H, W) array gains C = 1) or (N, D); uint8 scaled by 1/255."""
    if array.ndim not in (2, 3, 4) or array.shape[0] == 0:
        raise _invalid(f"{key} must have shape (N, C, H, W), (N, H, W) or (N, D) with N > 0; got {array.shape}",
                       code)
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    elif np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
    else:
        raise _invalid(f"{key} must be floating point or uint8; got {array.dtype}", code)
    if not np.isfinite(array).all():
        raise _invalid(f"{key} holds NaN or infinite values", code)
    if array.ndim == 3:
        array = array[:, None]
    return np.ascontiguousarray(array)


def validate_labels(array: np.ndarray, key: str, count: int, code: str = "invalid_dataset") -> np.ndarray:
    """int64 labels, one per input, none negative."""
    if not np.issubdtype(array.dtype, np.integer):
        raise _invalid(f"{key} must hold integer class labels; got {array.dtype}", code)
    if array.shape != (count,):
        raise _invalid(f"{key} must have shape ({count},) to match its inputs; got {array.shape}", code)
    if array.min() < 0:
        raise _invalid(f"{key} holds negative labels", code)
    return array.astype(np.int64)
