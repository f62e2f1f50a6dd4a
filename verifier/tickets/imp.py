"""Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020), and the
paper's extreme-ticket search (the sparsest round within eps of the dense accuracy)."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from verifier.data import Dataset
from verifier.masks import Mask, global_magnitude_prune, layerwise_magnitude_prune, overall_density
from verifier.models import build_model, prunable_parameters
from verifier.tickets.ticket import Ticket
from verifier.training import TrainConfig, evaluate, train

Progress = Callable[[float, str], None]


@dataclass
class ImpConfig:
    """Hyperparameters of IMP. Every field has a default; `help` in the metadata says what it does."""

    rounds: int = field(default=3, metadata={"help": "Pruning rounds (ignored with target_density)."})
    rate: float = field(default=0.2, metadata={"help": "Fraction of the remaining weights pruned per round."})
    target_density: float | None = field(default=None, metadata={
        "help": "Prune until at most this fraction of prunable weights remains; the last round stops "
                "exactly there."})
    scope: Literal["global", "layerwise"] = field(default="global", metadata={
        "help": "Rank weights across all prunable layers, or within each layer."})
    rewind_iteration: int = field(default=0, metadata={
        "help": "0 rewinds to initialisation (LTH); k > 0 to the weights after k steps (LTR)."})
    extreme: bool = field(default=False, metadata={
        "help": "Search the extreme ticket: keep pruning while accuracy stays within eps of dense, "
                "undoing a round that falls below and backing off the rate."})
    eps: float = field(default=0.01, metadata={"help": "Accuracy tolerance of the extreme search."})
    backoff_rates: tuple[float, ...] = field(default=(0.2, 0.1, 0.05, 0.01), metadata={
        "help": "Rates the extreme search backs off through."})
    max_rounds: int = field(default=40, metadata={"help": "Upper bound on rounds of any search."})
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):
            self.train = TrainConfig(**self.train)
        self.backoff_rates = tuple(self.backoff_rates)
        if not 0 < self.rate < 1:
            raise ValueError("rate must be in (0, 1)")
        if self.target_density is not None and not 0 < self.target_density < 1:
            raise ValueError("target_density must be in (0, 1)")
        if self.rounds < 0 or self.max_rounds < 1 or self.rewind_iteration < 0:
            raise ValueError("rounds, max_rounds and rewind_iteration must be non-negative")
        if self.rounds > 1000 or self.max_rounds > 1000 or self.rewind_iteration > 1_000_000:
            raise ValueError("rounds and max_rounds must be at most 1000, rewind_iteration at most 1000000")
        if not all(0 < r < 1 for r in self.backoff_rates):
            raise ValueError("backoff_rates must lie in (0, 1)")


def _prune(weights: dict[str, torch.Tensor], mask: Mask, rate: float, scope: str) -> Mask:
    if scope == "global":
        return global_magnitude_prune(weights, mask, rate)
    return layerwise_magnitude_prune(weights, mask, rate)


def find_imp_ticket(arch: str, dataset: Dataset, *, seed: int, config: ImpConfig | None = None,
                    progress: Progress | None = None,
                    on_round: Callable[[int, Mask, dict[str, torch.Tensor]], None] | None = None,
                    checkpoint_dir: str | Path | None = None, **overrides) -> Ticket:
    """Find a ticket by IMP with rewinding. `overrides` set ImpConfig / TrainConfig fields by name.

    `on_round(round, mask, trained_state)` sees every kept round (round 0 is the dense network).
    With `checkpoint_dir`, the search state is saved after every round and training state after
    every epoch; a call with the same arguments after a crash resumes there and gives the same
    ticket on the CPU (`on_round` is not replayed for rounds finished before the crash).
    """
    config = _with_overrides(config or ImpConfig(), overrides)
    report = progress or (lambda _f, _m: None)
    torch.manual_seed(seed)
    model = build_model(arch, dataset.input_shape, dataset.num_classes)
    init = copy.deepcopy(model.state_dict())
    names = prunable_parameters(arch, model)
    parameters = dict(model.named_parameters())
    mask = {name: torch.ones_like(parameters[name], dtype=torch.bool) for name in names}
    files = _CheckpointFiles(Path(checkpoint_dir)) if checkpoint_dir is not None else None
    planned = _planned_rounds(config)
    rates = list(config.backoff_rates) if config.extreme else [config.rate]
    saved = files.load_search() if files else None
    if saved is not None:
        rewind, mask, best_state, history = saved["rewind"], saved["mask"], saved["best_state"], saved["history"]
        rate_index, round_index, dense_accuracy = saved["rate_index"], saved["round_index"], history[0]["accuracy"]
        model.load_state_dict(best_state)
        report(min(0.99, (round_index + 1) / (planned + 1)), f"resumed after round {round_index}")
    else:
        rewind = _train_dense(model, dataset, config, seed, files, report, planned) or init
        dense_accuracy = evaluate(model, dataset.x_test, dataset.y_test)
        history = [{"round": 0, "density": 1.0, "accuracy": dense_accuracy, "rate": 0.0, "kept": True}]
        report(1 / (planned + 1), f"dense accuracy {dense_accuracy:.4f}")
        best_state = copy.deepcopy(model.state_dict())
        if on_round is not None:
            on_round(0, mask, best_state)
        rate_index, round_index = 0, 0
        if files:
            files.save_search(rewind, mask, best_state, history, rate_index, round_index)
    while round_index < config.max_rounds:
        rate = rates[rate_index] if config.extreme else config.rate
        if config.target_density is not None:
            if overall_density(mask) <= config.target_density + 1e-12:
                break
            rate = min(rate, 1 - config.target_density / overall_density(mask))
        elif not config.extreme and round_index >= config.rounds:
            break
        round_index += 1
        candidate = _prune(dict(model.named_parameters()), mask, rate, config.scope)
        model.load_state_dict(rewind)
        train(model, dataset.x_train, dataset.y_train, config=config.train, seed=seed * 1000 + round_index,
              mask=candidate, checkpoint=files.training(round_index) if files else None,
              progress=_epoch_reporter(report, round_index, planned, config.train.epochs))
        accuracy = evaluate(model, dataset.x_test, dataset.y_test)
        kept = not config.extreme or accuracy >= dense_accuracy - config.eps
        history.append({"round": round_index, "density": overall_density(candidate), "accuracy": accuracy,
                        "rate": rate, "kept": kept})
        report(min(0.99, (round_index + 1) / (planned + 1)),
               f"round {round_index}: {overall_density(candidate):.2%} kept, accuracy {accuracy:.4f}")
        if kept:
            mask, best_state = candidate, copy.deepcopy(model.state_dict())
            if on_round is not None:
                on_round(round_index, mask, best_state)
        else:
            model.load_state_dict(best_state)  # undo: prune the last good ticket with a smaller rate
            rate_index += 1
        if files:
            files.save_search(rewind, mask, best_state, history, rate_index, round_index)
        if rate_index >= len(rates):
            break
    if files:
        files.clear()
    final = [row for row in history if row["kept"]][-1]
    return Ticket(arch=arch, dataset=dataset.name, seed=seed,
                  state={k: v.detach().clone() for k, v in best_state.items()},
                  rewind={k: v.detach().clone() for k, v in rewind.items()}, mask=mask,
                  accuracy=final["accuracy"], dense_accuracy=dense_accuracy, rounds=history,
                  method="imp", hyperparameters=asdict(config))


class _CheckpointFiles:
    """Where a resumable search keeps its state: the search (per round), training (per epoch), rewind.

    Training checkpoints are named by round, so one left behind by a crash between saving the
    search and removing it can never be mistaken for the next round's."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.search, self.rewind = root, root / "imp.pt", root / "rewind.pt"

    def training(self, round_index: int) -> Path:
        return self.root / f"train-{round_index}.pt"

    def load_search(self) -> dict | None:
        if not self.search.exists():
            return None
        return torch.load(self.search, map_location="cpu", weights_only=True)

    def save_search(self, rewind, mask, best_state, history, rate_index: int, round_index: int) -> None:
        _atomic_save({"rewind": rewind, "mask": mask, "best_state": best_state, "history": history,
                      "rate_index": rate_index, "round_index": round_index}, self.search)
        self.training(round_index).unlink(missing_ok=True)

    def clear(self) -> None:
        for path in (self.search, self.rewind, *self.root.glob("train-*.pt"), *self.root.glob("*.tmp")):
            path.unlink(missing_ok=True)


