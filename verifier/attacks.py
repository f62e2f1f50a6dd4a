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


def permute_hidden_units(arch: str, state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """A function-preserving permutation of every hidden unit of lenet300_100 (its outputs are
    unchanged; every position-based comparison is scrambled). Other architectures: the attack issue."""
    if arch != "lenet300_100":
        raise ValueError(f"permute_hidden_units supports lenet300_100, not {arch}")
    generator = torch.Generator().manual_seed(seed)
    first = torch.randperm(state["fc1.weight"].shape[0], generator=generator)
    second = torch.randperm(state["fc2.weight"].shape[0], generator=generator)
    out = dict(state)
    out["fc1.weight"], out["fc1.bias"] = state["fc1.weight"][first], state["fc1.bias"][first]
    out["fc2.weight"] = state["fc2.weight"][second][:, first]
    out["fc2.bias"], out["fc3.weight"] = state["fc2.bias"][second], state["fc3.weight"][:, second]
    return out
