"""The replacement attack (the paper's fake3): overwrite the signature window with a forged code."""

from __future__ import annotations

import torch

from verifier.masks import Mask
from verifier.signatures.qr import Placement, embed_code, make_code


def replace_window(state: dict[str, torch.Tensor], mask: Mask, placement: Placement, *, version: int,
                   error: str, fill: dict[str, torch.Tensor], payload: str = "stolen by someone else",
                   keep_function_patterns: bool = False) -> tuple[dict[str, torch.Tensor], Mask]:
    """Write a QR code of the thief's `payload` over the owner's window (the worst case: the thief
    knows the layer and offset), every module by default, keeping the total number of kept weights.
    Kernels the forged code connects start from `fill` (the thief's own initialisation: it has not
    the owner's rewind weights). Returns the attacked weights and mask; the paper scores this
    without retraining, a thief would retrain (`fine_tune`) to win the accuracy back."""
    code = make_code(payload, version=version, error=error)
    embedded = embed_code(mask, state, fill, code, placement, keep_function_patterns=keep_function_patterns)
    return embedded.state, embedded.mask
