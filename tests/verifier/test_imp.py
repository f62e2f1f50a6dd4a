from __future__ import annotations

import copy
import json

import pytest
import torch

from verifier.data import load_dataset
from verifier.masks import densities, overall_density
from verifier.models import build_model
from verifier.tickets import ImpConfig, find_imp_ticket, load_ticket, save_ticket
from verifier.tickets.controls import random_pruning_control, random_reinit_control
from verifier.training import TrainConfig, train

FAST = {"epochs": 2}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_rewind_to_iteration_k_restores_exactly_the_saved_weights(digits):
    ticket = find_imp_ticket("lenet300_100", digits, seed=4, rounds=1, rate=0.5, rewind_iteration=7, **FAST)
    torch.manual_seed(4)
    model = build_model("lenet300_100", digits.input_shape, digits.num_classes)
    seen = {}

    def capture(step: int) -> None:
        if step == 7:
            seen[step] = copy.deepcopy(model.state_dict())

    train(model, digits.x_train, digits.y_train, config=TrainConfig(**FAST), seed=4000, on_step=capture)
    assert all(ticket.rewind[k].equal(v) for k, v in seen[7].items())
    torch.manual_seed(4)
    init = build_model("lenet300_100", digits.input_shape, digits.num_classes).state_dict()
    assert not ticket.rewind["fc1.weight"].equal(init["fc1.weight"])
    original = find_imp_ticket("lenet300_100", digits, seed=4, rounds=1, rate=0.5, **FAST)
    assert all(original.rewind[k].equal(v) for k, v in init.items())


def test_target_density_is_met_exactly_and_layerwise_scope_prunes_each_layer(digits):
    ticket = find_imp_ticket("lenet300_100", digits, seed=0, target_density=0.3, rate=0.5, **FAST)
    assert overall_density(ticket.mask) == pytest.approx(0.3, abs=1e-4)
    assert [r["round"] for r in ticket.rounds] == [0, 1, 2]
    layerwise = find_imp_ticket("lenet300_100", digits, seed=0, rounds=2, rate=0.5, scope="layerwise", **FAST)
    assert all(d == pytest.approx(0.25, abs=1e-3) for d in densities(layerwise.mask).values())


def test_extreme_search_undoes_rounds_that_lose_accuracy(digits):
    strict = find_imp_ticket("lenet300_100", digits, seed=1, extreme=True, eps=-1.0,
                             backoff_rates=(0.5, 0.2), **FAST)
    assert overall_density(strict.mask) == 1.0  # nothing can be within -100 % of dense
    assert [r["kept"] for r in strict.rounds] == [True, False, False]
    assert [r["rate"] for r in strict.rounds[1:]] == [0.5, 0.2]
    lenient = find_imp_ticket("lenet300_100", digits, seed=1, extreme=True, eps=1.0,
                              backoff_rates=(0.5,), max_rounds=3, **FAST)
    assert overall_density(lenient.mask) == pytest.approx(0.125, abs=1e-4)
    assert lenient.accuracy == lenient.rounds[-1]["accuracy"]


def test_pruned_weights_stay_zero_and_ticket_round_trips(digits, tmp_path):
    ticket = find_imp_ticket("lenet300_100", digits, seed=2, rounds=2, rate=0.5, **FAST)
    for name, keep in ticket.mask.items():
        assert bool((ticket.state[name][~keep] == 0).all())
    save_ticket(ticket, tmp_path / "t.safetensors")
    loaded = load_ticket(tmp_path / "t.safetensors")
    assert loaded.metadata() == json.loads(json.dumps(ticket.metadata()))
    assert all(loaded.mask[n].equal(ticket.mask[n]) for n in ticket.mask)
    assert all(loaded.rewind[n].equal(ticket.rewind[n]) for n in ticket.rewind)
    assert loaded.hyperparameters["train"]["epochs"] == 2
    # the same ticket gives the same bytes every time (its SHA-256 is its identity in the store)
    for index in range(8):
        save_ticket(loaded, tmp_path / f"copy{index}.safetensors")
    assert {(tmp_path / f"copy{c}.safetensors").read_bytes() for c in range(8)} == {
        (tmp_path / "t.safetensors").read_bytes()}


def test_controls_keep_the_ticket_densities(digits):
    ticket = find_imp_ticket("lenet300_100", digits, seed=2, rounds=2, rate=0.5, **FAST)
    shuffled = random_pruning_control(ticket, digits, seed=5, config=TrainConfig(**FAST))
    assert densities(shuffled.mask) == pytest.approx(densities(ticket.mask), abs=1e-4)
    assert not shuffled.mask["fc1.weight"].equal(ticket.mask["fc1.weight"])
    reinit = random_reinit_control(ticket, digits, seed=5, config=TrainConfig(**FAST))
    assert all(reinit.mask[n].equal(ticket.mask[n]) for n in ticket.mask)
    assert not reinit.rewind["fc1.weight"].equal(ticket.rewind["fc1.weight"])


def test_killed_training_resumes_to_the_same_weights(digits, tmp_path):
    def fresh():
        torch.manual_seed(8)
        return build_model("lenet300_100", digits.input_shape, digits.num_classes)

    reference = fresh()
    train(reference, digits.x_train, digits.y_train, epochs=4, seed=3)

    class Killed(Exception):
        pass

    def die_after_two(epoch: int, _loss: float) -> None:
        if epoch == 1:
            raise Killed

    checkpoint = tmp_path / "ckpt.pt"
    with pytest.raises(Killed):
        train(fresh(), digits.x_train, digits.y_train, epochs=4, seed=3, checkpoint=checkpoint,
              progress=die_after_two)
    resumed = fresh()
    train(resumed, digits.x_train, digits.y_train, epochs=4, seed=3, checkpoint=checkpoint)
    assert all(resumed.state_dict()[k].equal(v) for k, v in reference.state_dict().items())


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="rate"):
        ImpConfig(rate=1.2)
    with pytest.raises(TypeError, match="epocs"):
        find_imp_ticket("lenet300_100", load_dataset("digits"), seed=0, epocs=3)


def test_a_crashed_search_resumes_to_the_same_ticket(digits, tmp_path):
    settings = {"rounds": 3, "rate": 0.5, "epochs": 2, "rewind_iteration": 5}
    reference = find_imp_ticket("lenet300_100", digits, seed=6, **settings)

    class Crash(Exception):
        pass

    def crash_in_round_two(_fraction: float, message: str) -> None:
        if message.startswith("round 2"):
            raise Crash

    with pytest.raises(Crash):
        find_imp_ticket("lenet300_100", digits, seed=6, checkpoint_dir=tmp_path, progress=crash_in_round_two,
                        **settings)
    assert (tmp_path / "imp.pt").exists()
    messages = []
    resumed = find_imp_ticket("lenet300_100", digits, seed=6, checkpoint_dir=tmp_path,
                              progress=lambda _f, m: messages.append(m), **settings)
    assert messages[0] == "resumed after round 1"
    assert resumed.rounds == reference.rounds
    assert all(resumed.mask[n].equal(reference.mask[n]) for n in reference.mask)
    assert all(resumed.state[n].equal(reference.state[n]) for n in reference.state)
    assert all(resumed.rewind[n].equal(reference.rewind[n]) for n in reference.rewind)
    assert not (tmp_path / "imp.pt").exists()
