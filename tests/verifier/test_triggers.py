"""Keyed trigger sets: reproducible, key-dependent, out of distribution; embedding and the chance test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verifier.data import load_dataset
from verifier.masks import magnitude_mask
from verifier.models import build_model, prunable_parameters
from verifier.training import evaluate, train
from verifier.triggers import chance_p, embed_triggers, generate_triggers, mixed_training_set, trigger_matches


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32), (20,)])
def test_the_same_key_gives_the_same_set_and_another_key_another(shape):
    a, again, other = (generate_triggers(key, shape, 10, size=50) for key in (b"k1", b"k1", b"k2"))
    assert a.x.shape == (50, *shape) and a.x.dtype == torch.float32 and a.y.dtype == torch.int64
    assert torch.equal(a.x, again.x) and torch.equal(a.y, again.y)
    assert not torch.equal(a.x, other.x) and not torch.equal(a.y, other.y)
    assert float(a.x.min()) >= 0 and float(a.x.max()) <= 1
    assert len({tuple(x.flatten().tolist()) for x in a.x}) == 50  # no repeated inputs


def test_labels_are_uniform_over_the_classes():
    labels = np.concatenate([generate_triggers(bytes([k]), (1, 8, 8), 10).y.numpy() for k in range(20)])
    counts = np.bincount(labels, minlength=10)
    assert counts.min() > 140 and counts.max() < 260  # 2,000 draws, 200 expected per class


def test_triggers_are_not_digits():
    data = load_dataset("digits")
    triggers = generate_triggers(b"k", data.input_shape, data.num_classes, size=200)
    distance = torch.cdist(triggers.x.flatten(1), data.x_train.flatten(1)).min(dim=1).values
    typical = torch.cdist(data.x_test[:200].flatten(1), data.x_train.flatten(1)).min(dim=1).values
    assert float(distance.median()) > 2 * float(typical.median())


def test_mixing_gives_the_asked_share():
    x, y = torch.zeros(1000, 1, 8, 8), torch.zeros(1000, dtype=torch.long)
    triggers = generate_triggers(b"k", (1, 8, 8), 10)
    mixed_x, mixed_y = mixed_training_set(x, y, triggers, 0.25)
    assert len(mixed_x) == len(mixed_y) == 1300  # 3 copies of 100: 23 %, the nearest whole number of copies
    with pytest.raises(ValueError):
        mixed_training_set(x, y, triggers, 1.0)


def test_embedding_teaches_the_triggers_and_a_false_claim_on_guessed_triggers_fails():
    """An independent model whose owner fine-tuned it toward triggers of a guessed key learns those
    (mask fixed), yet answers the real keys' triggers at chance: without the key a claim cannot pass."""
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("lenet300_100", data.input_shape, data.num_classes)
    names = prunable_parameters("lenet300_100", model)
    train(model, data.x_train, data.y_train, epochs=3, lr=0.05)
    mask = magnitude_mask(dict(model.named_parameters()), dict.fromkeys(names, 0.3))
    guessed = generate_triggers(b"claimant-guess", data.input_shape, data.num_classes)
    before = trigger_matches(model, guessed)
    embed_triggers(model, mask, data.x_train, data.y_train, guessed, share=0.25, epochs=15, lr=0.1)
    after = trigger_matches(model, guessed)
    assert before < 25 and after >= 80, (before, after)
    assert evaluate(model, data.x_test, data.y_test) > 0.9
    assert all(int((dict(model.named_parameters())[n].detach()[~mask[n]] != 0).sum()) == 0 for n in names)
    assert chance_p(after, len(guessed), data.num_classes) < 1e-30
    real = [generate_triggers(b"ticket-key" + bytes([k]), data.input_shape, data.num_classes) for k in range(5)]
    matches = [trigger_matches(model, triggers) for triggers in real]  # the real tickets' sets: the key matters
    assert all(chance_p(m, len(t), data.num_classes) > 1e-3 for m, t in zip(matches, real, strict=True)), matches
    assert chance_p(sum(matches), sum(map(len, real)), data.num_classes) > 1e-3, matches  # no bias when pooled


def test_chance_p_is_the_binomial_tail():
    assert chance_p(10, 100, 10) == pytest.approx(0.5487, abs=1e-3)
    assert chance_p(0, 100, 10) == 1.0
    assert chance_p(100, 100, 10) == pytest.approx(1e-100, rel=1e-6)
