"""Retraining attacks: fine-tuning with the mask kept, fine-tuning dense then re-pruning, and
transfer to another dataset with a new head."""

from __future__ import annotations

import torch
from torch import nn

from verifier.masks import Mask, apply_mask, global_magnitude_prune
from verifier.training import train


def fine_tune(model: nn.Module, mask: Mask, x: torch.Tensor, y: torch.Tensor, *, epochs: int,
              lr: float = 0.01, seed: int = 0) -> None:
    """Retrain with the mask kept fixed (the plainest stealing move)."""
    train(model, x, y, epochs=epochs, lr=lr, seed=seed, mask=mask)


def dense_finetune_reprune(model: nn.Module, mask: Mask, x: torch.Tensor, y: torch.Tensor, *, epochs: int,
                           lr: float = 0.01, seed: int = 0) -> Mask:
    """Drop the mask, fine-tune every weight, then prune back to the ticket's overall density by global
    magnitude over its prunable layers; returns the new mask (the thief's own topology)."""
    train(model, x, y, epochs=epochs, lr=lr, seed=seed)
    density = sum(int(keep.sum()) for keep in mask.values()) / sum(keep.numel() for keep in mask.values())
    params = dict(model.named_parameters())
    everything = {name: torch.ones_like(keep, dtype=torch.bool) for name, keep in mask.items()}
    new_mask = global_magnitude_prune({name: params[name] for name in mask}, everything, 1 - density)
    apply_mask(model, new_mask)
    return new_mask


def last_linear(model: nn.Module) -> str:
    """The name of the model's last nn.Linear (its classification head)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError("the model has no linear head")
    return names[-1]


def transfer(model: nn.Module, mask: Mask, x: torch.Tensor, y: torch.Tensor, num_classes: int, *, epochs: int,
             lr: float = 0.01, seed: int = 0) -> Mask:
    """Fine-tune on another dataset of the same input shape with a fresh head for its `num_classes`
    (the rest keeps its mask); returns the mask of the layers that kept one (the head's is dropped)."""
    head = last_linear(model)
    parent, _, attribute = head.rpartition(".")
    old = model.get_submodule(head)
    torch.manual_seed(seed)
    setattr(model.get_submodule(parent) if parent else model, attribute, nn.Linear(old.in_features, num_classes))
    kept = {name: keep for name, keep in mask.items() if name != f"{head}.weight"}
    train(model, x, y, epochs=epochs, lr=lr, seed=seed, mask=kept)
    return kept
