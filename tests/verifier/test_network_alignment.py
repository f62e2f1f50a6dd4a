"""Aligning every unit group through the layers that index it (`verifier.network_alignment`): exact on
permuted and rescaled copies of every architecture, with or without a layer left out."""

from __future__ import annotations

import pytest
import torch

from tests.verifier.test_reparametrisation import ARCHS, _ticket
from verifier.attacks import reparametrise_checked
from verifier.network_alignment import align_units, layer_alignment
from verifier.units import layer_groups


def _aligned_patterns_match(ticket: dict, copy: dict, groups: dict, perms: dict) -> list[str]:
    """The layers whose kept weights differ from the ticket's once the copy is aligned."""
    wrong = []
    for name, axes in groups.items():
        alignment = layer_alignment(perms, axes, tuple(ticket[name].shape))
        if not torch.equal(alignment.apply(copy[name]) != 0, ticket[name] != 0):
            wrong.append(name)
    return wrong


@pytest.mark.parametrize("arch", ARCHS)
def test_a_permuted_rescaled_copy_is_aligned_exactly_in_every_layer(arch):
    ticket, names = _ticket(arch, 1)
    copy = reparametrise_checked(arch, ticket, (1, 8, 8), 10, seed=4)  # every channel permuted, 1/100..100
    groups = layer_groups(arch, ticket)
    perms = align_units(ticket, copy, groups)
    assert _aligned_patterns_match(ticket, copy, groups, perms) == []
    if arch == "lenet300_100":
        return  # its fc3 at this 20 % keeps about 2 of 10 class weights per unit: too few to name fc2's rows
    without = next(name for name in names if all(axis is not None for axis in groups[name]))
    perms = align_units(ticket, copy, groups, exclude={without})  # its units named by the layers around it
    assert _aligned_patterns_match(ticket, copy, groups, perms) == []




def test_a_signature_is_read_through_the_layers_around_it_or_the_layers_own_alignment():
    """A permuted copy of a signed ticket reads its code at the floor; with the head replaced (another
    number of classes, so no other layer indexes fc2's rows) the layer's own alignment is used."""
    from verifier.data import load_dataset
    from verifier.signatures.qr import make_code
    from verifier.signatures.signing import read_signature, sign_ticket, signature_read_mask
    from verifier.training import TrainConfig

    ticket, names = _ticket("lenet300_100", 3)
    data = load_dataset("digits")
    code = make_code("tg:owner:ticket")
    mask = {name: ticket[name] != 0 for name in names}
    signed = sign_ticket("lenet300_100", data, ticket, mask, ticket, code, recovery=TrainConfig(epochs=0))
    copy = reparametrise_checked("lenet300_100", signed.weights, (1, 8, 8), 10, seed=2)
    read = read_signature("lenet300_100", code, signed.placement, signed.weights, copy,
                          signature_read_mask(signed.mask, copy), permutations=999)
    assert read["p_value"] == 1 / 1000, read["module_test"]
    headless = dict(copy, **{"fc3.weight": torch.randn(7, 100), "fc3.bias": torch.zeros(7)})
    read = read_signature("lenet300_100", code, signed.placement, signed.weights, headless,
                          signature_read_mask(signed.mask, headless), permutations=999)
    assert read["alignment"]["by"] == "layer"
