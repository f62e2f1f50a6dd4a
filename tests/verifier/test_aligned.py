"""The aligned topology statistic and its calibration against references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verifier.aligned import DensityOutsideReferences, aligned_overlap, calibrated_p, spread_order
from verifier.attacks import permute_hidden_units
from verifier.masks import magnitude_mask, mask_from_weights
from verifier.models import build_model, permutable_axes, prunable_parameters


def _ticket(arch: str, seed: int, density: float = 0.2) -> tuple[dict, dict]:
    torch.manual_seed(seed)
    model = build_model(arch, (1, 8, 8), 10)
    names = prunable_parameters(arch, model)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    mask = magnitude_mask(weights, dict.fromkeys(names, density))
    return {k: v * mask[k] if k in mask else v for k, v in weights.items()}, mask


def _kappa(arch: str, ticket: tuple[dict, dict], suspect: dict) -> float:
    weights, mask = ticket
    permutable = {name: permutable_axes(arch, name) for name in mask}
    return aligned_overlap(weights, mask, suspect, mask_from_weights(suspect, list(mask)), permutable).kappa


@pytest.mark.parametrize("arch", ["lenet300_100", "resnet20"])
def test_a_permuted_copy_aligns_back_to_full_overlap(arch):
    ticket = _ticket(arch, 0)
    permuted = permute_hidden_units(arch, ticket[0], seed=3)
    assert _kappa(arch, ticket, permuted) == pytest.approx(1.0)
    plain = sum(int((ticket[1][n] & mask_from_weights(permuted, [n])[n]).sum()) for n in ticket[1])
    assert plain < 0.5 * sum(int(m.sum()) for m in ticket[1].values())  # unaligned, the copy is scrambled


def test_an_independent_ticket_stays_far_from_a_copy():
    ticket = _ticket("lenet300_100", 0)
    independent = [_kappa("lenet300_100", ticket, _ticket("lenet300_100", seed)[0]) for seed in (1, 2, 3)]
    assert max(independent) < 0.5  # alignment finds some overlap by chance, far from a copy's 1


def test_rank_p_beside_the_bound_when_a_reference_reaches_the_statistic():
    result = calibrated_p(0.5, [0.1, 0.2, 0.6, 0.3])
    assert result.p_empirical == 2 / 5 and result.p_value > 0.5


def test_the_bound_reaches_past_the_references_without_a_normal_tail():
    refs = [0.27, 0.28, 0.275, 0.281, 0.269, 0.272, 0.278, 0.276, 0.274, 0.279]
    far, near = calibrated_p(1.0, refs), calibrated_p(0.285, refs)
    assert far.p_empirical == 1 / 11 and 1e-10 < far.p_value < 1e-5
    assert far.p_value < near.p_value and near.p_value > near.p_empirical  # Cantelli is loose in the body
    assert far.z > 50


def test_identical_references_give_only_the_rank_p():
    result = calibrated_p(1.0, [0.3] * 10)
    assert result.p_value == 1 / 11


def test_a_related_reference_can_only_raise_the_p():
    refs = [0.27, 0.28, 0.275, 0.281, 0.269, 0.272, 0.278, 0.276, 0.274, 0.279]
    clean, contaminated = calibrated_p(0.9, refs), calibrated_p(0.9, refs[:-1] + [0.95])
    assert contaminated.p_value > clean.p_value


def test_calibration_is_valid_under_the_null():
    rng = np.random.default_rng(0)
    p_values = np.array([calibrated_p(rng.normal(0.3, 0.01), rng.normal(0.3, 0.01, size=10)).p_value
                         for _ in range(4000)])
    for alpha in (0.01, 0.05, 0.2):
        assert (p_values <= alpha).mean() <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / 4000), alpha
    heavy = np.array([calibrated_p(rng.standard_t(2), rng.standard_t(2, size=20)).p_value for _ in range(4000)])
    for alpha in (0.01, 0.05, 0.2):  # tails heavier than any normal fit: still valid
        assert (heavy <= alpha).mean() <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / 4000), alpha


def test_calibration_needs_two_references():
    with pytest.raises(ValueError):
        calibrated_p(0.5, [0.1])


def _density_dependent_null(rng: np.random.Generator, densities: np.ndarray) -> np.ndarray:
    """An aligned statistic whose null mean falls with the suspect's density, and steeply below 10 %
    (on resnet20, CTS tickets at 10 % overlapped a 20 % CTS ticket more than any reference did)."""
    x = np.log2(densities)
    return 0.3 - 0.05 * x + 0.3 * np.maximum(0.0, np.log2(0.1) - x) + rng.normal(0, 0.01, size=len(densities))


def _references(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    densities = np.exp(rng.uniform(np.log(0.1), np.log(0.4), size=20))  # within a factor 2 of 0.2
    return densities, _density_dependent_null(rng, densities)


def test_within_the_references_densities_the_null_is_read_at_the_suspect_density():
    rng = np.random.default_rng(0)
    adjusted, ranks = [], []
    for _ in range(2000):
        densities, references = _references(rng)
        suspect = float(rng.choice([densities.min(), densities.max()]))  # at the references' extremes
        observed = float(_density_dependent_null(rng, np.array([suspect]))[0])
        result = calibrated_p(observed, references, densities=densities, suspect_density=suspect)
        assert result.density_adjusted and result.density_slope < 0
        adjusted.append(result.p_value)
        ranks.append(result.p_empirical)
    adjusted, ranks = np.array(adjusted), np.array(ranks)
    for alpha in (0.01, 0.05, 0.2):
        assert (adjusted <= alpha).mean() <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / 2000), alpha
    for alpha in (2 / 21, 4 / 21):  # the rank p, on residuals each scaled by its own sd, is about exact
        assert (ranks <= alpha).mean() <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / 2000), alpha


def test_a_suspect_beyond_the_references_densities_gets_no_p():
    rng = np.random.default_rng(2)
    plain = []
    for _ in range(300):
        densities, references = _references(rng)
        suspect = float(densities.min()) / 2
        observed = float(_density_dependent_null(rng, np.array([suspect]))[0])
        plain.append(calibrated_p(observed, references).p_value)
        with pytest.raises(DensityOutsideReferences, match="none within a factor"):
            calibrated_p(observed, references, densities=densities, suspect_density=suspect)
    assert (np.array(plain) <= 0.01).mean() > 0.5  # the references' pooled mean and sd would call it a match


def test_a_copy_stays_far_out_at_its_density():
    rng = np.random.default_rng(1)
    densities, references = _references(rng)
    result = calibrated_p(1.0, references, densities=densities, suspect_density=0.2)
    assert result.p_value < 1e-4 and result.reference_densities[0] < 0.2 < result.reference_densities[1]


def test_no_p_for_a_suspect_beyond_the_references_densities():
    densities = [0.18, 0.2, 0.22, 0.19, 0.21, 0.2]
    references = [0.3, 0.31, 0.29, 0.3, 0.32, 0.3]
    assert calibrated_p(0.3, references, densities=densities, suspect_density=0.23).references == 6  # within 1.1
    for suspect in (0.05, 0.3):
        with pytest.raises(DensityOutsideReferences, match="none within a factor"):
            calibrated_p(0.9, references, densities=densities, suspect_density=suspect)


def test_references_of_one_density_give_the_plain_calibration():
    references = [0.27, 0.28, 0.275, 0.281, 0.269, 0.272, 0.278, 0.276, 0.274, 0.279]
    at_one = calibrated_p(0.9, references, densities=[0.2] * 10, suspect_density=0.2)
    assert not at_one.density_adjusted and at_one.p_value == calibrated_p(0.9, references).p_value
    # densities a rounding apart: no slope fitted on them (it would be noise, and its error term would
    # swamp a copy's p at a density slightly off theirs)
    nearly = calibrated_p(0.9, references, densities=[0.2 + 1e-5 * i for i in range(10)], suspect_density=0.21)
    assert not nearly.density_adjusted and nearly.p_value == at_one.p_value


def test_references_exactly_on_a_line_give_only_the_rank_p():
    densities = np.array([0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4])
    references = 0.3 - 0.05 * np.log2(densities)  # no spread about the fit, up to rounding
    result = calibrated_p(0.3 - 0.05 * np.log2(0.2) + 0.001, references, densities=densities, suspect_density=0.2)
    assert result.p_value == result.p_empirical == 1 / 9 and result.spread_bound == 0.0


def test_references_are_taken_sparsest_and_densest_first_then_as_given():
    assert spread_order([0.2, 0.1, 0.3, 0.2]) == [1, 2, 0, 3] and spread_order([]) == []
