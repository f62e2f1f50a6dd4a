"""The sequential permutation p-value: early stopping for unremarkable statistics, full draws otherwise."""

from __future__ import annotations

import numpy as np

from verifier.topology import STOP_AFTER, permutation_p, sequential_null


def _normal_draws(seed: int):
    rng = np.random.default_rng(seed)
    return lambda size: rng.standard_normal(size)


def test_stops_after_enough_exceedances_with_the_besag_clifford_p():
    null, p = sequential_null(lambda size: np.ones(size), observed=0.0, permutations=9999)
    assert len(null) == STOP_AFTER and p == 1.0


def test_a_remarkable_statistic_gets_every_draw_and_the_usual_p():
    null, p = sequential_null(_normal_draws(0), observed=10.0, permutations=9999)
    assert len(null) == 9999 and p == permutation_p(null, 10.0) == 1 / 10000


def test_valid_under_the_null_and_cheaper_than_drawing_everything():
    rng = np.random.default_rng(1)
    p_values, drawn = [], []
    for trial in range(2000):
        null, p = sequential_null(_normal_draws(100 + trial), observed=float(rng.standard_normal()), permutations=999)
        p_values.append(p)
        drawn.append(len(null))
    p_values = np.array(p_values)
    for alpha in (0.01, 0.05, 0.2):
        assert (p_values <= alpha).mean() <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / 2000), alpha
    assert np.mean(drawn) < 0.2 * 999
