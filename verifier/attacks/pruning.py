"""Pruning attacks: further global magnitude pruning, random pruning, pruning aimed at one layer."""

from __future__ import annotations

import torch
from torch import nn

from verifier.masks import Mask, apply_mask, global_magnitude_prune


def prune_further(model: nn.Module, mask: Mask, fraction: float) -> Mask:
    """Prune a further `fraction` of the remaining weights by global magnitude; returns the new mask."""
    new_mask = global_magnitude_prune(dict(model.named_parameters()), mask, fraction)
    apply_mask(model, new_mask)
    return new_mask


def random_prune(model: nn.Module, mask: Mask, fraction: float, seed: int = 0) -> Mask:
    """Prune round(fraction * kept) of each layer's kept weights chosen uniformly at random (the paper
    finds this ruins accuracy long before it hurts a signature); returns the new mask."""
    if not 0 <= fraction <= 1:
        raise ValueError("fraction must be in [0, 1]")
    generator = torch.Generator().manual_seed(seed)
    new_mask = {}
    for name, keep in mask.items():
        kept = torch.nonzero(keep.flatten()).flatten()
        drop = kept[torch.randperm(len(kept), generator=generator)[:int(round(fraction * len(kept)))]]
        flat = keep.flatten().clone()
        flat[drop] = False
        new_mask[name] = flat.view(keep.shape)
    apply_mask(model, new_mask)
    return new_mask


def prune_layer(model: nn.Module, mask: Mask, layer: str, fraction: float) -> Mask:
    """Prune round(fraction * kept) of one layer's kept weights by magnitude (aimed at a signature
    layer), the others untouched; returns the new mask."""
    params = dict(model.named_parameters())
    new_mask = dict(mask)
    new_mask.update(global_magnitude_prune({layer: params[layer]}, {layer: mask[layer]}, fraction))
    apply_mask(model, new_mask)
    return new_mask
