"""The permutation attack preserves the network's function exactly (to float tolerance)."""

from __future__ import annotations

import pytest
import torch

from verifier.attacks import permute_hidden_units
from verifier.models import build_model


@pytest.mark.parametrize("arch", ["lenet300_100", "conv4", "resnet20", "resnet50"])
def test_permuting_hidden_units_keeps_the_outputs(arch):
    torch.manual_seed(0)
    model = build_model(arch, (1, 8, 8), 10)
    with torch.no_grad():
        model.train()(torch.randn(32, 1, 8, 8))  # BatchNorm statistics that differ per channel
    model.eval()
    x = torch.randn(6, 1, 8, 8)
    permuted = permute_hidden_units(arch, model.state_dict(), seed=1)
    other = build_model(arch, (1, 8, 8), 10)
    other.load_state_dict(permuted)
    with torch.no_grad():
        assert torch.allclose(other.eval()(x), model(x), atol=1e-5)
    changed = [k for k in permuted if not torch.equal(permuted[k], model.state_dict()[k])]
    assert len(changed) > 4


def test_other_architectures_are_refused():
    with pytest.raises(ValueError, match="supports"):
        permute_hidden_units("vgg16", {}, seed=0)
