"""Layer tickets ("When Layers Play the Lottery", Jordao et al. 2023): remove whole residual blocks, chosen
at initialisation by SNIP and/or GraSP, then train the shorter network.

A block is removable when its input and output shapes match (a residual block without a downsample
shortcut); removing it replaces it by nn.Identity, so the remaining layers keep their state_dict names.
`remove_blocks` is also the block-removal attack.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from verifier.data import Dataset
from verifier.models import BasicBlock, Bottleneck, build_model, prunable_parameters
from verifier.tickets.imp import Progress
from verifier.tickets.ticket import Ticket
from verifier.training import TrainConfig, evaluate, resolve_device, train

SCORES = ("snip+grasp", "snip", "grasp")


@dataclass
class LayerTicketConfig:
    """Hyperparameters of layer tickets; every field has a default and a `help` in its metadata."""

    blocks_removed: int = field(default=2, metadata={"help": "Residual blocks removed (p)."})
    score: Literal["snip+grasp", "snip", "grasp"] = field(default="snip+grasp", metadata={
        "help": "Block importance at init: SNIP, GraSP, or both (each min-max normalised across blocks)."})
    score_batches: int = field(default=1, metadata={"help": "Training batches the scores are computed on."})
    score_batch_size: int = field(default=128, metadata={"help": "Examples per scoring batch."})
    train_dense: bool = field(default=False, metadata={
        "help": "Also train the full network to report its accuracy (dense_accuracy is None otherwise)."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={
        "help": "Training of the shortened network (and of the dense one with train_dense)."})

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):
            self.train = TrainConfig(**self.train)
        if self.blocks_removed < 0:
            raise ValueError("blocks_removed must be >= 0")
        if self.score not in SCORES:
            raise ValueError(f"unknown score {self.score!r}; use one of {', '.join(SCORES)}")
        if self.score_batches < 1 or self.score_batch_size < 1:
            raise ValueError("score_batches and score_batch_size must be >= 1")
        if self.blocks_removed > 1000 or self.score_batches > 10_000 or self.score_batch_size > 65_536:
            raise ValueError("blocks_removed must be at most 1000, score_batches at most 10000 and "
                             "score_batch_size at most 65536")


def removable_blocks(model: nn.Module) -> list[str]:
    """Names of the residual blocks whose input and output shapes match (no downsample shortcut)."""
    return [name for name, module in model.named_modules()
            if isinstance(module, (BasicBlock, Bottleneck)) and module.downsample is None]


def remove_blocks(model: nn.Module, names: list[str] | tuple[str, ...]) -> nn.Module:
    """A copy of `model` with the named removable blocks replaced by nn.Identity (`model` is unchanged).

    The remaining parameters keep their state_dict names; the removed blocks' entries disappear.
    """
    allowed = set(removable_blocks(model))
    if len(set(names)) != len(names):
        raise ValueError(f"blocks named twice: {list(names)}")
    bad = [name for name in names if name not in allowed]
    if bad:
        raise ValueError(f"{', '.join(bad)}: not a removable block (input and output shapes must match); "
                         f"removable: {', '.join(sorted(allowed)) or 'none'}")
    short = copy.deepcopy(model)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        setattr(short.get_submodule(parent_name) if parent_name else short, child, nn.Identity())
    return short


def model_for_layer_ticket(ticket: Ticket, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The shortened architecture of a layer ticket, with its trained weights loaded."""
    model = remove_blocks(build_model(ticket.arch, input_shape, num_classes), removed_blocks(ticket))
    model.load_state_dict(ticket.state)
    return model


def removed_blocks(ticket: Ticket) -> list[str]:
    """The blocks a layer ticket removed (recorded in its last round); [] for other tickets."""
    for row in reversed(ticket.rounds):
        if "removed" in row:
            return list(row["removed"])
    return []


def score_blocks(model: nn.Module, blocks: list[str], x: torch.Tensor, y: torch.Tensor, *,
                 batches: int = 1, batch_size: int = 128, seed: int = 0) -> dict[str, dict[str, float]]:
    """SNIP and GraSP importance per block at the model's current weights (a copy is scored, train mode).

    snip = sum over the block's parameters of |w * g|; grasp = sum of w * (H g), the negative of GraSP's
    score -w * (H g), whose largest values GraSP removes, so that for both a low value means removable.
    g is the loss gradient averaged over `batches` batches; H g comes from a double backward.
    """
    scored = copy.deepcopy(model).train()
    device = next(scored.parameters()).device
    params = [p for p in scored.parameters() if p.requires_grad]
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    chunks = [order[i * batch_size:(i + 1) * batch_size] for i in range(batches)]
    chunks = [c for c in chunks if len(c)] or [order[:batch_size]]
    data = [(x[c].to(device), y[c].to(device)) for c in chunks]
    grad = [torch.zeros_like(p) for p in params]
    for xb, yb in data:
        for acc, g in zip(grad, _grads(F.cross_entropy(scored(xb), yb), params), strict=True):
            acc += g / len(data)
    hessian_grad = [torch.zeros_like(p) for p in params]
    for xb, yb in data:
        loss = F.cross_entropy(scored(xb), yb)
        first = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        z = sum((f * g).sum() for f, g in zip(first, grad, strict=True) if f is not None)
        for acc, h in zip(hessian_grad, _grads(z, params), strict=True):
            acc += h / len(data)
    index = {id(p): i for i, p in enumerate(params)}
    out = {}
    params = [p.detach() for p in params]
    for block in blocks:
        members = [index[id(p)] for p in scored.get_submodule(block).parameters() if id(p) in index]
        out[block] = {
            "snip": float(sum((params[i] * grad[i]).abs().sum() for i in members)),
            "grasp": float(sum((params[i] * hessian_grad[i]).sum() for i in members)),
        }
    return out


