"""Registry of ticket-finding methods: name -> hyperparameter dataclass and finder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verifier.data import Dataset
from verifier.errors import VerifierError
from verifier.tickets.controls import (
    ControlConfig,
    OneShotConfig,
    find_oneshot_ticket,
    random_pruning_control,
    random_reinit_control,
)
from verifier.tickets.cts import CtsConfig, find_cts_ticket
from verifier.tickets.imp import ImpConfig, Progress, find_imp_ticket
from verifier.tickets.layers import LayerTicketConfig, find_layer_ticket
from verifier.tickets.ticket import Ticket


@dataclass(frozen=True)
class Finder:
    name: str
    config_type: type
    run: Callable[..., Ticket]
    summary: str
    resumable: bool = False
    needs_base: bool = False  # a control: runs on a ticket found earlier (`config.base`)

    def find(self, arch: str, dataset: Dataset, *, seed: int, config: Any, progress: Progress | None = None,
             checkpoint_dir: Path | None = None, base: Ticket | None = None) -> Ticket:
        """Run the finder; resumable finders keep their state in `checkpoint_dir` to survive a crash;
        controls train from `base`, the ticket they control."""
        if self.needs_base:
            if base is None:
                raise VerifierError(f"method {self.name!r} needs the ticket to control", code="missing_base")
            return self.run(base, dataset, seed=seed, config=config.train)
        extra = {"checkpoint_dir": checkpoint_dir} if self.resumable and checkpoint_dir else {}
        return self.run(arch, dataset, seed=seed, config=config, progress=progress, **extra)


FINDERS: dict[str, Finder] = {
    "imp": Finder("imp", ImpConfig, find_imp_ticket,
                  "iterative magnitude pruning with rewinding (LTH/LTR), optional extreme-ticket search",
                  resumable=True),
    "oneshot": Finder("oneshot", OneShotConfig, find_oneshot_ticket,
                      "one-shot global magnitude pruning to a target density, rewound and retrained"),
    "cts": Finder("cts", CtsConfig, find_cts_ticket,
                  "Concrete Ticket Search: retention logits at init, Binary Concrete, GradBalance; CTS-KL"),
    "layers": Finder("layers", LayerTicketConfig, find_layer_ticket,
                     "layer tickets: remove the residual blocks scoring lowest at init (SNIP + GraSP), train"),
    "random_pruning": Finder("random_pruning", ControlConfig, random_pruning_control,
                             "control: a random mask at the base ticket's per-layer densities, same init",
                             needs_base=True),
    "random_reinit": Finder("random_reinit", ControlConfig, random_reinit_control,
                            "control: the base ticket's mask on a fresh random initialisation", needs_base=True),
}


def finder_names() -> list[str]:
    return list(FINDERS)


def get_finder(name: str) -> Finder:
    if name not in FINDERS:
        raise VerifierError(f"unknown method {name!r}; known: {', '.join(FINDERS)}", code="unknown_method")
    return FINDERS[name]
