"""Issue 14, finding 6: p-values no lower than their tests support. The tail bounds that let a p go
below a permutation null's resolution are checked against exact tails (every permutation
enumerated); the null relabels units consistently across layers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from verifier.aligned import KURTOSIS_CAP, calibrated_p
from verifier.consistent_null import NullLayers
from verifier.tail_bounds import TermBound, cantelli_tail, hoeffding_tail, kurtosis_tail, union_tail
from verifier.topology import compare_topology


def _exact_hoeffding(matrix: np.ndarray) -> np.ndarray:
    """X = sum_i matrix[i, pi(i)] for every permutation pi."""
    n = matrix.shape[0]
    perms = np.array(list(itertools.permutations(range(n))))
    return matrix[np.arange(n), perms].sum(axis=1)


def _tail(values: np.ndarray, threshold: float) -> float:
    return float((values >= threshold - 1e-9).mean())


@pytest.mark.parametrize("seed", range(6))
def test_the_hoeffding_bound_is_never_below_the_exact_tail(seed):
    rng = np.random.default_rng(seed)
    matrix = (rng.random((8, 8)) < 0.05 * (1 + seed % 3)).astype(float)
    if seed % 2:
        matrix = np.maximum(matrix, np.eye(8))  # a planted copy: the identity permutation is far out
    if seed >= 4:
        matrix *= 3  # entries in [0, 3]: scaled
    values = _exact_hoeffding(matrix)
    mean, scale = matrix.sum() / 8, matrix.max()
    assert values.mean() == pytest.approx(mean)
    informative = 0
    for threshold in np.unique(values):
        bound = hoeffding_tail(threshold - mean, mean, scale)
        assert bound >= _tail(values, threshold)
        informative += bound < 0.5
    assert informative or seed % 2 == 0


def test_the_union_bound_over_layers_is_never_below_the_exact_tail_of_the_sum():
    rng = np.random.default_rng(7)
    a = np.maximum(rng.random((8, 8)) < 0.05, np.eye(8)).astype(float)
    b = np.maximum(rng.random((7, 7)) < 0.05, np.eye(7)).astype(float)
    xa, xb = _exact_hoeffding(a), _exact_hoeffding(b)
    values_a, counts_a = np.unique(xa, return_counts=True)
    values_b, counts_b = np.unique(xb, return_counts=True)
    sums = (values_a[:, None] + values_b[None, :]).ravel()  # independent groups: every pair of permutations
    weights = (counts_a[:, None] * counts_b[None, :]).ravel() / (len(xa) * len(xb))
    terms = [TermBound(float(xa.max()), ((a.sum() / 8, a.max()),)),
             TermBound(float(xb.max()), ((b.sum() / 7, b.max()),))]
    checked = 0
    for threshold in np.unique(sums):
        bound = union_tail(terms, threshold)
        assert bound >= float(weights[sums >= threshold].sum())
        checked += bound < 1
    assert checked  # the bound says something somewhere


def _relabelled(suspect: np.ndarray, rows: tuple[int, ...], cols: tuple[int, ...]) -> np.ndarray:
    return suspect[list(rows)][:, list(cols)]


@pytest.mark.parametrize("seed", range(3))
def test_a_layer_whose_rows_and_columns_both_move_is_bounded_exactly_too(seed):
    """fc2-like: rows one group, columns another. Every (row, column) relabelling enumerated."""
    rng = np.random.default_rng(seed)
    ticket = rng.random((5, 5, 2)) < 0.5
    suspect = ticket.copy() if seed else rng.random((5, 5, 2)) < 0.5
    suspect[0, 0] ^= True
    layers = NullLayers({"w": torch.from_numpy(ticket)}, {"w": torch.from_numpy(suspect).float()}, {"w": (0, 1)})
    perms = list(itertools.permutations(range(5)))
    values = np.array([(ticket & _relabelled(suspect, r, c)).sum() for r in perms for c in perms])
    assert layers.expected() == pytest.approx(values.mean())
    terms = layers.bound_terms()
    for threshold in np.unique(values):
        assert union_tail(terms, threshold) >= _tail(values, threshold)


def test_the_null_relabels_a_unit_in_every_layer_that_indexes_it():
    """fc1's rows and fc2's columns are the same hidden units: one permutation moves both. With fc2
    the transpose of fc1, each draw's overlap is exactly twice fc1's, so the null's spread is twice
    fc1's alone; relabelling the two layers independently gives only sqrt(2) times (the old null,
    whose narrower spread overstated z)."""
    rng = np.random.default_rng(3)
    fc1 = torch.from_numpy(rng.random((40, 30)) < 0.3)
    ticket = {"fc1.weight": fc1, "fc2.weight": fc1.T.contiguous()}
    other = torch.from_numpy(rng.random((40, 30)) < 0.3)
    suspect = {"fc1.weight": other.float(), "fc2.weight": other.T.contiguous().float()}
    groups = {"fc1.weight": (0, None), "fc2.weight": (None, 0)}
    draws = NullLayers(ticket, suspect, groups).draw(4000, np.random.default_rng(0))
    alone = NullLayers({"fc1.weight": fc1}, {"fc1.weight": other.float()}, groups).draw(4000, np.random.default_rng(1))
    assert draws.std() / alone.std() == pytest.approx(2.0, rel=0.08)
    assert np.all(draws % 2 == 0)  # both layers moved by the same permutation, every time


def test_a_topology_p_goes_below_the_permutations_only_through_the_bound():
    rng = np.random.default_rng(5)
    ticket = {"fc1.weight": torch.from_numpy(rng.random((120, 64)) < 0.2),
              "fc2.weight": torch.from_numpy(rng.random((40, 120)) < 0.2)}
    groups = {"fc1.weight": (0, None), "fc2.weight": (1, 0)}
    partly = {name: torch.where(torch.from_numpy(rng.random(tuple(keep.shape)) < 0.08), keep,
                                torch.from_numpy(rng.random(tuple(keep.shape)) < 0.2)).float()
              for name, keep in ticket.items()}
    related = compare_topology(ticket, partly, groups=groups, permutations=99)
    assert related.z > 4 and related.p_bound > 0.01  # remarkable, but past what the bound can show
    assert related.p_value == pytest.approx(2 / 100)  # twice the permutation floor, never a normal tail
    copy = compare_topology(ticket, {name: keep.float() for name, keep in ticket.items()}, groups=groups,
                            permutations=99)
    assert copy.p_value == pytest.approx(2 * copy.p_bound) and copy.p_value < 1e-3


@pytest.mark.parametrize("draw", [
    lambda rng, n: rng.normal(0, 1, n), lambda rng, n: rng.standard_t(3, n) / np.sqrt(3),
    lambda rng, n: rng.exponential(1, n) - 1, lambda rng, n: np.where(rng.random(n) < 0.01, 9.95, -0.1005)])
def test_the_moment_bounds_are_never_below_the_true_tail(draw):
    rng = np.random.default_rng(0)
    values = draw(rng, 400_000)
    mean, std = float(values.mean()), float(values.std())
    kurtosis = float(((values - mean) ** 4).mean() / std ** 4)
    for threshold in np.linspace(mean, mean + 12 * std, 49):
        assert cantelli_tail(threshold, mean, std) >= _tail(values, threshold) - 1e-3
        assert kurtosis_tail(threshold, mean, std, kurtosis) >= _tail(values, threshold) - 1e-3


def test_the_aligned_p_is_a_stated_moment_bound_not_an_extrapolated_normal_tail():
    references = [0.28, 0.285, 0.276, 0.281, 0.279, 0.283, 0.274, 0.282, 0.278, 0.284]
    result = calibrated_p(1.0, references)  # a copy, ~200 reference sds out
    assert result.p_empirical == pytest.approx(1 / 11)
    assert 1e-9 < result.p_value < 1e-5  # a fitted normal's predictive tail claimed ~1e-27 here
    mean = float(np.mean(references))
    assert result.p_value == pytest.approx(min(cantelli_tail(1.0, mean, result.spread_bound),
                                               kurtosis_tail(1.0, mean, result.spread_bound, KURTOSIS_CAP)))
    assert "cantelli" in result.bound and f"kurtosis at most {KURTOSIS_CAP:g}" in result.bound
