"""Training and evaluation. The mask is re-applied after every optimiser step (no regrowth); on CUDA
the loop uses bf16 autocast, channels_last and GPU-resident data; a checkpoint after each epoch lets
a killed run resume with the same result on the CPU."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from verifier.masks import Mask, apply_mask


@dataclass
class TrainConfig:
    """Training hyperparameters; `help` in each field's metadata says what it does."""

    epochs: int = field(default=15, metadata={"help": "Passes over the training set."})
    lr: float = field(default=0.05, metadata={"help": "Peak learning rate."})
    batch_size: int = field(default=64, metadata={"help": "Examples per step."})
    optimizer: Literal["sgd", "adam"] = field(default="sgd", metadata={"help": "sgd (momentum) or adam."})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum."})
    weight_decay: float = field(default=5e-4, metadata={"help": "L2 penalty."})
    schedule: Literal["cosine", "step", "constant"] = field(default="cosine", metadata={
        "help": "cosine annealing per step; step: x gamma at each milestone; constant."})
    milestones: tuple[float, ...] = field(default=(0.5, 0.75), metadata={
        "help": "Step schedule: fractions of training at which the rate drops."})
    gamma: float = field(default=0.1, metadata={"help": "Step schedule: factor at each milestone."})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto",
                                                   metadata={"help": "auto: cuda if present."})
    amp: bool = field(default=True, metadata={"help": "bf16 autocast (CUDA only)."})
    channels_last: bool = field(default=True, metadata={"help": "channels_last memory format (CUDA only)."})

    def __post_init__(self) -> None:
        self.milestones = tuple(self.milestones)
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs >= 0, batch_size >= 1 and lr > 0 are required")
        if self.epochs > 10_000 or self.batch_size > 65_536:
            raise ValueError("epochs must be at most 10000 and batch_size at most 65536")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; use 'sgd' or 'adam'")
        if self.schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"unknown schedule {self.schedule!r}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy in [0, 1] (on the model's device)."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size].to(device)
        correct += int((model(batch).argmax(1).cpu() == y[start:start + batch_size]).sum())
    return correct / max(1, len(x))


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def _schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, steps: int):
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    if config.schedule == "step":
        milestones = sorted({max(1, int(m * steps)) for m in config.milestones})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=config.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, config: TrainConfig | None = None,
          seed: int = 0, mask: Mask | None = None,
          progress: Callable[[int, float], None] | None = None,
          on_step: Callable[[int], None] | None = None, checkpoint: str | Path | None = None,
          **overrides) -> None:
    """Train `model` in place; pruned weights stay exactly zero.

    `overrides` set `TrainConfig` fields by name (`epochs=3, lr=0.01`). `progress(epoch, mean loss)`
    runs after each epoch, `on_step(step)` after each optimiser step (step counts from 1). With
    `checkpoint`, state is saved after every epoch and a later call with the same arguments resumes
    from it. Deterministic on the CPU for a seed (shuffling uses its own generator).
    """
    config = replace(config or TrainConfig(), **_known(overrides))
    device = resolve_device(config.device)
    on_cuda = device.type == "cuda"
    model.to(device)
    if on_cuda and config.channels_last:
        model.to(memory_format=torch.channels_last)
    x, y = x.to(device), y.to(device)
    if mask is not None:
        mask = {name: keep.to(device) for name, keep in mask.items()}
        apply_mask(model, mask)
    generator = torch.Generator().manual_seed(seed)
    optimizer = _optimizer(model, config)
    steps_per_epoch = (len(x) + config.batch_size - 1) // config.batch_size
    scheduler = _schedule(optimizer, config, config.epochs * steps_per_epoch)
    start_epoch = 0
    if checkpoint is not None and Path(checkpoint).exists():
        saved = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        generator.set_state(saved["generator"])
        start_epoch = int(saved["epoch"]) + 1
    loss_fn = nn.CrossEntropyLoss()
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, config.epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator).to(device)
        total = torch.zeros((), device=device)
        for start in range(0, len(x), config.batch_size):
            index = order[start:start + config.batch_size]
            batch = x[index]
            if on_cuda and config.channels_last and batch.dim() == 4:
                batch = batch.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_cuda and config.amp):
                loss = loss_fn(model(batch), y[index])
            loss.backward()
            optimizer.step()
            scheduler.step()
            if mask is not None:
                apply_mask(model, mask)
            total += loss.detach()
            step += 1
            if on_step is not None:
                on_step(step)
        if checkpoint is not None:
            _save_checkpoint(Path(checkpoint), model, optimizer, scheduler, generator, epoch)
        if progress is not None:
            progress(epoch, float(total) / max(1, steps_per_epoch))


def _save_checkpoint(path: Path, model, optimizer, scheduler, generator, epoch: int) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "generator": generator.get_state(), "epoch": epoch}, tmp)
    os.replace(tmp, path)


def _known(overrides: dict) -> dict:
    names = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise TypeError(f"unknown training settings: {', '.join(sorted(unknown))}")
    return overrides
