from __future__ import annotations

import pytest
import torch

from verifier.data import load_dataset
from verifier.masks import count_kept
from verifier.models import build_model, prunable_parameters
from verifier.tickets.cts import CtsConfig, find_cts_ticket
from verifier.tickets.layers import (
    LayerTicketConfig,
    combine_scores,
    find_layer_ticket,
    model_for_layer_ticket,
    removable_blocks,
    remove_blocks,
    removed_blocks,
    score_blocks,
)
from verifier.tickets.ticket import load_ticket, save_ticket
from verifier.training import TrainConfig, evaluate

RESNET20_REMOVABLE = ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models run fastest on one thread, and intra-op threads crawl on a loaded CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _assert_exact_and_zero(ticket, density: float) -> None:
    total = sum(keep.numel() for keep in ticket.mask.values())
    assert count_kept(ticket.mask) == round(density * total)
    for name, keep in ticket.mask.items():
        assert bool((ticket.state[name][~keep] == 0).all())


def test_cts_on_resnet20_meets_target_exactly_with_zeroed_weights_above_chance(digits):
    config = CtsConfig(target_density=0.1, steps=80, train=TrainConfig(epochs=2),
                       pretrain=TrainConfig(epochs=1))
    ticket = find_cts_ticket("resnet20", digits, seed=3, config=config)
    _assert_exact_and_zero(ticket, 0.1)
    assert set(ticket.mask) == set(prunable_parameters("resnet20", build_model("resnet20", (1, 8, 8), 10)))
    assert ticket.accuracy > 0.3  # chance is 0.1
    final = ticket.rounds[-1]
    assert final["accuracy"] == ticket.accuracy and "accuracy_at_init" in final


def test_cts_kl_meets_target_and_gradbalance_settles_at_the_target(digits):
    config = CtsConfig(target_density=0.1, objective="kl", steps=150, train=TrainConfig(epochs=2),
                       pretrain=TrainConfig(epochs=2))
    ticket = find_cts_ticket("lenet300_100", digits, seed=1, config=config)
    _assert_exact_and_zero(ticket, 0.1)
    assert ticket.dense_accuracy is not None and ticket.accuracy > 0.2
    trace = [row["expected_density"] for row in ticket.rounds if "expected_density" in row]
    assert trace[0] > 0.85  # sigmoid(3) = 0.95 at the start
    reached = next(i for i, d in enumerate(trace) if d <= 0.12)
    assert all(a > b for a, b in zip(trace[:reached], trace[1:reached + 1], strict=False))  # pulled down
    assert all(0.05 < d < 0.15 for d in trace[reached:])  # and held near the target, not collapsed


def test_layer_ticket_removes_the_lowest_scored_blocks_and_runs(digits, tmp_path):
    ticket = find_layer_ticket("resnet20", digits, seed=0, blocks_removed=2, score_batches=2, epochs=1)
    assert ticket.method == "layers" and ticket.dense_accuracy is None
    removed = removed_blocks(ticket)
    scores = next(row["scores"] for row in ticket.rounds if row.get("phase") == "score")
    assert sorted(scores) == sorted(RESNET20_REMOVABLE)
    assert len(removed) == 2 and set(removed) == set(sorted(scores, key=lambda b: scores[b]["combined"])[:2])
    for block in removed:
        assert not any(key.startswith(block + ".") for key in list(ticket.state) + list(ticket.rewind))
    kept = [b for b in RESNET20_REMOVABLE if b not in removed]
    assert all(any(key.startswith(b + ".") for key in ticket.state) for b in kept)
    assert all(bool(keep.all()) for keep in ticket.mask.values())
    assert not any(name.startswith(tuple(b + "." for b in removed)) for name in ticket.mask)
    path = tmp_path / "layers.safetensors"
    save_ticket(ticket, path)
    model = model_for_layer_ticket(load_ticket(path), digits.input_shape, digits.num_classes)
    assert evaluate(model, digits.x_test, digits.y_test) == pytest.approx(ticket.accuracy)
    assert model(digits.x_test[:5]).shape == (5, 10)
    assert ticket.accuracy > 0.2


def test_block_scores_rank_by_the_chosen_criterion(digits):
    torch.manual_seed(0)
    model = build_model("resnet20", digits.input_shape, digits.num_classes)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    raw = score_blocks(model, removable_blocks(model), digits.x_train, digits.y_train, batch_size=64)
    assert all(v.equal(model.state_dict()[k]) for k, v in before.items())  # scored on a copy
    assert all(raw[b]["snip"] > 0 for b in raw)
    for criterion in ("snip", "grasp"):
        combined = combine_scores(raw, criterion)
        assert min(combined.values()) == 0.0 and max(combined.values()) == 1.0
        assert sorted(raw, key=combined.get) == sorted(raw, key=lambda b, c=criterion: raw[b][c])
    both = combine_scores(raw, "snip+grasp")
    assert all(both[b] == pytest.approx(combine_scores(raw, "snip")[b] + combine_scores(raw, "grasp")[b])
               for b in raw)


def test_remove_blocks_keeps_names_and_the_original(digits):
    torch.manual_seed(0)
    model = build_model("resnet20", digits.input_shape, digits.num_classes)
    assert removable_blocks(model) == RESNET20_REMOVABLE
    short = remove_blocks(model, ["layer2.1", "layer3.2"])
    keys = set(model.state_dict())
    gone = {k for k in keys if k.startswith(("layer2.1.", "layer3.2."))}
    assert gone and set(short.state_dict()) == keys - gone
    assert all(short.state_dict()[k].equal(v) for k, v in model.state_dict().items() if k not in gone)
    assert isinstance(model.layer2[1], torch.nn.Module) and not isinstance(model.layer2[1], torch.nn.Identity)
    assert short.eval()(digits.x_test[:3]).shape == (3, 10)
    with pytest.raises(ValueError, match="not a removable block"):
        remove_blocks(model, ["layer2.0"])  # has a downsample shortcut
    with pytest.raises(ValueError, match="twice"):
        remove_blocks(model, ["layer1.0", "layer1.0"])


def test_layer_ticket_rejects_impossible_settings(digits):
    with pytest.raises(ValueError, match="exceeds the 7 removable"):
        find_layer_ticket("resnet20", digits, seed=0, blocks_removed=8)
    with pytest.raises(ValueError, match="no removable"):
        find_layer_ticket("lenet300_100", digits, seed=0)
    with pytest.raises(ValueError, match="score"):
        LayerTicketConfig(score="taylor")
    with pytest.raises(TypeError, match="unknown"):
        find_layer_ticket("resnet20", digits, seed=0, blocks=1)
