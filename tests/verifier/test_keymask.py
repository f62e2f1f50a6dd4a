from __future__ import annotations

import pytest
import torch

from verifier.data import load_dataset
from verifier.errors import VerifierError
from verifier.keymask import (
    KeyConfig,
    key_gap,
    key_scores,
    lock_ticket,
    magnitude_scores,
    path_hits,
    path_scores,
    random_key,
    retrain_accuracy,
    split_key,
    taylor_scores,
)
from verifier.masks import count_kept, magnitude_mask
from verifier.models import architecture_names, build_model, prunable_parameters
from verifier.tickets import find_imp_ticket
from verifier.training import TrainConfig

DIGITS_SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def ticket(digits):
    return find_imp_ticket("lenet300_100", digits, seed=0, rounds=1, rate=0.8, epochs=2)


def _model_and_mask(arch: str, density: float, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(arch, DIGITS_SHAPE, 10)
    weights = dict(model.named_parameters())
    return model, magnitude_mask(weights, {n: density for n in prunable_parameters(arch, model)})


def _kernel_hits(hits: torch.Tensor) -> torch.Tensor:
    """Hits per kernel (out, in): the count on any of its kept weights (0 where none is kept)."""
    return hits.flatten(2).max(2).values if hits.dim() == 4 else hits


def _crossings(hits: torch.Tensor) -> int:
    return int(_kernel_hits(hits).sum())


# --- split_key and configuration ---------------------------------------------------------------


def test_split_key_takes_exactly_n_disjoint_weights_and_covers_the_mask():
    model, mask = _model_and_mask("lenet300_100", 0.1)
    scores = magnitude_scores(dict(model.named_parameters()), mask)
    kept = count_kept(mask)
    for fraction in (0.05, 0.2, 1e-9):
        locked, key = split_key(mask, scores, fraction)
        assert count_kept(key) == max(1, round(fraction * kept))
        for name in mask:
            assert locked[name].dtype == key[name].dtype == torch.bool
            assert locked[name].shape == key[name].shape == mask[name].shape
            assert not bool((locked[name] & key[name]).any())
            assert (locked[name] | key[name]).equal(mask[name])
    again = split_key(mask, {n: s.clone() for n, s in scores.items()}, 0.05)
    first = split_key(mask, scores, 0.05)
    assert all(first[1][n].equal(again[1][n]) and first[0][n].equal(again[0][n]) for n in mask)


def test_split_key_breaks_ties_deterministically_by_position():
    mask = {"a": torch.tensor([True, False, True, True]), "b": torch.tensor([True, True])}
    scores = {"a": torch.tensor([1.0, 9.0, 1.0, 1.0]), "b": torch.tensor([1.0, 1.0])}
    _, key = split_key(mask, scores, 0.4)  # 5 kept -> 2 in the key, all tied: the first two kept
    assert key["a"].tolist() == [True, False, True, False] and key["b"].tolist() == [False, False]


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_key_fraction_raises(fraction):
    model, mask = _model_and_mask("lenet300_100", 0.1)
    with pytest.raises(VerifierError, match="key_fraction"):
        split_key(mask, magnitude_scores(dict(model.named_parameters()), mask), fraction)
    with pytest.raises(VerifierError, match="key_fraction"):
        KeyConfig(key_fraction=fraction)


@pytest.mark.parametrize("settings", [{"score": "hessian"}, {"path_samples": 0}, {"taylor_batches": 0},
                                      {"seed": -1}, {"train": {"epochs": -1}}, {"train": {"colour": 1}}])
def test_bad_key_config_raises_verifier_error(settings):
    with pytest.raises(VerifierError) as error:
        KeyConfig(**settings)
    assert error.value.code == "invalid_key_config"


def test_split_key_rejects_mismatched_scores_and_tiny_masks():
    mask = {"a": torch.tensor([True, True, False])}
    with pytest.raises(VerifierError):
        split_key(mask, {"b": torch.zeros(3)}, 0.5)
    with pytest.raises(VerifierError):
        split_key(mask, {"a": torch.zeros(4)}, 0.5)
    with pytest.raises(VerifierError):
        split_key({"a": torch.tensor([True, False])}, {"a": torch.zeros(2)}, 0.5)


# --- scores ------------------------------------------------------------------------------------


def test_magnitude_key_holds_the_largest_weights():
    model, mask = _model_and_mask("lenet300_100", 0.1)
    weights = dict(model.named_parameters())
    locked, key = split_key(mask, magnitude_scores(weights, mask), 0.05)
    smallest_in_key = min(float(weights[n].detach().abs()[key[n]].min()) for n in key if key[n].any())
    largest_locked = max(float(weights[n].detach().abs()[locked[n]].max()) for n in locked if locked[n].any())
    assert smallest_in_key >= largest_locked


def test_taylor_scores_vanish_outside_the_mask_and_repeat_for_a_seed(digits, ticket):
    model = build_model("lenet300_100", digits.input_shape, digits.num_classes)
    model.load_state_dict(ticket.state)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    runs = [taylor_scores(model, ticket.mask, digits.x_train, digits.y_train, batches=2, batch_size=64, seed=s)
            for s in (3, 3, 4)]
    for name, keep in ticket.mask.items():
        assert bool((runs[0][name][~keep] == 0).all())
        assert bool((runs[0][name][keep] > 0).any())
        assert runs[0][name].shape == keep.shape
        assert runs[0][name].equal(runs[1][name])
    assert any(not runs[0][n].equal(runs[2][n]) for n in ticket.mask)
    assert all(before[k].equal(v) for k, v in model.state_dict().items())
    via_config = key_scores(ticket, digits, KeyConfig(score="taylor", taylor_batches=2, taylor_batch_size=64, seed=3))
    assert all(via_config[n].equal(runs[0][n]) for n in ticket.mask)


def test_lenet_chain_mask_makes_every_path_follow_the_chain():
    torch.manual_seed(0)
    model = build_model("lenet300_100", DIGITS_SHAPE, 10)
    mask = {name: torch.zeros_like(p, dtype=torch.bool) for name, p in model.named_parameters()
            if name.endswith("weight")}
    mask["fc1.weight"][5, 10] = mask["fc1.weight"][6, 40] = True
    mask["fc2.weight"][7, 5] = True  # unit 6 of fc1 leads nowhere: no path may use it
    mask["fc3.weight"][3, 7] = True
    hits = path_hits(model, mask, DIGITS_SHAPE, samples=200, seed=1)
    assert int(hits["fc1.weight"][5, 10]) == int(hits["fc2.weight"][7, 5]) == int(hits["fc3.weight"][3, 7]) == 200
    assert sum(int(h.sum()) for h in hits.values()) == 600


def test_resnet_chain_mask_is_followed_through_branches_and_shortcuts():
    """Only one chain survives: stem channel 3 -> identity shortcuts, or the residual branch of layer1.1
    (3 -> 7 -> 11) -> the projection shortcuts of layer2.0 (3 -> 5 or 11 -> 6) and layer3.0 (-> 9)."""
    torch.manual_seed(0)
    model = build_model("resnet20", DIGITS_SHAPE, 10)
    with torch.no_grad():
        stem = model.conv1.weight
        stem[torch.arange(16) != 3] = 0  # not prunable: zero weights have no norm to walk along
    mask = {name: torch.zeros_like(p, dtype=torch.bool) for name, p in model.named_parameters()
            if name in prunable_parameters("resnet20", model)}
    chain = {"layer1.1.conv1.weight": [(7, 3)], "layer1.1.conv2.weight": [(11, 7)],
             "layer2.0.downsample.0.weight": [(5, 3), (6, 11)], "layer3.0.downsample.0.weight": [(9, 5), (9, 6)]}
    for name, kernels in chain.items():
        for out, inp in kernels:
            mask[name][out, inp] = True
    mask["layer1.1.conv2.weight"][11, 7, 0, 0] = False  # a kernel with some weights pruned still counts
    samples = 400
    hits = {name: _kernel_hits(h) for name, h in path_hits(model, mask, DIGITS_SHAPE, samples=samples, seed=0).items()}
    branch = int(hits["layer1.1.conv1.weight"][7, 3])
    assert 0.35 * samples < branch < 0.65 * samples  # uniform choice between conv1 and the identity shortcut
    assert int(hits["layer1.1.conv2.weight"][11, 7]) == branch
    assert int(hits["layer2.0.downsample.0.weight"][6, 11]) == int(hits["layer3.0.downsample.0.weight"][9, 6]) == branch
    assert int(hits["layer2.0.downsample.0.weight"][5, 3]) == samples - branch
    assert int(hits["layer3.0.downsample.0.weight"][9, 5]) == samples - branch
    assert sum(int(h.sum()) for h in hits.values()) == 2 * branch + 2 * samples


def test_resnet_paths_cross_branch_convs_and_projection_shortcuts_and_conserve_paths():
    model, mask = _model_and_mask("resnet20", 0.2)
    samples = 300
    hits = path_hits(model, mask, DIGITS_SHAPE, samples=samples, seed=0)
    for name, keep in mask.items():
        assert bool((hits[name][~keep] == 0).all()), name
    projections = [n for n in mask if "downsample" in n]
    branch_convs = [n for n in mask if ".conv" in n]
    assert projections and all(_crossings(hits[n]) > 0 for n in projections)
    assert all(_crossings(hits[n]) > 0 for n in branch_convs)
    for block in {n.rsplit(".conv", 1)[0] for n in branch_convs}:
        # a path entering a residual branch leaves through its second conv: a crossing of a pruned
        # kernel would vanish here
        assert _crossings(hits[f"{block}.conv1.weight"]) == _crossings(hits[f"{block}.conv2.weight"])
        if f"{block}.downsample.0.weight" in mask:  # every path crosses a projection block once
            assert (_crossings(hits[f"{block}.conv1.weight"])
                    + _crossings(hits[f"{block}.downsample.0.weight"])) == samples
    again = path_hits(model, mask, DIGITS_SHAPE, samples=samples, seed=0)
    assert all(hits[n].equal(again[n]) for n in mask)


@pytest.mark.parametrize("arch", architecture_names())
def test_path_scores_work_for_every_architecture(arch):
    torch.manual_seed(0)
    model = build_model(arch, DIGITS_SHAPE, 10)
    weights = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(0)
    mask = {n: torch.rand(weights[n].shape, generator=generator) < 0.1 for n in prunable_parameters(arch, model)}
    scores = path_scores(model, mask, DIGITS_SHAPE, samples=20, seed=0)
    crossings = 0
    for name, keep in mask.items():
        assert scores[name].shape == keep.shape
        assert bool((scores[name][~keep] == 0).all())
        assert bool((scores[name][keep] > 0).all())  # the |w| tie-break (< 1/2) lifts every kept weight
        hits = scores[name].floor()
        assert bool((scores[name] - hits < 0.5 + 1e-9).all())
        crossings += _crossings(hits)
    assert crossings >= 20  # each path crosses at least one masked layer in these architectures


def test_path_key_prefers_hit_kernels_and_breaks_ties_by_magnitude():
    model, mask = _model_and_mask("lenet300_100", 0.05)
    scores = path_scores(model, mask, DIGITS_SHAPE, samples=500, seed=0)
    hits = path_hits(model, mask, DIGITS_SHAPE, samples=500, seed=0)
    _, key = split_key(mask, scores, 0.05)
    weakest_key_hits = min(int(hits[n][key[n]].min()) for n in key if key[n].any())
    strongest_other = max(int(hits[n][mask[n] & ~key[n]].max()) for n in key)
    assert weakest_key_hits >= strongest_other


# --- the gap -----------------------------------------------------------------------------------


def test_key_gap_reports_accuracies_and_repeats_for_a_seed(digits, ticket):
    config = KeyConfig(key_fraction=0.2, seed=5)
    locked, key = lock_ticket(ticket, digits, config)
    seen = []
    result = key_gap(ticket, digits, locked, key, config, epochs=2, progress=lambda f, m: seen.append((f, m)))
    assert 0 <= result.accuracy_without_key <= 1 and 0 <= result.accuracy_with_key <= 1
    assert result.gap == pytest.approx(result.accuracy_with_key - result.accuracy_without_key)
    assert result.key_size == count_kept(key) and result.locked_size == count_kept(locked)
    assert result.config["train"]["epochs"] == 2 and result.config["seed"] == 5
    assert [round(f, 2) for f, _ in seen] == [0.25, 0.5, 0.75, 1.0]
    assert key_gap(ticket, digits, locked, key, config, epochs=2) == result
    settings = TrainConfig(**result.config["train"])
    assert retrain_accuracy(ticket, digits, ticket.mask, seed=5, config=settings) == result.accuracy_with_key


def test_random_key_draws_pruned_positions_and_can_be_checked(digits, ticket):
    locked, key = lock_ticket(ticket, digits, KeyConfig(key_fraction=0.05))
    n = count_kept(key)
    forged = random_key(locked, n, seed=1)
    assert count_kept(forged) == n
    assert all(not bool((forged[name] & locked[name]).any()) for name in locked)
    assert all(forged[name].equal(random_key(locked, n, seed=1)[name]) for name in locked)
    assert any(not forged[name].equal(random_key(locked, n, seed=2)[name]) for name in locked)
    result = key_gap(ticket, digits, locked, forged, KeyConfig(seed=1), epochs=1)
    assert result.key_size == n and 0 <= result.accuracy_with_key <= 1
    with pytest.raises(VerifierError, match="overlaps"):
        key_gap(ticket, digits, locked, locked, KeyConfig(), epochs=1)
    with pytest.raises(VerifierError):
        random_key(locked, 0, seed=1)
