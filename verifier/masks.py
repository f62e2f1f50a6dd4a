"""Masks: one boolean tensor per prunable weight; densities, magnitude pruning, bit-packed storage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

Mask = dict[str, torch.Tensor]


def mask_from_weights(weights: dict[str, torch.Tensor], names: list[str]) -> Mask:
    """The mask of exact nonzeros of the named weights."""
    return {name: weights[name] != 0 for name in names}


@torch.no_grad()
def apply_mask(model: nn.Module, mask: Mask) -> None:
    """Zero the pruned weights of `model` in place."""
    parameters = dict(model.named_parameters())
    for name, keep in mask.items():
        parameters[name].mul_(keep.to(parameters[name].device, parameters[name].dtype))


def connectivity_map(keep: torch.Tensor) -> torch.Tensor:
    """A layer's kernel-connectivity map: for a conv weight (out, in, kh, kw) the (out, in) map that is
    True where any weight of the kernel is kept; for a linear weight the mask itself."""
    if keep.dim() == 4:
        return keep.bool().flatten(2).any(2)
    if keep.dim() == 2:
        return keep.bool()
    raise ValueError(f"no connectivity map for a {keep.dim()}-D weight")


def densities(mask: Mask) -> dict[str, float]:
    """Fraction of weights kept, per layer."""
    return {name: float(keep.float().mean()) for name, keep in mask.items()}


def count_kept(mask: Mask) -> int:
    """Number of weights kept over all layers."""
    return int(sum(int(keep.sum()) for keep in mask.values()))


def overall_density(mask: Mask) -> float:
    """Kept weights over all weights of the masked layers."""
    total = sum(keep.numel() for keep in mask.values())
    return count_kept(mask) / total if total else 1.0


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k largest scores; ties broken by position (stable sort)."""
    flat = scores.flatten()
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    if k > 0:
        order = torch.sort(flat, descending=True, stable=True).indices
        keep[order[:k]] = True
    return keep.view(scores.shape)


def magnitude_mask(weights: dict[str, torch.Tensor], layer_densities: dict[str, float]) -> Mask:
    """Per layer, keep the round(density * numel) largest-magnitude weights."""
    return {name: top_k(weights[name].detach().abs().cpu(), int(round(d * weights[name].numel())))
            for name, d in layer_densities.items()}


def global_magnitude_prune(weights: dict[str, torch.Tensor], mask: Mask, fraction: float) -> Mask:
    """Remove round(fraction * kept) of the kept weights with the smallest |w|, across all layers."""
    if not 0 <= fraction <= 1:
        raise ValueError("fraction must be in [0, 1]")
    names = list(mask)
    scores = torch.cat([torch.where(mask[n], weights[n].detach().abs().cpu().float(),
                                    torch.tensor(float("inf"))).flatten() for n in names])
    kept = count_kept(mask)
    remove = int(round(fraction * kept))
    order = torch.sort(scores, stable=True).indices[:remove]
    flat = torch.cat([mask[n].flatten() for n in names]).clone()
    flat[order] = False
    out, start = {}, 0
    for name in names:
        size = mask[name].numel()
        out[name] = flat[start:start + size].view(mask[name].shape)
        start += size
    return out


def layerwise_magnitude_prune(weights: dict[str, torch.Tensor], mask: Mask, fraction: float) -> Mask:
    """In each layer, remove round(fraction * kept) of its kept weights with the smallest |w|."""
    return {name: global_magnitude_prune({name: weights[name]}, {name: keep}, fraction)[name]
            for name, keep in mask.items()}


def random_mask(shapes: dict[str, torch.Size], layer_densities: dict[str, float], seed: int) -> Mask:
    """Uniformly random masks with exactly round(density * numel) weights kept per layer."""
    generator = torch.Generator().manual_seed(seed)
    return {name: top_k(torch.rand(shapes[name], generator=generator), int(round(d * shapes[name].numel())))
            for name, d in layer_densities.items()}


def pack_mask(mask: Mask) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """Bit-pack each layer (numpy.packbits); returns the packed tensors and each layer's shape."""
    tensors = {name: torch.from_numpy(np.packbits(keep.cpu().numpy().ravel())) for name, keep in mask.items()}
    return tensors, {name: list(keep.shape) for name, keep in mask.items()}


def unpack_mask(tensors: dict[str, torch.Tensor], shapes: dict[str, list[int]]) -> Mask:
    """Inverse of `pack_mask`: exact boolean tensors in their recorded shapes."""
    mask = {}
    for name, shape in shapes.items():
        count = int(np.prod(shape))
        bits = np.unpackbits(tensors[name].numpy(), count=count).astype(bool)
        mask[name] = torch.from_numpy(bits).view(*shape)
    return mask


def save_mask(mask: Mask, path: str | Path) -> None:
    """Write a bit-packed mask as safetensors (shapes in the metadata's one key, so the bytes are
    reproducible: safetensors orders several metadata keys differently from run to run)."""
    tensors, shapes = pack_mask(mask)
    save_file(tensors, str(path), metadata={"shapes": json.dumps(shapes)})


def load_mask(path: str | Path) -> Mask:
    """Read a mask written by `save_mask`."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    return unpack_mask(load_file(str(path)), json.loads(metadata["shapes"]))
