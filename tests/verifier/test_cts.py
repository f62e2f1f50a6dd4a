from __future__ import annotations

import pytest

from verifier.data import load_dataset
from verifier.masks import count_kept
from verifier.tickets.cts import CtsConfig, find_cts_ticket, top_k_mask
from verifier.training import TrainConfig

FAST = {"steps": 120, "train": TrainConfig(epochs=3), "pretrain": TrainConfig(epochs=3)}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.mark.parametrize("objective", ["ce", "kl"])
def test_cts_meets_its_target_exactly_and_learns(digits, objective):
    ticket = find_cts_ticket("lenet300_100", digits, seed=0,
                             config=CtsConfig(target_density=0.07, objective=objective, **FAST))
    total = sum(keep.numel() for keep in ticket.mask.values())
    assert count_kept(ticket.mask) == round(0.07 * total)
    for name, keep in ticket.mask.items():
        assert bool((ticket.state[name][~keep] == 0).all())
    assert ticket.accuracy > 0.5 and ticket.method == "cts"
    assert (ticket.dense_accuracy is None) == (objective == "ce")
    steps = [row for row in ticket.rounds if "step" in row]
    assert steps[0]["expected_density"] > 0.5 > 0.15 > steps[-1]["expected_density"]  # GradBalance pulls down
    assert all(rewound.equal(ticket.rewind[name]) for name, rewound in ticket.rewind.items())


def test_top_k_is_global_and_exact():
    import torch

    logits = {"a": torch.tensor([[3.0, -1.0], [0.5, 0.5]]), "b": torch.tensor([2.0, 0.5, -3.0])}
    mask = top_k_mask(logits, 3 / 7)
    assert mask["a"].tolist() == [[True, False], [True, False]] and mask["b"].tolist() == [True, False, False]


def test_bad_cts_settings():
    with pytest.raises(ValueError, match="target_density"):
        CtsConfig(target_density=0)
    with pytest.raises(ValueError, match="objective"):
        CtsConfig(objective="mse")
