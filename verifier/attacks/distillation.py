"""Knowledge distillation into a fresh sparse student: the answers copied, the weights and mask not."""

from __future__ import annotations

import torch
from torch import nn

from verifier.masks import Mask, apply_mask


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
