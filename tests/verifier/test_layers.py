from __future__ import annotations

import dataclasses

import pytest
import torch

from verifier.data import load_dataset
from verifier.models import build_model
from verifier.tickets.layers import LayerTicketConfig, find_layer_ticket, removable_blocks, remove_blocks
from verifier.training import TrainConfig


@pytest.fixture(scope="module")
def small_digits():
    data = load_dataset("digits")
    return dataclasses.replace(data, x_train=data.x_train[:256], y_train=data.y_train[:256],
                               x_test=data.x_test[:64], y_test=data.y_test[:64])


def test_removable_blocks_are_the_identity_shortcut_ones():
    model = build_model("resnet20", (1, 8, 8), 10)
    assert removable_blocks(model) == ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1",
                                       "layer3.2"]
    assert removable_blocks(build_model("lenet300_100", (1, 8, 8), 10)) == []


def test_layer_ticket_removes_the_lowest_blocks_and_exports_an_equivalent_full_model(small_digits):
    config = LayerTicketConfig(blocks_removed=2, train=TrainConfig(epochs=1, batch_size=64))
    ticket = find_layer_ticket("resnet20", small_digits, seed=0, config=config)
    removed = ticket.hyperparameters["removed_blocks"]
    scores = ticket.rounds[0]["scores"]
    assert len(removed) == 2 and sorted(scores, key=scores.get)[:2] == sorted(removed, key=scores.get)
    for name, keep in ticket.mask.items():
        in_removed = any(name.startswith(block + ".") for block in removed)
        assert bool(keep.any()) != in_removed, name
    short = remove_blocks(build_model("resnet20", (1, 8, 8), 10), removed)
    short.load_state_dict({k: v for k, v in ticket.state.items() if k in short.state_dict()})
    full = build_model("resnet20", (1, 8, 8), 10)
    full.load_state_dict(ticket.state)
    short.eval(), full.eval()
    with torch.no_grad():
        assert torch.allclose(short(small_digits.x_test), full(small_digits.x_test), atol=1e-5)


def test_too_many_blocks_or_no_blocks_is_refused(small_digits):
    with pytest.raises(ValueError, match="cannot remove 8"):
        find_layer_ticket("resnet20", small_digits, seed=0, config=LayerTicketConfig(blocks_removed=8))
    with pytest.raises(ValueError, match="no removable"):
        find_layer_ticket("lenet300_100", small_digits, seed=0)
    with pytest.raises(ValueError, match="not a removable block"):
        remove_blocks(build_model("resnet20", (1, 8, 8), 10), ["layer2.0"])