def combine_scores(raw: dict[str, dict[str, float]], score: str) -> dict[str, float]:
    """Min-max normalise each criterion across blocks to [0, 1] and sum the chosen ones."""
    criteria = score.split("+")
    combined = dict.fromkeys(raw, 0.0)
    for criterion in criteria:
        values = [raw[b][criterion] for b in raw]
        low, span = min(values), max(values) - min(values)
        for block in raw:
            combined[block] += (raw[block][criterion] - low) / span if span > 0 else 0.0
    return combined


def find_layer_ticket(arch: str, dataset: Dataset, *, seed: int, config: LayerTicketConfig | None = None,
                      progress: Progress | None = None, **overrides) -> Ticket:
    """Remove the `blocks_removed` lowest-scoring removable blocks at init and train the shorter network.

    `overrides` set LayerTicketConfig fields, and TrainConfig fields (epochs, lr, ...) of `train`, by name.
    The ticket's state/rewind hold only the remaining layers; its mask is all ones over their prunable
    weights; the last round records the removed blocks (`removed_blocks`, `model_for_layer_ticket`).
    """
    config = _with_overrides(config or LayerTicketConfig(), overrides)
    report = progress or (lambda _f, _m: None)
    torch.manual_seed(seed)
    model = build_model(arch, dataset.input_shape, dataset.num_classes)
    candidates = removable_blocks(model)
    if not candidates:
        raise ValueError(f"{arch} has no removable residual blocks")
    if config.blocks_removed > len(candidates):
        raise ValueError(f"cannot remove {config.blocks_removed} blocks: blocks_removed exceeds the "
                         f"{len(candidates)} removable blocks of {arch}")
    full_prunable = sum(dict(model.named_parameters())[n].numel() for n in prunable_parameters(arch, model))
    full_parameters = sum(p.numel() for p in model.parameters())
    rounds: list[dict[str, Any]] = []
    dense_accuracy = None
    if config.train_dense:
        report(0.0, "training the dense network")
        dense = copy.deepcopy(model)
        train(dense, dataset.x_train, dataset.y_train, config=config.train, seed=seed * 1000)
        dense_accuracy = evaluate(dense, dataset.x_test, dataset.y_test)
        rounds.append({"round": 0, "density": 1.0, "accuracy": dense_accuracy})
    report(0.4, f"scoring {len(candidates)} removable blocks")
    model.to(resolve_device(config.train.device))
    raw = score_blocks(model, candidates, dataset.x_train, dataset.y_train, batches=config.score_batches,
                       batch_size=config.score_batch_size, seed=seed * 1000 + 2)
    combined = combine_scores(raw, config.score)
    ranked = sorted(candidates, key=lambda b: combined[b])  # stable: ties keep model order
    removed = ranked[:config.blocks_removed]
    rounds.append({"phase": "score", "scores": {b: {**raw[b], "combined": combined[b]} for b in candidates}})
    short = remove_blocks(model, removed)
    rewind = {k: v.detach().cpu().clone() for k, v in short.state_dict().items()}
    names = prunable_parameters(arch, short)
    parameters = dict(short.named_parameters())
    mask = {n: torch.ones(parameters[n].shape, dtype=torch.bool) for n in names}
    before = evaluate(short, dataset.x_test, dataset.y_test)
    report(0.5, f"removed {', '.join(removed) or 'nothing'}; training the shorter network")
    train(short, dataset.x_train, dataset.y_train, config=config.train, seed=seed * 1000 + 1)
    accuracy = evaluate(short, dataset.x_test, dataset.y_test)
    rounds.append({"round": 1, "density": sum(m.numel() for m in mask.values()) / full_prunable,
                   "parameters_kept": sum(p.numel() for p in short.parameters()) / full_parameters,
                   "accuracy_at_init": before, "accuracy": accuracy, "removed": removed})
    report(1.0, f"layer ticket accuracy {accuracy:.4f}")
    return Ticket(arch=arch, dataset=dataset.name, seed=seed,
                  state={k: v.detach().cpu().clone() for k, v in short.state_dict().items()}, rewind=rewind,
                  mask=mask, accuracy=accuracy, dense_accuracy=dense_accuracy, rounds=rounds, method="layers",
                  hyperparameters=asdict(config))


def _grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads, strict=True)]


def _with_overrides(config: LayerTicketConfig, overrides: dict) -> LayerTicketConfig:
    """LayerTicketConfig fields directly; TrainConfig fields (epochs, lr, ...) to `train`."""
    own = set(LayerTicketConfig.__dataclass_fields__) - {"train"}
    training = set(TrainConfig.__dataclass_fields__)
    unknown = set(overrides) - own - training
    if unknown:
        raise TypeError(f"unknown layer-ticket settings: {', '.join(sorted(unknown))}")
    values = asdict(config)
    values["train"] = {**values["train"], **{k: v for k, v in overrides.items() if k in training}}
    values.update({k: v for k, v in overrides.items() if k in own})
    return LayerTicketConfig(**values)
