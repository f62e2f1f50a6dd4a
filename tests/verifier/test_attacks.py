"""A thief's moves: the permutation attack preserves the function exactly (to float tolerance); distillation
copies the answers into a sparse student."""

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


def test_distillation_copies_the_teachers_answers_into_a_sparse_student():
    from verifier.attacks import distill, fresh_sparse_student
    from verifier.data import load_dataset
    from verifier.masks import random_mask
    from verifier.training import evaluate, train

    data = load_dataset("digits")
    torch.manual_seed(0)
    teacher = build_model("lenet300_100", data.input_shape, data.num_classes)
    train(teacher, data.x_train, data.y_train, epochs=5, lr=0.05)
    shapes = {name: p.shape for name, p in teacher.named_parameters() if name.endswith("weight")}
    mask = random_mask(shapes, dict.fromkeys(shapes, 0.3), seed=1)
    student = fresh_sparse_student("lenet300_100", data.input_shape, data.num_classes, mask, seed=2)
    distill(teacher, student, mask, data.x_train, epochs=10)
    with torch.no_grad():
        agreement = float((teacher(data.x_test).argmax(1) == student(data.x_test).argmax(1)).float().mean())
    assert agreement > 0.85 and evaluate(student, data.x_test, data.y_test) > 0.85
    weights = dict(student.named_parameters())
    assert all(int((weights[n].detach()[~mask[n]] != 0).sum()) == 0 for n in mask)


def test_a_fresh_sparse_student_keeps_the_dense_initialisation_scale():
    from verifier.attacks import fresh_sparse_student
    from verifier.masks import random_mask

    dense = build_model("conv4", (1, 8, 8), 10)
    shapes = {"conv2.weight": dense.conv2.weight.shape, "fc1.weight": dense.fc1.weight.shape}
    mask = random_mask(shapes, {"conv2.weight": 0.04, "fc1.weight": 0.25}, seed=0)
    student = dict(fresh_sparse_student("conv4", (1, 8, 8), 10, mask, seed=1).named_parameters())
    for name, keep in mask.items():
        weight = student[name].detach()
        assert int((weight[~keep] != 0).sum()) == 0
        kept_energy = float((weight[keep] ** 2).sum())  # the dense layer's expected energy, on far fewer weights
        dense_energy = float((dict(dense.named_parameters())[name].detach() ** 2).sum())
        assert kept_energy == pytest.approx(dense_energy, rel=0.25)


def _sparse_lenet(seed: int = 0, density: float = 0.3):
    from verifier.masks import magnitude_mask
    from verifier.models import prunable_parameters

    torch.manual_seed(seed)
    model = build_model("lenet300_100", (1, 8, 8), 10)
    names = prunable_parameters("lenet300_100", model)
    mask = magnitude_mask(dict(model.named_parameters()), dict.fromkeys(names, density))
    from verifier.masks import apply_mask

    apply_mask(model, mask)
    return model, mask


def _kept(mask) -> dict[str, int]:
    return {name: int(keep.sum()) for name, keep in mask.items()}


def _zeros_outside(model, mask) -> bool:
    params = dict(model.named_parameters())
    return all(int((params[n].detach()[~keep] != 0).sum()) == 0 for n, keep in mask.items())


def test_random_and_layer_pruning_remove_exactly_what_they_say():
    from verifier.attacks import prune_layer, random_prune

    model, mask = _sparse_lenet()
    before = _kept(mask)
    pruned = random_prune(model, mask, 0.2, seed=1)
    assert all(_kept(pruned)[n] == before[n] - round(0.2 * before[n]) for n in mask)
    assert all(bool((pruned[n] <= mask[n]).all()) for n in mask) and _zeros_outside(model, pruned)
    aimed = prune_layer(model, pruned, "fc2.weight", 0.5)
    counts = _kept(aimed)
    assert counts["fc2.weight"] == _kept(pruned)["fc2.weight"] - round(0.5 * _kept(pruned)["fc2.weight"])
    assert all(counts[n] == _kept(pruned)[n] for n in mask if n != "fc2.weight") and _zeros_outside(model, aimed)


def test_add_on_revives_exactly_the_asked_share_of_pruned_weights():
    from verifier.attacks import add_on

    model, mask = _sparse_lenet()
    grown = add_on(model, mask, 0.05, seed=2)
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        pruned = int((~keep).sum())
        assert int(grown[name].sum()) - int(keep.sum()) == round(0.05 * pruned)
        assert bool((keep <= grown[name]).all())
        assert int((params[name].detach()[grown[name] & ~keep] != 0).sum()) == round(0.05 * pruned)
    assert _zeros_outside(model, grown)


def test_dense_fine_tuning_then_re_pruning_returns_to_the_tickets_density():
    from verifier.attacks import dense_finetune_reprune
    from verifier.data import load_dataset

    data = load_dataset("digits")
    model, mask = _sparse_lenet()
    new_mask = dense_finetune_reprune(model, mask, data.x_train[:256], data.y_train[:256], epochs=1)
    assert sum(_kept(new_mask).values()) == sum(_kept(mask).values())
    assert _zeros_outside(model, new_mask)


def test_transfer_swaps_the_head_and_keeps_the_other_masks():
    from verifier.attacks import transfer

    model, mask = _sparse_lenet()
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 3, (64,))
    kept = transfer(model, mask, x, y, 3, epochs=1)
    assert model(x).shape == (64, 3) and "fc3.weight" not in kept
    assert _zeros_outside(model, kept)


def test_removing_a_residual_block_makes_it_pass_its_input_through():
    from verifier.attacks import removable_blocks, remove_block

    torch.manual_seed(0)
    model = build_model("resnet20", (1, 8, 8), 10).eval()
    blocks = removable_blocks(model)
    assert "layer1.0" in blocks and "layer2.0" not in blocks  # layer2.0 projects its shortcut
    remove_block(model, "layer1.1")
    x = torch.relu(torch.randn(2, 16, 8, 8))
    assert torch.allclose(model.get_submodule("layer1.1")(x), x)
    with pytest.raises(ValueError):
        remove_block(model, "layer2.0")


def test_a_distilled_student_keeps_the_requested_sparsity():
    from verifier.attacks import distill, fresh_sparse_student
    from verifier.masks import random_mask

    teacher, mask = _sparse_lenet()
    student_mask = random_mask({n: k.shape for n, k in mask.items()}, {n: 0.1 for n in mask}, seed=3)
    student = fresh_sparse_student("lenet300_100", (1, 8, 8), 10, student_mask, seed=4)
    distill(teacher, student, student_mask, torch.rand(128, 1, 8, 8), epochs=1)
    assert _kept(student_mask) == {n: round(0.1 * k.numel()) for n, k in mask.items()}
    assert _zeros_outside(student, student_mask)
