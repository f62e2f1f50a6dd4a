"""The answers contract, shared by uploaded answers and remote endpoints: `{"labels": [...]}` (class
indices) or `{"logits": [[...], ...]}` (one row of class scores per input)."""

from __future__ import annotations

from typing import Any

import numpy as np


def parse_answers(body: Any, size: int, num_classes: int) -> np.ndarray:
    """int64 labels from a decoded JSON body with exactly `size` rows; ValueError says what is wrong."""
    if not isinstance(body, dict) or len(set(body) & {"labels", "logits"}) != 1:
        raise ValueError('expected a JSON object with exactly one of "labels" or "logits"')
    try:
        if "labels" in body:
            labels = np.asarray(body["labels"])
            if labels.dtype.kind not in "iu" or labels.shape != (size,):
                raise ValueError(f"labels must be a list of {size} integers")
        else:
            logits = np.asarray(body["logits"], dtype=np.float64)
            if logits.shape != (size, num_classes) or not np.isfinite(logits).all():
                raise ValueError(f"logits must be {size} rows of {num_classes} finite numbers")
            labels = logits.argmax(1)
    except TypeError as exc:
        raise ValueError(str(exc)) from None
    if size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    return labels.astype(np.int64)