def _atomic_save(value, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(value, tmp)
    os.replace(tmp, path)


def _epoch_reporter(report: Progress, round_index: int, planned: int, epochs: int) -> Callable[[int, float], None]:
    """Training progress inside round `round_index` of `planned` (round 0 trains the dense network)."""

    def on_epoch(epoch: int, loss: float) -> None:
        fraction = (round_index + (epoch + 1) / max(1, epochs)) / (planned + 1)
        report(min(0.99, fraction), f"round {round_index}: epoch {epoch + 1}/{epochs}, loss {loss:.4f}")

    return on_epoch


def _train_dense(model, dataset: Dataset, config: ImpConfig, seed: int, files: _CheckpointFiles | None,
                 report: Progress, planned: int) -> dict[str, torch.Tensor] | None:
    """Train the dense network; returns the weights after `rewind_iteration` steps (LTR), if asked."""
    if not config.rewind_iteration:
        train(model, dataset.x_train, dataset.y_train, config=config.train, seed=seed * 1000,
              checkpoint=files.training(0) if files else None, progress=_epoch_reporter(report, 0, planned,
                                                                                       config.train.epochs))
        return None
    captured: dict[str, torch.Tensor] = {}
    if files and files.rewind.exists():
        captured.update(torch.load(files.rewind, map_location="cpu", weights_only=True))

    def capture(step: int) -> None:
        if step == config.rewind_iteration and not captured:
            captured.update(copy.deepcopy(model.state_dict()))
            if files:
                _atomic_save(captured, files.rewind)

    train(model, dataset.x_train, dataset.y_train, config=config.train, seed=seed * 1000, on_step=capture,
          checkpoint=files.training(0) if files else None,
          progress=_epoch_reporter(report, 0, planned, config.train.epochs))
    if not captured:
        raise ValueError(f"rewind_iteration {config.rewind_iteration} is past the end of training")
    return captured


def _planned_rounds(config: ImpConfig) -> int:
    if config.extreme:
        return config.max_rounds
    if config.target_density is not None:
        import math

        return min(config.max_rounds, max(1, math.ceil(math.log(config.target_density) /
                                                        math.log(1 - config.rate))))
    return config.rounds


def _with_overrides(config: ImpConfig, overrides: dict) -> ImpConfig:
    """Apply keyword overrides: ImpConfig fields directly, TrainConfig fields (epochs, lr, ...) to train."""
    imp_fields = set(ImpConfig.__dataclass_fields__) - {"train"}
    train_fields = set(TrainConfig.__dataclass_fields__)
    unknown = set(overrides) - imp_fields - train_fields
    if unknown:
        raise TypeError(f"unknown IMP settings: {', '.join(sorted(unknown))}")
    values = asdict(config)
    values["train"] = {**values["train"], **{k: v for k, v in overrides.items() if k in train_fields}}
    values.update({k: v for k, v in overrides.items() if k in imp_fields})
    return ImpConfig(**values)
