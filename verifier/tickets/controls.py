"""The controls that make a lottery-ticket claim science: one-shot magnitude pruning, random pruning at
the ticket's layerwise densities, and random re-initialisation of the ticket's mask."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch

from verifier.data import Dataset
from verifier.masks import densities, global_magnitude_prune, overall_density, random_mask
from verifier.models import build_model, prunable_parameters
from verifier.tickets.imp import Progress
from verifier.tickets.ticket import Ticket
from verifier.training import TrainConfig, evaluate, train


@dataclass
class OneShotConfig:
    target_density: float = field(default=0.2, metadata={"help": "Fraction of prunable weights kept."})
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):
            self.train = TrainConfig(**self.train)
        if not 0 < self.target_density < 1:
            raise ValueError("target_density must be in (0, 1)")


def find_oneshot_ticket(arch: str, dataset: Dataset, *, seed: int, config: OneShotConfig | None = None,
                        progress: Progress | None = None) -> Ticket:
    """Train dense, prune to the target density in one global magnitude step, rewind to init, retrain."""
    config = config or OneShotConfig()
    report = progress or (lambda _f, _m: None)
    torch.manual_seed(seed)
    model = build_model(arch, dataset.input_shape, dataset.num_classes)
    init = copy.deepcopy(model.state_dict())
    parameters = dict(model.named_parameters())
    full = {n: torch.ones_like(parameters[n], dtype=torch.bool) for n in prunable_parameters(arch, model)}
    report(0.0, "training the dense network")
    train(model, dataset.x_train, dataset.y_train, config=config.train, seed=seed * 1000)
    dense_accuracy = evaluate(model, dataset.x_test, dataset.y_test)
    mask = global_magnitude_prune(dict(model.named_parameters()), full, 1 - config.target_density)
    model.load_state_dict(init)
    report(0.5, "retraining the pruned network from initialisation")
    train(model, dataset.x_train, dataset.y_train, config=config.train, seed=seed * 1000 + 1, mask=mask)
    accuracy = evaluate(model, dataset.x_test, dataset.y_test)
    rounds = [{"round": 0, "density": 1.0, "accuracy": dense_accuracy},
              {"round": 1, "density": overall_density(mask), "accuracy": accuracy}]
    return Ticket(arch, dataset.name, seed, copy.deepcopy(model.state_dict()), init, mask, accuracy,
                  dense_accuracy, rounds=rounds, method="oneshot", hyperparameters=asdict(config))


@dataclass
class ControlConfig:
    """A control trained from a ticket found earlier (`base`: in the service, a find_ticket job id)."""

    base: str = field(default="", metadata={"help": "The ticket to control: a succeeded find_ticket job id."})
    train: TrainConfig | None = field(default=None, metadata={
        "help": "Training settings; default: those the base ticket was trained with."})

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):
            self.train = TrainConfig(**self.train)


def _train_control(ticket: Ticket, dataset: Dataset, *, seed: int, init: dict[str, torch.Tensor],
                   mask: dict[str, torch.Tensor], method: str, config: TrainConfig | None) -> Ticket:
    config = config or TrainConfig(**ticket.hyperparameters.get("train", {}))
    model = build_model(ticket.arch, dataset.input_shape, dataset.num_classes)
    model.load_state_dict(init)
    train(model, dataset.x_train, dataset.y_train, config=config, seed=seed * 1000 + 7, mask=mask)
    accuracy = evaluate(model, dataset.x_test, dataset.y_test)
    return Ticket(ticket.arch, ticket.dataset, seed, copy.deepcopy(model.state_dict()), init, mask, accuracy,
                  ticket.dense_accuracy, rounds=[{"round": 0, "density": overall_density(mask),
                                                  "accuracy": accuracy}],
                  method=method, hyperparameters={"base_seed": ticket.seed, "train": asdict(config)})


def random_pruning_control(ticket: Ticket, dataset: Dataset, *, seed: int,
                           config: TrainConfig | None = None) -> Ticket:
    """A random mask with the ticket's per-layer densities, trained from the ticket's rewind weights."""
    shapes = {name: keep.shape for name, keep in ticket.mask.items()}
    mask = random_mask(shapes, densities(ticket.mask), seed)
    return _train_control(ticket, dataset, seed=seed, init=ticket.rewind, mask=mask, method="random_pruning",
                          config=config)


def random_reinit_control(ticket: Ticket, dataset: Dataset, *, seed: int,
                          config: TrainConfig | None = None) -> Ticket:
    """The ticket's mask on a fresh random initialisation."""
    torch.manual_seed(seed + 10_000)
    init = build_model(ticket.arch, dataset.input_shape, dataset.num_classes).state_dict()
    return _train_control(ticket, dataset, seed=seed, init=copy.deepcopy(init), mask=ticket.mask,
                          method="random_reinit", config=config)
