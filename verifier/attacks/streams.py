"""Function-preserving permutation of the ResNets' residual streams: the channels that the stem, the
blocks' outputs and their shortcuts add into, which `permute_hidden_units` (block-internal only)
leaves in place."""

from __future__ import annotations

import torch

from verifier.units import residual_streams


def permute_residual_streams(arch: str, state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """A function-preserving permutation of every residual stream of a ResNet: one random order per
    stream for the rows of what writes into it (stem conv1/bn1, each block's last conv and BatchNorm,
    the projection shortcut's conv and BatchNorm) and the columns of what reads it (each block's
    conv1, the projection's conv, `fc` after the last stage). `state` is a plain state dict, as for
    `permute_hidden_units`; the two compose. The outputs are unchanged."""
    if not arch.startswith("resnet") or "fc.weight" not in state or "conv1.weight" not in state:
        raise ValueError(f"permute_residual_streams supports the ResNets, not {arch}")
    generator = torch.Generator().manual_seed(seed)
    out = dict(state)
    for producers, consumers in residual_streams(state):
        order = torch.randperm(state[f"{producers[0]}.weight"].shape[0], generator=generator)
        for module in producers:
            for key in (f"{module}.{p}" for p in ("weight", "bias", "running_mean", "running_var")):
                if key in out:
                    out[key] = out[key][order]
        for module in consumers:
            out[f"{module}.weight"] = out[f"{module}.weight"][:, order]
    return out
