"""Hidden units and which weights they index: the groups a function-preserving relabelling moves
together (fc1's rows with fc2's columns; a residual stream's channels in every layer that writes or
reads it). A null that relabels units must move each group as one, or it is not a relabelling."""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise

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



LayerGroups = tuple[int | None, int | None]  # (group of a weight's rows, group of its columns); None: fixed


def unit_groups(arch: str, state: Mapping[str, torch.Tensor]) -> list[tuple[list[str], list[str]]]:
    """(weights whose output rows are the group's units, weights whose input columns read them), by
    parameter name. Chain networks (lenet300_100, conv4, VGG): each weight layer's outputs feed the
    next one (a flattened feature map as equal blocks of columns per channel). ResNets: each block's
    internal channels, and each residual stream."""
    weights = [name for name, tensor in state.items() if name.endswith(".weight") and tensor.dim() > 1]
    if arch.startswith("resnet"):
        inside = [([f"{b}.conv{i}.weight"], [f"{b}.conv{i + 1}.weight"]) for b in residual_blocks(state)
                  for i in range(1, 10) if f"{b}.conv{i + 1}.weight" in state]
        streams = [([f"{p}.weight" for p in producers if f"{p}.weight" in weights],
                    [f"{c}.weight" for c in consumers]) for producers, consumers in residual_streams(state)]
        return inside + streams
    return [([a], [b]) for a, b in pairwise(weights)]


def layer_groups(arch: str, state: Mapping[str, torch.Tensor]) -> dict[str, LayerGroups]:
    """For every weight in a group: (index of the group its rows belong to, of the group its columns
    read), None for an axis no relabelling moves (input pixels, class outputs)."""
    found: dict[str, list[int | None]] = {}
    for index, (rows, cols) in enumerate(unit_groups(arch, state)):
        for name in rows:
            found.setdefault(name, [None, None])[0] = index
        for name in cols:
            found.setdefault(name, [None, None])[1] = index
    return {name: (axes[0], axes[1]) for name, axes in found.items()}
