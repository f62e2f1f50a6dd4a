"""The shared-initialisation test (issue 14, finding 4): exact under independent initialisations, blind
to per-unit rescaling, and finds the seed a ticket started from."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom

from verifier.attacks.permutation import permute_hidden_units
from verifier.attacks.rescale import rescale_units
from verifier.data import load_dataset
from verifier.initialisation import (
    _log_upper_tail,
    find_known_seed,
    initial_signs,
    seeded_signs,
    sign_agreement,
)
from verifier.masks import mask_from_weights
from verifier.models import build_model, prunable_parameters
from verifier.tickets import find_imp_ticket

SPEC = ((1, 8, 8), 10)  # digits
PRIVATE_SEED = 20_261_207  # not among KNOWN_SEEDS


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def ticket(data):
    return find_imp_ticket("lenet300_100", data, seed=PRIVATE_SEED, rounds=2, rate=0.5, epochs=4)


def test_the_sign_test_is_exact_between_independent_initialisations():
    """The null: a suspect made without the initialisation sees its signs as fair coins, so p is
    uniform (here: sparse random suspects against 300 other seeds' initialisations)."""
    model = build_model("lenet300_100", *SPEC)
    names = prunable_parameters("lenet300_100", model)
    generator = torch.Generator().manual_seed(0)
    suspect = {name: p.detach() * (torch.rand(p.shape, generator=generator) < 0.2) for name, p in
               model.named_parameters() if name in names}
    keep = mask_from_weights(suspect, names)
    p = np.array([sign_agreement(seeded_signs("lenet300_100", SPEC, 1000 + i, names), suspect, keep).p_value
                  for i in range(300)])
    assert 0.02 <= np.mean(p <= 0.1) <= 0.18, np.mean(p <= 0.1)
    assert np.mean(p <= 0.01) <= 0.03 and 0.3 <= np.median(p) <= 0.7


def test_a_ticket_shares_its_initialisation_rescaled_too_but_not_once_permuted(ticket):
    names = list(ticket.mask)
    signs = seeded_signs("lenet300_100", SPEC, PRIVATE_SEED, names)
    assert all(torch.equal(signs[n], initial_signs(ticket.rewind, names)[n]) for n in names)  # the finder's init
    own = sign_agreement(signs, ticket.state, ticket.mask)
    assert own.shared and own.fraction > 0.8 and own.log10_p < -300
    rescaled = rescale_units("lenet300_100", ticket.state, seed=3)
    assert sign_agreement(signs, rescaled, ticket.mask) == own  # a positive factor keeps every sign
    permuted = permute_hidden_units("lenet300_100", ticket.state, seed=3)
    assert not sign_agreement(signs, permuted, mask_from_weights(permuted, names)).shared
    other = seeded_signs("lenet300_100", SPEC, PRIVATE_SEED + 1, names)
    assert not sign_agreement(other, ticket.state, ticket.mask).shared


def test_the_tail_is_scipys_where_finite_and_an_upper_bound_beyond():
    for k, n in ((520, 1000), (600, 1000), (5200, 10_000)):
        assert _log_upper_tail(k, n) == pytest.approx(float(binom.logsf(k - 1, n, 0.5)))
    big = _log_upper_tail(90_000, 100_000)  # scipy underflows here
    assert math.isfinite(big) and big < -20_000
    # the bound's form, checked where the exact tail is finite: never below the truth, and close
    for k, n in ((700, 1000), (800, 1000)):
        ratio = (n - k) / (k + 1)
        term = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)
        exact = float(binom.logsf(k - 1, n, 0.5))
        assert exact <= term - math.log1p(-ratio) <= exact + 1


def test_a_ticket_from_a_seed_anyone_would_try_is_recognised_and_a_private_one_is_not(data, ticket):
    public = find_imp_ticket("lenet300_100", data, seed=42, rounds=1, rate=0.5, epochs=3)
    found = find_known_seed("lenet300_100", SPEC, public.state, public.mask)
    assert found is not None and found.seed == 42 and found.agreement.shared
    assert find_known_seed("lenet300_100", SPEC, ticket.state, ticket.mask) is None
