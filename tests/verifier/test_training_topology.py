from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from verifier.attacks import fine_tune, prune_further
from verifier.data import load_dataset
from verifier.decision import bonferroni, verdict
from verifier.masks import magnitude_mask
from verifier.models import build_model
from verifier.tickets import find_imp_ticket
from verifier.topology import BOUND_SHARE, compare_topology
from verifier.training import train
from verifier.units import layer_groups

GROUPS = layer_groups("lenet300_100", build_model("lenet300_100", (1, 8, 8), 10).state_dict())


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def tickets(digits):
    return [find_imp_ticket("lenet300_100", digits, seed=seed, rounds=2, rate=0.5, epochs=5)
            for seed in (0, 1)]


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.1), ("adam", 0.01)])
def test_pruned_weights_never_grow_back(digits, optimizer, lr):
    torch.manual_seed(0)
    model = build_model("lenet300_100", digits.input_shape, digits.num_classes)
    weights = dict(model.named_parameters())
    mask = magnitude_mask(weights, {"fc1.weight": 0.1, "fc2.weight": 0.3, "fc3.weight": 0.5})
    train(model, digits.x_train, digits.y_train, epochs=2, lr=lr, optimizer=optimizer, mask=mask,
          momentum=0.9, weight_decay=5e-4)
    for name, keep in mask.items():
        assert bool((weights[name][~keep] == 0).all()), name
        assert bool((weights[name][keep] != 0).all()), name


def test_training_is_deterministic_for_a_seed(digits):
    states = []
    for _ in range(2):
        torch.manual_seed(3)
        model = build_model("lenet300_100", digits.input_shape, digits.num_classes)
        train(model, digits.x_train, digits.y_train, epochs=1, seed=5)
        states.append(model.state_dict())
    assert all(states[0][k].equal(states[1][k]) for k in states[0])


def test_imp_ticket_has_the_requested_density_and_learns(tickets):
    ticket = tickets[0]
    assert [round(r["density"], 4) for r in ticket.rounds] == [1.0, 0.5, 0.25]
    assert ticket.accuracy > 0.85
    for name, keep in ticket.mask.items():
        assert bool((ticket.state[name][~keep] == 0).all())


def test_stolen_copy_matches_and_independent_ticket_does_not(digits, tickets):
    ticket, independent = tickets
    thief = build_model("lenet300_100", digits.input_shape, digits.num_classes)
    thief.load_state_dict(ticket.state)
    mask = copy.deepcopy(ticket.mask)
    fine_tune(thief, mask, digits.x_train, digits.y_train, epochs=2, seed=9)
    prune_further(thief, mask, 0.10)
    stolen = compare_topology(ticket.mask, thief.state_dict(), groups=GROUPS, permutations=999)
    assert verdict(stolen.p_value) == "match" and stolen.p_permutation >= 1 / 1000 and stolen.z > 10
    assert stolen.p_value == stolen.p_bound / BOUND_SHARE < 1e-4  # past the permutations: the tail bound
    other = compare_topology(ticket.mask, independent.state, groups=GROUPS, permutations=999)
    assert verdict(other.p_value) == "no_match"
    assert stolen.jaccard > 0.85 > 0.4 > other.jaccard


def test_dense_suspect_is_estimated_at_ticket_densities(digits, tickets):
    ticket = tickets[0]
    thief = build_model("lenet300_100", digits.input_shape, digits.num_classes)
    thief.load_state_dict(ticket.state)
    train(thief, digits.x_train, digits.y_train, epochs=1, lr=0.01, seed=4)  # no mask: every weight moves
    result = compare_topology(ticket.mask, thief.state_dict(), groups=GROUPS, permutations=999)
    assert result.estimated_layers == list(ticket.mask) and verdict(result.p_value) == "match"
    for layer in result.layers:
        assert layer.suspect_density == pytest.approx(layer.ticket_density, abs=1e-3)


def test_null_keeps_shared_structure_a_uniform_null_would_flag():
    """Independent masks that share dead inputs: a uniform null calls them related, ours does not."""
    rng = np.random.default_rng(0)
    live_columns = rng.random(64) < 0.5
    p_values, permutation_p = [], []
    for seed in range(20):
        draw = np.random.default_rng(seed + 1)
        ticket = torch.from_numpy((draw.random((100, 64)) < 0.3) & live_columns)
        suspect = torch.from_numpy((draw.random((100, 64)) < 0.3) & live_columns)
        result = compare_topology({"w": ticket}, {"w": suspect.float()}, groups={"w": (0, None)},
                                  permutations=499, seed=seed)
        expected_uniform = float(ticket.sum() * suspect.sum()) / ticket.numel()
        assert result.observed_overlap > 1.5 * expected_uniform  # what a uniform null would flag
        p_values.append(result.p_value)
        permutation_p.append(result.p_permutation)
    assert sum(p <= 1e-3 for p in p_values) == 0
    assert 0.25 < float(np.mean(permutation_p)) < 0.75  # uniform: mean 1/2; the decision p is twice it


def test_verdict_thresholds_and_bonferroni():
    assert verdict(1e-3) == "match" and verdict(5e-3) == "inconclusive" and verdict(0.5) == "no_match"
    assert bonferroni(1e-4, 20) == pytest.approx(2e-3) and bonferroni(0.2, 10) == 1.0
