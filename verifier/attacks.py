"""A thief's moves on a ticket: fine-tuning, further pruning, distillation, function-preserving
permutation (the attack issue grows this into a suite)."""

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


def fresh_sparse_student(arch: str, input_shape: tuple[int, ...], num_classes: int, mask: Mask,
                         seed: int = 0) -> nn.Module:
    """A freshly initialised `arch` with `mask` applied and each layer's kept weights scaled by
    1/sqrt(density), so the signal does not vanish through sparse layers without BatchNorm (at
    conv4's 4 % density an unscaled student never leaves chance)."""
    from verifier.models import build_model

    torch.manual_seed(seed)
    student = build_model(arch, input_shape, num_classes)
    with torch.no_grad():
        for name, weight in student.named_parameters():
            if name in mask:
                keep = mask[name].to(weight.dtype)
                weight.mul_(keep / max(float(keep.mean()), 1e-12) ** 0.5)
    return student


def distill(teacher: nn.Module, student: nn.Module, mask: Mask | None, x: torch.Tensor, *, epochs: int,
            lr: float = 0.05, temperature: float = 4.0, batch_size: int = 64, seed: int = 0) -> None:
    """Train `student` in place to match `teacher`'s softened outputs on `x` (no labels: what a thief
    with only query access and unlabelled data can do), its mask fixed. Loss: KL divergence at
    `temperature`, scaled by its square (Hinton et al.); SGD with momentum, cosine schedule."""
    teacher.eval()
    with torch.no_grad():
        targets = torch.cat([teacher(x[i:i + 512]) for i in range(0, len(x), 512)]) / temperature
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    if mask is not None:
        apply_mask(student, mask)
    for _ in range(epochs):
        student.train()
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            index = order[start:start + batch_size]
            log_p = nn.functional.log_softmax(student(x[index]) / temperature, dim=1)
            loss = nn.functional.kl_div(log_p, nn.functional.log_softmax(targets[index], dim=1),
                                        reduction="batchmean", log_target=True) * temperature ** 2
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if mask is not None:
                apply_mask(student, mask)


def permute_hidden_units(arch: str, state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """A function-preserving permutation of hidden units: both hidden layers of lenet300_100; the
    channels of conv1-conv3 and the units of fc1-fc2 of conv4 (conv4's own channels, which fc1 reads
    as flattened blocks, stay); or the internal channels of every residual block (conv, its BatchNorm,
    the next conv's inputs) of the ResNets. The outputs are unchanged; every position-based
    comparison is scrambled. Other architectures: the attack issue."""
    generator = torch.Generator().manual_seed(seed)
    if arch == "lenet300_100":
        chains = [("fc1", None, "fc2"), ("fc2", None, "fc3")]
    elif arch == "conv4":
        chains = [("conv1", None, "conv2"), ("conv2", None, "conv3"), ("conv3", None, "conv4"),
                  ("fc1", None, "fc2"), ("fc2", None, "fc3")]
    elif arch.startswith("resnet"):
        blocks = sorted({key.rsplit(".conv1.weight", 1)[0] for key in state if key.endswith(".conv1.weight")
                         and key.startswith("layer")})
        chains = [(f"{b}.conv{i}", f"{b}.bn{i}", f"{b}.conv{i + 1}") for b in blocks for i in (1, 2)
                  if f"{b}.conv{i + 1}.weight" in state]
    else:
        raise ValueError(f"permute_hidden_units supports lenet300_100, conv4 and the ResNets, not {arch}")
    out = dict(state)
    for producer, norm, consumer in chains:
        order = torch.randperm(out[f"{producer}.weight"].shape[0], generator=generator)
        for key in [f"{producer}.weight", f"{producer}.bias"] + [
                f"{norm}.{p}" for p in ("weight", "bias", "running_mean", "running_var")] * (norm is not None):
            if key in out:
                out[key] = out[key][order]
        out[f"{consumer}.weight"] = out[f"{consumer}.weight"][:, order]
    return out
