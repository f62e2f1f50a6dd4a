"""Concrete Ticket Search (Arora & Teuscher, arXiv 2512.07142), implemented from the paper's description.

Each prunable weight gets a retention logit; masks are sampled from a Binary Concrete relaxation
while the weights stay frozen at initialisation and only the logits learn (Adam). GradBalance
controls sparsity without a tuned penalty: while the expected density is above target, the
gradient of the expected density is rescaled to the (smoothed) norm of the task gradient. CTS-KL
uses the reverse KL divergence KL(sparse || dense) to a trained dense network as the task loss.
The final mask keeps the top-k logits, k = round(target_density * prunable weights), exactly.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch.func import functional_call

from verifier.data import Dataset
from verifier.masks import Mask, overall_density
from verifier.models import build_model, prunable_parameters
from verifier.tickets.imp import Progress
from verifier.tickets.ticket import Ticket
from verifier.training import TrainConfig, evaluate, resolve_device, train

EPS = 1e-6


@dataclass
class CtsConfig:
    target_density: float = field(default=0.05, metadata={"help": "Fraction of prunable weights kept."})
    steps: int = field(default=400, metadata={"help": "Optimisation steps on the retention logits."})
    lr: float = field(default=0.1, metadata={"help": "Adam learning rate of the logits."})
    temperature: float = field(default=2 / 3, metadata={"help": "Binary Concrete temperature."})
    init_logit: float = field(default=3.0, metadata={"help": "Initial retention logit (sigmoid(3) = 0.95)."})
    objective: Literal["ce", "kl"] = field(default="ce", metadata={
        "help": "ce: cross-entropy on the labels; kl: reverse KL to the trained dense network (CTS-KL)."})
    smoothing: float = field(default=0.9, metadata={"help": "GradBalance: EMA factor of the task-gradient norm."})
    batch_size: int = field(default=128, metadata={"help": "Examples per logit step."})
    pretrain: TrainConfig = field(default_factory=TrainConfig, metadata={
        "help": "Training of the dense network (CTS-KL's reference, and the dense accuracy)."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={
        "help": "Training of the found subnetwork from initialisation with its mask fixed."})

    def __post_init__(self) -> None:
        for name in ("pretrain", "train"):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, TrainConfig(**getattr(self, name)))
        if not 0 < self.target_density < 1:
            raise ValueError("target_density must be in (0, 1)")
        if self.steps < 1 or self.lr <= 0 or self.temperature <= 0 or self.batch_size < 1:
            raise ValueError("steps, lr, temperature and batch_size must be positive")
        if self.steps > 1_000_000 or self.batch_size > 65_536:
            raise ValueError("steps must be at most 1000000 and batch_size at most 65536")
        if not 0 <= self.smoothing < 1:
            raise ValueError("smoothing must be in [0, 1)")
        if self.objective not in ("ce", "kl"):
            raise ValueError("objective must be 'ce' or 'kl'")


def top_k_mask(logits: dict[str, torch.Tensor], density: float) -> Mask:
    """Keep exactly round(density * total) weights: the largest logits across all layers."""
    names = list(logits)
    flat = torch.cat([logits[n].detach().flatten().cpu() for n in names])
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.sort(flat, descending=True, stable=True).indices[: int(round(density * flat.numel()))]] = True
    mask, start = {}, 0
    for name in names:
        size = logits[name].numel()
        mask[name] = keep[start:start + size].view(logits[name].shape)
        start += size
    return mask


def find_cts_ticket(arch: str, dataset: Dataset, *, seed: int, config: CtsConfig | None = None,
                    progress: Progress | None = None) -> Ticket:
    """Search a mask at initialisation by Concrete relaxation with GradBalance; train it; return the ticket."""
    config = config or CtsConfig()
    report = progress or (lambda _f, _m: None)
    device = resolve_device(config.train.device)
    torch.manual_seed(seed)
    model = build_model(arch, dataset.input_shape, dataset.num_classes)
    init = copy.deepcopy(model.state_dict())
    names = prunable_parameters(arch, model)
    teacher, dense_accuracy = None, None
    if config.objective == "kl":
        report(0.0, "training the dense reference network")
        teacher = copy.deepcopy(model)
        train(teacher, dataset.x_train, dataset.y_train, config=config.pretrain, seed=seed * 1000)
        teacher.eval()
        dense_accuracy = evaluate(teacher, dataset.x_test, dataset.y_test)
    model.to(device)
    frozen = {name: p.detach() for name, p in model.named_parameters()}
    logits = {name: torch.full_like(frozen[name], config.init_logit, requires_grad=True) for name in names}
    optimizer = torch.optim.Adam(logits.values(), lr=config.lr)
    generator = torch.Generator().manual_seed(seed)
    x, y = dataset.x_train.to(device), dataset.y_train.to(device)
    total = sum(frozen[n].numel() for n in names)
    smoothed_norm, history = None, []
    model.train()
    for step in range(1, config.steps + 1):
        index = torch.randint(len(x), (config.batch_size,), generator=generator).to(device)
        noise = {n: torch.rand(logits[n].shape, generator=generator).clamp(EPS, 1 - EPS).to(device) for n in names}
        gates = {n: torch.sigmoid((logits[n] + noise[n].log() - (1 - noise[n]).log()) / config.temperature)
                 for n in names}
        weights = dict(frozen) | {n: frozen[n] * gates[n] for n in names}
        out = functional_call(model, weights, (x[index],))
        if teacher is None:
            task = F.cross_entropy(out, y[index])
        else:
            with torch.no_grad():
                reference = F.log_softmax(teacher.to(device)(x[index]), dim=1)
            log_sparse = F.log_softmax(out, dim=1)
            task = (log_sparse.exp() * (log_sparse - reference)).sum(1).mean()
        expected = sum(torch.sigmoid(logits[n]).sum() for n in names) / total
        task_grads = torch.autograd.grad(task, list(logits.values()))
        task_norm = torch.sqrt(sum((g ** 2).sum() for g in task_grads))
        smoothed_norm = task_norm if smoothed_norm is None else (
            config.smoothing * smoothed_norm + (1 - config.smoothing) * task_norm)
        grads = list(task_grads)
        if float(expected.detach()) > config.target_density:  # GradBalance: sparsity pull as strong as the task's
            sparsity_grads = torch.autograd.grad(expected, list(logits.values()))
            sparsity_norm = torch.sqrt(sum((g ** 2).sum() for g in sparsity_grads)).clamp_min(1e-12)
            grads = [g + s * (smoothed_norm / sparsity_norm) for g, s in zip(grads, sparsity_grads, strict=True)]
        optimizer.zero_grad(set_to_none=True)
        for logit, grad in zip(logits.values(), grads, strict=True):
            logit.grad = grad.detach()
        optimizer.step()
        if step % max(1, config.steps // 20) == 0 or step == config.steps:
            density_now, loss_now = float(expected.detach()), float(task.detach())
            history.append({"step": step, "expected_density": density_now, "task_loss": loss_now})
            report(0.6 * step / config.steps, f"step {step}: expected density {density_now:.3f}")
    mask = top_k_mask(logits, config.target_density)
    model.load_state_dict(init)
    for name, parameter in model.named_parameters():
        if name in mask:
            parameter.data.mul_(mask[name].to(parameter.device))
    before = evaluate(model, dataset.x_test, dataset.y_test)
    report(0.6, "training the found subnetwork")
    train(model, dataset.x_train, dataset.y_train, config=config.train, seed=seed * 1000 + 1, mask=mask)
    accuracy = evaluate(model, dataset.x_test, dataset.y_test)
    rounds = history + [{"round": 1, "density": overall_density(mask), "accuracy_at_init": before,
                         "accuracy": accuracy}]
    return Ticket(arch=arch, dataset=dataset.name, seed=seed,
                  state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, rewind=init,
                  mask=mask, accuracy=accuracy, dense_accuracy=dense_accuracy, rounds=rounds, method="cts",
                  hyperparameters=asdict(config))
