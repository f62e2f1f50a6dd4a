"""Per-unit rescaling and BatchNorm folding (issue 14, finding 2): the edits preserve the function, and
every white-box comparison (alignment, aligned overlap, the 1:N summary) sees through them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verifier.align import align_layer
from verifier.aligned import aligned_overlap
from verifier.attacks import fold_batchnorm, reparametrise, reparametrise_checked, rescale_units
from verifier.balance import balance
from verifier.masks import magnitude_mask, mask_from_weights
from verifier.models import build_model, permutable_axes, prunable_parameters
from verifier.summaries import spectral_summary, summary_distances

ARCHS = ("lenet300_100", "conv4", "resnet20")


def _ticket(arch: str, seed: int) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A magnitude-pruned random network whose BatchNorms have non-trivial statistics."""
    torch.manual_seed(seed)
    model = build_model(arch, (1, 8, 8), 10)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 2)
            module.bias.data.uniform_(-1, 1)
    names = prunable_parameters(arch, model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    mask = magnitude_mask(state, dict.fromkeys(names, 0.2))
    return {k: v * mask[k] if k in mask else v for k, v in state.items()}, names


@pytest.mark.parametrize("arch", ARCHS)
def test_rescaling_and_folding_keep_the_outputs_and_change_every_hidden_weight(arch):
    state, names = _ticket(arch, 0)
    edited = reparametrise_checked(arch, state, (1, 8, 8), 10, seed=3)  # raises if the outputs moved
    for name in names:
        kept = state[name] != 0
        ratio = (edited[name][edited[name] != 0].abs().sort().values / state[name][kept].abs().sort().values)
        assert ratio.max() / ratio.min() > 10, name  # factors up to 100 either way, not a global scale


def test_folding_moves_the_batchnorm_into_the_conv():
    state, _ = _ticket("resnet20", 0)
    folded = fold_batchnorm(state)
    assert torch.equal(folded["bn1.weight"], torch.ones_like(state["bn1.weight"]))
    assert not torch.allclose(folded["conv1.weight"], state["conv1.weight"])
    reparametrise_checked("resnet20", state, (1, 8, 8), 10, seed=0, spread=1.0)  # folding alone preserves


def test_rescale_units_rejects_a_spread_below_one_and_unknown_architectures():
    state, _ = _ticket("lenet300_100", 0)
    with pytest.raises(ValueError):
        rescale_units("lenet300_100", state, 0, spread=0.5)
    with pytest.raises(ValueError):
        rescale_units("vgg16", state, 0)


def test_balance_is_exactly_invariant_to_row_and_column_scaling_and_equivariant_to_permutations():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(40, 30, 9)) * (rng.random((40, 30, 1)) < 0.05)  # sparse, some rows and columns empty
    rows, cols = rng.permutation(40), rng.permutation(30)
    scaled = w * np.exp(rng.uniform(-5, 5, 40))[:, None, None] * np.exp(rng.uniform(-5, 5, 30))[None, :, None]
    np.testing.assert_allclose(balance(scaled), balance(w), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(balance(w[rows][:, cols]), balance(w)[rows][:, cols], rtol=1e-8, atol=1e-12)
    assert np.array_equal(balance(w) != 0, w.any(axis=2, keepdims=True) & (w != 0))


def test_alignment_recovers_a_permutation_under_per_unit_rescaling():
    state, _ = _ticket("lenet300_100", 0)
    weight = state["fc2.weight"]
    rows, cols = torch.randperm(weight.shape[0]), torch.randperm(weight.shape[1])
    factors = torch.exp(torch.empty(weight.shape[0], 1).uniform_(-4.6, 4.6))  # [1/100, 100]
    suspect = (weight * factors / torch.exp(torch.empty(1, weight.shape[1]).uniform_(-4.6, 4.6)))[rows][:, cols]
    alignment = align_layer(weight, suspect)
    assert torch.equal(alignment.apply(suspect != 0), weight != 0)
    assert alignment.quality == pytest.approx(1.0)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_reparametrised_copy_aligns_exactly_and_sits_on_its_ticket_in_the_summary(arch):
    ticket, names = _ticket(arch, 0)
    independent, _ = _ticket(arch, 1)
    copy = reparametrise(arch, ticket, seed=5)
    mask = mask_from_weights(ticket, names)
    permutable = {name: permutable_axes(arch, name) for name in names}
    assert aligned_overlap(ticket, mask, copy, mask_from_weights(copy, names), permutable).kappa == pytest.approx(1.0)
    assert aligned_overlap(ticket, mask, independent, mask_from_weights(independent, names), permutable).kappa < 0.5
    index = np.stack([spectral_summary(copy, names), spectral_summary(independent, names)])
    distances = summary_distances(spectral_summary(ticket, names), index, len(names))
    assert distances[0] < 1e-5 < 1e-3 < distances[1]
