"""A thief's simple moves on a ticket (the attack issue grows this into a suite)."""

from __future__ import annotations

import torch
from torch import nn

from verifier.masks import Mask, apply_mask, global_magnitude_prune
from verifier.training import train


def fine_tune(model: nn.Module, mask: Mask, x: torch.Tensor, y: torch.Tensor, *, epochs: int,
              lr: float = 0.01, seed: int = 0) -> None:
    """Retrain with the mask kept fixed (the plainest stealing move)."""
    train(model, x, y, epochs=epochs, lr=lr, seed=seed, mask=mask)


def prune_further(model: nn.Module, mask: Mask, fraction: float) -> Mask:
    """Prune a further `fraction` of the remaining weights by global magnitude; returns the new mask."""
    new_mask = global_magnitude_prune(dict(model.named_parameters()), mask, fraction)
    apply_mask(model, new_mask)
    return new_mask
