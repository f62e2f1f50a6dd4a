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
