"""Channel alignment recovers function-preserving permutations, also after fine-tuning-like noise and
further pruning, and a permuted signed ticket is read back as signed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verifier.align import align_layer
from verifier.masks import magnitude_mask, mask_from_weights
from verifier.models import build_model, permutable_axes, prunable_parameters
from verifier.signatures.qr import choose_placement, decode_window, embed_code, make_code, module_test, read_window


def _sparse_weights(arch: str, seed: int, density: float = 0.2) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = build_model(arch, (1, 8, 8), 10).state_dict()
    names = prunable_parameters(arch, build_model(arch, (1, 8, 8), 10))
    mask = magnitude_mask({n: state[n] for n in names}, dict.fromkeys(names, density))
    return {n: state[n] * mask[n] for n in names}


def _permute(weight: torch.Tensor, seed: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    generator = torch.Generator().manual_seed(seed)
    rows, cols = torch.randperm(weight.shape[0], generator=generator), torch.randperm(weight.shape[1],
                                                                                      generator=generator)
    return weight[rows][:, cols], np.argsort(rows.numpy()), np.argsort(cols.numpy())


@pytest.mark.parametrize("arch,name", [("resnet20", "layer2.1.conv1.weight"), ("resnet20", "layer3.0.conv2.weight"),
                                       ("lenet300_100", "fc2.weight")])
def test_a_random_permutation_is_recovered_exactly(arch, name):
    weight = _sparse_weights(arch, 0)[name]
    permuted, rows, cols = _permute(weight, 1)
    alignment = align_layer(weight, permuted)
    assert np.array_equal(alignment.rows, rows) and np.array_equal(alignment.cols, cols)
    assert torch.equal(alignment.apply(permuted), weight) and alignment.quality == pytest.approx(1.0)
    assert align_layer(weight, weight).identity


def test_recovery_survives_noise_and_further_pruning_and_unrelated_layers_score_low():
    weight = _sparse_weights("resnet20", 0)["layer3.1.conv1.weight"]
    permuted, rows, cols = _permute(weight, 2)
    generator = torch.Generator().manual_seed(3)
    noisy = permuted + 0.3 * permuted.abs().mean() * torch.randn(permuted.shape, generator=generator) * (permuted != 0)
    noisy = noisy * (noisy.abs() > noisy.abs()[noisy != 0].quantile(0.2))  # 20 % more pruned
    alignment = align_layer(weight, noisy)
    assert np.array_equal(alignment.rows, rows) and np.array_equal(alignment.cols, cols)
    assert alignment.quality > 0.8
    unrelated = align_layer(weight, _sparse_weights("resnet20", 5)["layer3.1.conv1.weight"])
    assert unrelated.quality < 0.4


def test_fixed_axes_stay_fixed_and_shapes_must_agree():
    assert permutable_axes("lenet300_100", "fc1.weight") == (True, False)
    assert permutable_axes("lenet300_100", "fc3.weight") == (False, True)
    assert permutable_axes("resnet20", "layer1.0.conv1.weight") == (True, True)
    assert permutable_axes("conv4", "fc1.weight") == (True, False)  # columns of a flattened map
    weight = _sparse_weights("lenet300_100", 0)["fc1.weight"]
    rows = torch.randperm(weight.shape[0], generator=torch.Generator().manual_seed(4))
    alignment = align_layer(weight, weight[rows], align_cols=False)
    assert np.array_equal(alignment.cols, np.arange(weight.shape[1]))
    assert np.array_equal(alignment.rows, np.argsort(rows.numpy()))
    with pytest.raises(ValueError, match="shapes differ"):
        align_layer(weight, weight[:10])


def test_a_permuted_signed_ticket_reads_back_as_signed():
    torch.manual_seed(0)
    model = build_model("resnet20", (1, 8, 8), 10)
    rewind = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = prunable_parameters("resnet20", model)
    mask = magnitude_mask({n: rewind[n] for n in names}, dict.fromkeys(names, 0.2))
    state = {k: v * mask[k] if k in mask else v for k, v in rewind.items()}
    code = make_code("TG1:ALIGNMENTTESTPAYLOAD000")
    placement = choose_placement(mask, code)
    signed = embed_code(mask, state, rewind, code, placement)
    layer = signed.state[placement.layer]
    stolen, _, _ = _permute(layer, 7)
    stolen_mask = mask_from_weights({placement.layer: stolen}, [placement.layer])
    assert module_test(stolen_mask, code, placement, permutations=199).p_value > 0.01  # scrambled
    alignment = align_layer(layer, stolen)
    window = read_window(stolen_mask, code, placement, alignment)
    assert decode_window(window, code) == code.payload
    assert module_test(stolen_mask, code, placement, alignment=alignment, permutations=199).matched == 567


def test_an_unpermuted_copy_aligns_to_itself_when_a_dense_window_is_left_out():
    # The window is dense and the rest sparse (a code written into a sparse layer, then trained): the
    # row and column profiles see the suspect's window but not the ticket's, so a search started from
    # them alone settled on a wrong permutation of an unchanged copy (every one of these seeds).
    for seed in range(10):
        generator = torch.Generator().manual_seed(seed)
        keep = torch.rand(100, 100, generator=generator) < 0.03
        keep[:29, :29] = torch.rand(29, 29, generator=generator) < 0.5
        weight = torch.randn(100, 100, generator=generator) * keep
        assert align_layer(weight, weight.clone(), exclude=(slice(0, 29), slice(0, 29))).identity
