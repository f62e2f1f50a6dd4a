"""Block removal (a layer-ticket attack): make a residual block the identity."""

from __future__ import annotations

import torch
from torch import nn


def removable_blocks(model: nn.Module) -> list[str]:
    """Residual blocks whose shortcut is the identity (no projection): removing their branch keeps
    every shape, and the block then passes its input through."""
    return [name for name, module in model.named_modules()
            if hasattr(module, "downsample") and module.downsample is None and _last_norm(module) is not None]


def _last_norm(block: nn.Module) -> nn.BatchNorm2d | None:
    norms = [m for n, m in block.named_children() if isinstance(m, nn.BatchNorm2d) and n.startswith("bn")]
    return norms[-1] if norms else None


def remove_block(model: nn.Module, block: str) -> None:
    """Zero the block's last BatchNorm (scale and shift) so its branch adds nothing: the block returns
    relu(x) = x, its input having come out of a ReLU."""
    if block not in removable_blocks(model):
        raise ValueError(f"{block!r} is not a residual block with an identity shortcut")
    norm = _last_norm(model.get_submodule(block))
    with torch.no_grad():
        norm.weight.zero_()
        norm.bias.zero_()
