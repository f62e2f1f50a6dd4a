"""The add-on attack (the paper's fake2): revive pruned weights with small random values."""

from __future__ import annotations

import torch
from torch import nn

from verifier.masks import Mask


def add_on(model: nn.Module, mask: Mask, fraction: float, seed: int = 0) -> Mask:
    """Revive exactly round(fraction * pruned) of each layer's pruned weights with values drawn from
    N(0, (0.1 * mean |kept weight|)^2), small enough to cost little accuracy; returns the new mask."""
    if not 0 <= fraction <= 1:
        raise ValueError("fraction must be in [0, 1]")
    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    new_mask = {}
    with torch.no_grad():
        for name, keep in mask.items():
            weight = params[name]
            pruned = torch.nonzero(~keep.flatten()).flatten()
            revive = pruned[torch.randperm(len(pruned), generator=generator)[:int(round(fraction * len(pruned)))]]
            scale = float(weight[keep].abs().mean()) * 0.1 if keep.any() else 0.01
            flat = weight.view(-1)
            flat[revive] = scale * torch.randn(len(revive), generator=generator).to(weight.dtype)
            grown = keep.flatten().clone()
            grown[revive] = True
            new_mask[name] = grown.view(keep.shape)
    return new_mask
