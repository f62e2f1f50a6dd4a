"""Function-preserving permutation of the ResNets' residual streams: the channels that the stem, the
blocks' outputs and their shortcuts add into, which `permute_hidden_units` (block-internal only)
leaves in place."""

from __future__ import annotations

import torch


def residual_blocks(state: dict[str, torch.Tensor]) -> list[str]:
    """The residual blocks (`layerS.B`) in forward order."""
    names = {key.rsplit(".conv1.weight", 1)[0] for key in state
             if key.startswith("layer") and key.endswith(".conv1.weight")}
    return sorted(names, key=lambda b: tuple(int(part.removeprefix("layer")) for part in b.split(".")))


def residual_streams(state: dict[str, torch.Tensor]) -> list[tuple[list[str], list[str]]]:
    """Each residual stream as (producers, consumers): modules whose outputs (conv or BatchNorm rows)
    are the stream's channels, and modules whose inputs (columns) read it. A block with a projection
    shortcut ends the stream it reads and starts a new one; an identity block adds into the one it reads."""
    producers, consumers = ["conv1", "bn1"], []
    streams = []
    for block in residual_blocks(state):
        last = max(i for i in range(1, 10) if f"{block}.conv{i}.weight" in state)
        projection = f"{block}.downsample.0.weight" in state
        consumers += [f"{block}.conv1"] + [f"{block}.downsample.0"] * projection
        outputs = [f"{block}.conv{last}", f"{block}.bn{last}"]
        if projection:
            streams.append((producers, consumers))
            producers, consumers = outputs + [f"{block}.downsample.0", f"{block}.downsample.1"], []
        else:
            producers = producers + outputs
    streams.append((producers, consumers + ["fc"]))
    return streams


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
