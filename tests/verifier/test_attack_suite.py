"""The attack suite as one entry point: every attack runs on a tiny ticket and changes what it claims;
strengths are checked; the replacement attack writes the forged code with the kept count unchanged;
the forged-key attack retrains with keys of the genuine key's size; the checked permutation refuses
a permutation that changes the function."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from verifier.attacks.suite import ATTACKS, PRESETS, ThiefSetup, applicable, preset, run_attack
from verifier.errors import VerifierError
from verifier.masks import apply_mask, count_kept, magnitude_mask, mask_from_weights
from verifier.models import build_model, prunable_parameters
from verifier.signatures.qr import choose_placement, make_code, read_window

SHAPE, CLASSES = (1, 8, 8), 10


def _setup(arch: str = "lenet300_100", density: float = 0.3, seed: int = 0) -> ThiefSetup:
    torch.manual_seed(seed)
    model = build_model(arch, SHAPE, CLASSES)
    names = prunable_parameters(arch, model)
    mask = magnitude_mask(dict(model.named_parameters()), dict.fromkeys(names, density))
    apply_mask(model, mask)
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(96, *SHAPE, generator=generator)
    y = torch.randint(0, CLASSES, (96,), generator=generator)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return ThiefSetup(arch=arch, input_shape=SHAPE, num_classes=CLASSES, state=state, mask=mask, x=x, y=y,
                      seed=seed, transfer_x=x, transfer_y=y % 2, transfer_classes=2)


def _kept(state: dict[str, torch.Tensor], names) -> int:
    return sum(int((state[n] != 0).sum()) for n in names)


def test_presets_list_known_attacks_at_allowed_strengths():
    for name in PRESETS:
        rows = preset(name)
        assert rows and all(ATTACKS[a].check(s) == s for a, s in rows)
    assert {a for a, _ in preset("full")} == set(ATTACKS)
    with pytest.raises(VerifierError, match="unknown preset"):
        preset("everything")


@pytest.mark.parametrize(("name", "strength"), [("prune_magnitude", 1.0), ("prune_magnitude", -0.1),
                                                ("fine_tune", 2.5), ("fine_tune", 0), ("add_on", True),
                                                ("block_removal", 100)])
def test_strengths_outside_an_attacks_range_are_refused(name, strength):
    with pytest.raises(VerifierError, match=name):
        ATTACKS[name].check(strength)


def test_every_model_attack_runs_and_changes_what_it_claims():
    setup = _setup()
    names = list(setup.mask)
    kept = count_kept(setup.mask)
    setup = replace(setup, placement=choose_placement(setup.mask, make_code("owner's code")))
    for name, spec in ATTACKS.items():
        if name == "forged_key" or applicable(setup, name, locked=False) is not None:
            continue
        strength = spec.full[-1]
        attacked = run_attack(setup, name, strength)
        state = attacked.state
        if name in ("prune_magnitude", "prune_random"):
            assert abs(_kept(state, names) - round(kept * (1 - strength))) <= len(names), name
        elif name == "prune_layer":
            layer = attacked.note.removeprefix("layer ")
            before = int(setup.mask[layer].sum())
            assert _kept(state, [layer]) == before - round(strength * before)
            assert all(_kept(state, [n]) == int(setup.mask[n].sum()) for n in names if n != layer)
        elif name == "add_on":
            pruned = sum(int((~k).sum()) for k in setup.mask.values())
            assert abs(_kept(state, names) - kept - round(strength * pruned)) <= len(names)
        elif name in ("fine_tune", "replacement"):
            assert _kept(state, names) <= kept  # the mask held (a trained weight may land on 0 exactly)
            assert not all(torch.equal(state[k], setup.state[k]) for k in names)
        elif name == "dense_fine_tune":
            assert _kept(state, names) == kept  # re-pruned to the ticket's density
        elif name == "transfer":
            assert attacked.num_classes == 2 and state["fc3.weight"].shape[0] == 2
        elif name == "distillation":
            assert abs(_kept(state, names) - kept) <= len(names)  # the student's own mask, same densities
            same = sum(int(((state[n] != 0) & setup.mask[n]).sum()) for n in names)
            assert same < 0.5 * kept  # ... and not the ticket's
        elif name == "permutation":
            assert _kept(state, names) == round(kept * (1 - strength)) or strength == 0
        for key, value in state.items():  # nothing else about the model changed shape
            assert value.shape == setup.state[key].shape or (name == "transfer" and key.startswith("fc3"))


def test_the_replacement_attack_writes_the_forged_code_and_keeps_the_count():
    setup = _setup()
    owner = make_code("owner's code")
    setup = replace(setup, placement=choose_placement(setup.mask, owner))
    attacked = run_attack(setup, "replacement", 0)
    names = list(setup.mask)
    assert _kept(attacked.state, names) == count_kept(setup.mask)
    forged = make_code("stolen by someone else")
    window = read_window(mask_from_weights(attacked.state, names), forged, setup.placement)
    assert bool((window == ~forged.dark).all())  # light modules connected, dark removed, function patterns too
    assert not bool((read_window(setup.mask, forged, setup.placement) == ~forged.dark).all())


def test_block_removal_applies_to_residual_networks_only():
    lenet = _setup()
    assert "no residual block" in applicable(lenet, "block_removal", locked=False)
    resnet = _setup("resnet20", density=0.5)
    assert applicable(resnet, "block_removal", locked=False) is None
    attacked = run_attack(resnet, "block_removal", 2)
    removed = attacked.note.removeprefix("removed ").split(", ")
    assert len(removed) == 2
    for block in removed:
        assert float(attacked.state[f"{block}.bn2.weight"].abs().sum()) == 0.0


def test_what_a_ticket_lacks_makes_an_attack_inapplicable():
    setup = _setup()
    assert "no QR signature" in applicable(setup, "replacement", locked=False)
    assert "no key mask" in applicable(setup, "forged_key", locked=False)
    assert applicable(setup, "forged_key", locked=True) is None
    with pytest.raises(VerifierError):
        run_attack(setup, "forged_key", 1)


def test_the_checked_permutation_refuses_one_that_changes_the_function(monkeypatch):
    from verifier.attacks import permutation

    setup = _setup()

    def broken(arch, state, seed):  # permutes fc1's units without telling fc2
        out = dict(state)
        order = torch.randperm(out["fc1.weight"].shape[0], generator=torch.Generator().manual_seed(seed))
        out["fc1.weight"], out["fc1.bias"] = out["fc1.weight"][order], out["fc1.bias"][order]
        return out

    assert permutation.permute_checked("lenet300_100", setup.state, SHAPE, CLASSES, seed=1)
    monkeypatch.setattr(permutation, "permute_hidden_units", broken)
    with pytest.raises(VerifierError, match="changed the outputs"):
        permutation.permute_checked("lenet300_100", setup.state, SHAPE, CLASSES, seed=1)


def test_forged_keys_have_the_genuine_keys_size_and_are_retrained(monkeypatch):
    from verifier.attacks import forged_key, forged_key_accuracies
    from verifier.data import load_dataset
    from verifier.tickets import find_imp_ticket
    from verifier.training import TrainConfig

    data = load_dataset("digits")
    ticket = find_imp_ticket("lenet300_100", data, seed=0, rounds=1, rate=0.5, epochs=1)
    locked, key = {}, {}
    for name, keep in ticket.mask.items():  # the first fifth of each layer's kept weights is the key
        flat, kept = keep.flatten().clone(), torch.nonzero(keep.flatten()).flatten()
        key_flat = torch.zeros_like(flat)
        key_flat[kept[:len(kept) // 5]] = True
        flat[kept[:len(kept) // 5]] = False
        locked[name], key[name] = flat.view(keep.shape), key_flat.view(keep.shape)
    retrained = []
    real = forged_key.retrain_accuracy

    def recording(ticket_, dataset, mask, *, seed, config):
        retrained.append(mask)
        return real(ticket_, dataset, mask, seed=seed, config=config)

    monkeypatch.setattr(forged_key, "retrain_accuracy", recording)
    accuracies = forged_key_accuracies(ticket, data, locked, key, forgeries=2, seed=3, config=TrainConfig(epochs=1))
    assert len(accuracies) == 2 and all(0.0 <= a <= 1.0 for a in accuracies)
    for union in retrained:  # the published locked mask plus a forged key of exactly the key's size
        assert all(bool((locked[n] <= union[n]).all()) for n in locked)
        assert count_kept(union) - count_kept(locked) == count_kept(key)
    assert any(not torch.equal(retrained[0][n], retrained[1][n]) for n in locked)  # two different forgeries


def test_the_permutation_attack_moves_resnet_streams_too():
    setup = _setup("resnet20", density=0.5)
    state = run_attack(setup, "permutation", 0).state
    assert not torch.equal(state["conv1.weight"], setup.state["conv1.weight"])  # the stem writes the stream
    assert not torch.equal(state["layer1.0.conv1.weight"], setup.state["layer1.0.conv1.weight"])
