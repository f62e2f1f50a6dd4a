"""The forged key attack (the paper's fake1) against a locked ticket (scheme V1)."""

from __future__ import annotations

from verifier.data import Dataset
from verifier.keymask import random_key, retrain_accuracy
from verifier.masks import Mask, count_kept
from verifier.tickets.ticket import Ticket
from verifier.training import TrainConfig


def forged_key_accuracies(ticket: Ticket, dataset: Dataset, locked: Mask, key: Mask, *, forgeries: int,
                          seed: int, config: TrainConfig) -> list[float]:
    """Test accuracy of retraining from the rewind weights with the published locked mask plus each of
    `forgeries` random keys of the genuine key's size (seeds seed, seed+1, ...). A forger claims the
    locked ticket with its own key; the claim fails when no forged key regains what the genuine key
    does (compare with `retrain_accuracy` of locked | key under the same `config`)."""
    size = count_kept(key)
    accuracies = []
    for index in range(forgeries):
        forged = random_key(locked, size, seed + index)
        union = {name: locked[name].bool() | forged[name] for name in locked}
        accuracies.append(retrain_accuracy(ticket, dataset, union, seed=seed, config=config))
    return accuracies
