"""Permutation-invariant weight summaries: what the 1:N search index compares."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verifier.attacks import permute_hidden_units
from verifier.models import build_model, prunable_parameters
from verifier.summaries import RANK, spectral_summary, summary_distances, top_singular_values


@pytest.mark.parametrize("arch", ["lenet300_100", "resnet20"])
def test_summary_is_blind_to_channel_permutation_and_layer_scale(arch):
    torch.manual_seed(0)
    model = build_model(arch, (1, 8, 8), 10)
    names = prunable_parameters(arch, model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    summary = spectral_summary(state, names)
    assert summary.shape == (2 * len(names) * RANK,) and summary.dtype == np.float32
    permuted = permute_hidden_units(arch, state, seed=3)
    assert any(not permuted[n].equal(state[n]) for n in names)
    np.testing.assert_allclose(spectral_summary(permuted, names), summary, atol=1e-5)
    scaled = dict(state) | {names[0]: state[names[0]] * 7.0}
    np.testing.assert_allclose(spectral_summary(scaled, names), summary, atol=1e-5)
    torch.manual_seed(1)
    other = build_model(arch, (1, 8, 8), 10).state_dict()
    distances = summary_distances(summary, np.stack([summary, spectral_summary(other, names)]), len(names))
    assert distances[0] == pytest.approx(0.0, abs=1e-6) and distances[1] > 1e-3


def test_layers_smaller_than_the_rank_are_padded():
    weights = {"w": torch.randn(3, 5)}
    summary = spectral_summary(weights, ["w"])
    raw, balanced = summary[:RANK], summary[RANK:]  # the raw view, then the balanced one
    assert summary.shape == (2 * RANK,) and np.all(raw[3:] == 0) and np.all(balanced[3:] == 0)
    assert np.linalg.norm(raw) == pytest.approx(1.0) and np.linalg.norm(balanced) == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(64, 16, 3, 3), (300, 64), (10, 100), (7, 7)])
def test_top_singular_values_agree_with_a_full_svd(shape):
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    full = torch.linalg.svdvals(weight.double().reshape(shape[0], -1))[:RANK]
    np.testing.assert_allclose(top_singular_values(weight, RANK).numpy(), full.numpy(), rtol=1e-9)
