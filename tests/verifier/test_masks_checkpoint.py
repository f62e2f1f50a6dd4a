from __future__ import annotations

import pytest
import torch

from verifier.checkpoint import read_state_dict, save_state_dict, split_masks, validate_state_dict
from verifier.errors import CheckpointError
from verifier.masks import (
    count_kept,
    densities,
    global_magnitude_prune,
    load_mask,
    magnitude_mask,
    overall_density,
    save_mask,
)
from verifier.models import build_model


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(30, 17, generator=generator), "b": torch.randn(8, 4, 3, 3, generator=generator)}


def test_magnitude_mask_keeps_exact_counts_of_the_largest():
    weights = _weights()
    mask = magnitude_mask(weights, {"a": 0.2, "b": 0.5})
    assert int(mask["a"].sum()) == round(0.2 * 510) and int(mask["b"].sum()) == 144
    assert weights["a"].abs()[mask["a"]].min() >= weights["a"].abs()[~mask["a"]].max()


def test_global_prune_removes_exactly_the_fraction_of_kept_weights():
    weights = _weights()
    mask = magnitude_mask(weights, {"a": 0.5, "b": 0.5})
    pruned = global_magnitude_prune(weights, mask, 0.1)
    assert count_kept(pruned) == count_kept(mask) - round(0.1 * count_kept(mask))
    assert all(bool((pruned[n] <= mask[n]).all()) for n in mask)  # only removes
    removed = torch.cat([weights[n].abs()[mask[n] & ~pruned[n]] for n in mask])
    survived = torch.cat([weights[n].abs()[pruned[n]] for n in mask])
    assert removed.max() <= survived.min()


def test_mask_bit_packed_round_trip(tmp_path):
    mask = magnitude_mask(_weights(), {"a": 0.37, "b": 0.11})
    path = tmp_path / "mask.safetensors"
    save_mask(mask, path)
    loaded = load_mask(path)
    assert all(loaded[n].equal(mask[n]) for n in mask)
    assert path.stat().st_size < (510 + 288) // 8 + 400
    assert densities(loaded) == densities(mask) and overall_density(loaded) == overall_density(mask)


def test_state_dict_round_trips_in_both_formats(tmp_path):
    state = build_model("lenet300_100", (1, 8, 8), 10).state_dict()
    save_state_dict(state, tmp_path / "m.safetensors")
    torch.save({"state_dict": state}, tmp_path / "m.pt")
    for name in ("m.safetensors", "m.pt"):
        loaded = read_state_dict(tmp_path / name)
        assert all(loaded[k].equal(v) for k, v in state.items())


def test_prune_form_becomes_weight_and_mask():
    weight, keep = torch.randn(5, 4), torch.rand(5, 4) > 0.5
    state = {"fc.weight_orig": weight, "fc.weight_mask": keep.float(), "fc.bias": weight[0]}
    weights, masks = split_masks(state)
    assert set(weights) == {"fc.weight", "fc.bias"} and masks["fc.weight"].equal(keep)
    assert weights["fc.weight"].equal(weight * keep)
    with pytest.raises(CheckpointError, match="fc.weight_mask") as info:
        split_masks({"fc.weight_orig": weight, "fc.weight_mask": torch.full((5, 4), 2.0)})
    assert info.value.code == "invalid_mask"


def test_validation_names_the_first_problem():
    template = build_model("lenet300_100", (1, 8, 8), 10).state_dict()
    good = {k: v.clone() for k, v in template.items()}
    validate_state_dict(good, template)
    cases = [({k: v for k, v in good.items() if k != "fc2.bias"}, "missing_tensor", "fc2.bias"),
             (dict(good, extra=torch.zeros(1)), "unexpected_tensor", "extra"),
             (dict(good, **{"fc1.weight": torch.zeros(3, 3)}), "shape_mismatch", "fc1.weight"),
             (dict(good, **{"fc1.bias": torch.full((300,), float("nan"))}), "invalid_model", "fc1.bias"),
             (dict(good, **{"fc1.bias": torch.zeros(300, dtype=torch.int64)}), "invalid_model", "fc1.bias")]
    for weights, code, name in cases:
        with pytest.raises(CheckpointError, match=name) as info:
            validate_state_dict(weights, template)
        assert info.value.code == code


def test_unreadable_files(tmp_path):
    for content in (b"", b"\x00" * 100, b"PK\x03\x04garbage", b"\x80\x04K\x01."):
        path = tmp_path / "bad"
        path.write_bytes(content)
        with pytest.raises(CheckpointError) as info:
            read_state_dict(path)
        assert info.value.code == "unreadable_model"
    torch.save({"a": [1, 2, 3]}, tmp_path / "not_tensors.pt")
    with pytest.raises(CheckpointError, match="not a named tensor"):
        read_state_dict(tmp_path / "not_tensors.pt")
