"""The `Ticket` a finder leaves, and its single-file artifact (safetensors + JSON metadata)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from verifier.masks import Mask, densities, overall_density, pack_mask, unpack_mask

STATE, REWIND, MASK = "state/", "rewind/", "mask/"


@dataclass
class Ticket:
    arch: str
    dataset: str
    seed: int
    state: dict[str, torch.Tensor]
    rewind: dict[str, torch.Tensor]
    mask: Mask
    accuracy: float
    dense_accuracy: float | None  # None where the finder never trains the dense network
    rounds: list[dict[str, Any]] = field(default_factory=list)
    method: str = "imp"
    hyperparameters: dict[str, Any] = field(default_factory=dict)

    @property
    def density(self) -> float:
        return overall_density(self.mask)

    def metadata(self) -> dict[str, Any]:
        """JSON-safe description: method, hyperparameters, seed, per-round results, densities."""
        return {"arch": self.arch, "dataset": self.dataset, "seed": self.seed, "method": self.method,
                "hyperparameters": self.hyperparameters, "accuracy": self.accuracy,
                "dense_accuracy": self.dense_accuracy, "rounds": self.rounds, "density": self.density,
                "layer_densities": densities(self.mask)}


def save_ticket(ticket: Ticket, path: str | Path) -> None:
    """One safetensors file: trained weights, rewind weights, bit-packed mask; metadata as JSON.

    The metadata is one key, so the same ticket always gives the same bytes (and SHA-256):
    safetensors writes several metadata keys in an order that changes from run to run."""
    packed, shapes = pack_mask(ticket.mask)
    tensors = {STATE + k: v.detach().cpu().contiguous() for k, v in ticket.state.items()}
    tensors |= {REWIND + k: v.detach().cpu().contiguous() for k, v in ticket.rewind.items()}
    tensors |= {MASK + k: v for k, v in packed.items()}
    save_file(tensors, str(path), metadata={"ticket": json.dumps({**ticket.metadata(), "mask_shapes": shapes})})


def load_ticket(path: str | Path) -> Ticket:
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    info = json.loads(metadata["ticket"])

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    return Ticket(arch=info["arch"], dataset=info["dataset"], seed=info["seed"], state=part(STATE),
                  rewind=part(REWIND), mask=unpack_mask(part(MASK), info["mask_shapes"]), accuracy=info["accuracy"],
                  dense_accuracy=info["dense_accuracy"], rounds=info["rounds"], method=info["method"],
                  hyperparameters=info["hyperparameters"])
