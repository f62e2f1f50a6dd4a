"""Residual-stream permutation: exactly function-preserving, and neither the QR signature nor the aligned
topology test is fooled by it on top of the block-internal permutation."""

from __future__ import annotations

import pytest
import torch

from verifier.aligned import aligned_overlap
from verifier.attacks.permutation import permute_every_channel
from verifier.attacks.streams import permute_residual_streams
from verifier.masks import magnitude_mask, mask_from_weights
from verifier.models import build_model, permutable_axes, prunable_parameters


@pytest.mark.parametrize("arch", ["resnet20", "resnet18", "resnet50"])
def test_permuting_residual_streams_keeps_the_outputs(arch):
    torch.manual_seed(0)
    model = build_model(arch, (1, 8, 8), 10)
    with torch.no_grad():
        model.train()(torch.randn(32, 1, 8, 8))  # BatchNorm statistics that differ per channel
    model.eval()
    x = torch.randn(6, 1, 8, 8)
    state = model.state_dict()
    for permuted in (permute_residual_streams(arch, state, seed=1), permute_every_channel(arch, state, seed=1)):
        other = build_model(arch, (1, 8, 8), 10)
        other.load_state_dict(permuted)
        with torch.no_grad():
            assert torch.allclose(other.eval()(x), model(x), atol=1e-5)
    streams = permute_residual_streams(arch, state, seed=1)
    changed = {k for k in streams if not torch.equal(streams[k], state[k])}
    # every stream moved: the stem, each stage's first block (rows and shortcut), the head's columns
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "fc.weight"} <= changed
    assert {"layer2.0.downsample.0.weight", "layer2.1.conv1.weight", "layer3.0.downsample.1.running_var"} <= changed
    assert not any(".bn1." in k for k in changed if k.startswith("layer"))  # block-internal channels stay


def test_other_architectures_are_refused():
    with pytest.raises(ValueError, match="supports"):
        permute_residual_streams("conv4", build_model("conv4", (1, 8, 8), 10).state_dict(), seed=0)


def test_aligned_topology_sees_through_both_permutations():
    torch.manual_seed(0)
    model = build_model("resnet20", (1, 8, 8), 10)
    names = prunable_parameters("resnet20", model)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    mask = magnitude_mask(weights, dict.fromkeys(names, 0.2))
    ticket = {k: v * mask[k] if k in mask else v for k, v in weights.items()}
    suspect = permute_every_channel("resnet20", ticket, seed=3)
    suspect_mask = mask_from_weights(suspect, names)
    plain = sum(int((mask[n] & suspect_mask[n]).sum()) for n in names)
    assert plain < 0.5 * sum(int(m.sum()) for m in mask.values())  # unaligned, the copy is scrambled
    permutable = {name: permutable_axes("resnet20", name) for name in names}
    result = aligned_overlap(ticket, mask, suspect, suspect_mask, permutable)
    assert result.kappa == pytest.approx(1.0) and result.quality > 0.99  # an empty row counts 0 even unpermuted


def test_a_signed_resnet20_is_caught_through_both_permutations():
    from verifier.data import load_dataset
    from verifier.decision import verdict
    from verifier.signatures.qr import make_code, make_payload, whitening_key
    from verifier.signatures.signing import read_signature, sign_ticket
    from verifier.training import TrainConfig, train

    data = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("resnet20", data.input_shape, data.num_classes)
    rewind = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = prunable_parameters("resnet20", model)
    mask = magnitude_mask(rewind, dict.fromkeys(names, 0.2))
    train(model, data.x_train, data.y_train, epochs=2, lr=0.05, seed=0, mask=mask)  # a small sparse ticket
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    code = make_code(make_payload(b"test secret", "alice", "ticket-1"))
    key = whitening_key(b"test secret", "ticket-1")
    signed = sign_ticket("resnet20", data, weights, mask, rewind, code, key=key,
                         recovery=TrainConfig(epochs=1, lr=0.01))
    stolen = permute_every_channel("resnet20", signed.weights, seed=5)
    layer = signed.placement.layer
    assert not torch.equal(stolen[layer], signed.weights[layer])
    read = read_signature("resnet20", code, signed.placement, signed.weights, stolen,
                          mask_from_weights(stolen, names), key=key, permutations=999)
    assert read["p_value"] <= 1e-3 and verdict(read["p_value"]) == "match"
    assert read["module_test"]["agreement"] > 0.9 and not read["alignment"]["identity"]
    assert read["decoded"] == code.payload
    permutable = {name: permutable_axes("resnet20", name) for name in names}
    aligned = aligned_overlap(signed.weights, signed.mask, stolen, mask_from_weights(stolen, names), permutable)
    assert aligned.kappa == pytest.approx(1.0)
