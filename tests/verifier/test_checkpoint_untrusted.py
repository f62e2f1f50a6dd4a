"""Untrusted model files: formats detected by content, nothing in a file ever runs."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
import torch

from verifier.checkpoint import read_state_dict, save_state_dict, split_masks, validate_state_dict
from verifier.errors import CheckpointError
from verifier.models import build_model


class _Planted:
    """Unpickling this calls open(path, "w"): the file appears only if the loader runs code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _unreadable(path: Path) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    assert info.value.code == "unreadable_model"
    return info.value


@pytest.mark.parametrize("form", ["pickle", "torch_zip", "torch_legacy"])
def test_malicious_pickle_is_refused_without_running(tmp_path, form):
    marker = tmp_path / "pwned"
    payload = {"fc1.weight": torch.zeros(2, 2), "evil": _Planted(marker)}
    buffer = io.BytesIO()
    if form == "pickle":
        pickle.dump(payload, buffer)
    else:
        torch.save(payload, buffer, _use_new_zipfile_serialization=form == "torch_zip")
    path = tmp_path / "model.safetensors"  # a lying name: detection is by content
    path.write_bytes(buffer.getvalue())
    _unreadable(path)
    assert not marker.exists()


def test_truncated_safetensors_and_random_bytes_are_refused(tmp_path):
    good = tmp_path / "good.pt"  # safetensors content under a .pt name still reads
    save_state_dict({"w": torch.randn(20, 10)}, good)
    assert read_state_dict(good)["w"].shape == (20, 10)
    content = good.read_bytes()
    assert int.from_bytes(content[:8], "little") > 40
    for cut in (4, 9, 40, len(content) // 2, len(content) - 1):
        path = tmp_path / f"cut{cut}"
        path.write_bytes(content[:cut])
        message = str(_unreadable(path))
        if cut in (9, 40):  # inside the JSON header (8 + 64 bytes): said plainly
            assert "truncated safetensors" in message
    generator = torch.Generator().manual_seed(0)
    for size in (1, 100, 5000):
        path = tmp_path / f"random{size}"
        path.write_bytes(bytes(torch.randint(0, 256, (size,), generator=generator).tolist()))
        _unreadable(path)


@pytest.mark.parametrize("make,kind", [
    (lambda: torch.eye(3).to_sparse(), "sparse_coo"),
    (lambda: torch.eye(3).to_sparse_csr(), "sparse_csr"),
    (lambda: torch.quantize_per_tensor(torch.rand(3), 0.1, 0, torch.quint8), "quantized"),
    (lambda: torch.nested.nested_tensor([torch.rand(2), torch.rand(3)]), "nested"),
    (lambda: torch.empty(3, device="meta"), "meta"),
])
def test_tensors_other_than_dense_cpu_are_refused_by_name(tmp_path, make, kind):
    path = tmp_path / "model.pt"
    torch.save({"fc.bias": torch.zeros(3), "fc.weight": make()}, path)
    message = str(_unreadable(path))
    assert "'fc.weight'" in message and kind in message


def test_legacy_pickle_and_wrapped_state_dict_read(tmp_path):
    state = build_model("lenet300_100", (1, 8, 8), 10).state_dict()
    torch.save(state, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "wrapped.pth")
    for name in ("legacy.bin", "wrapped.pth"):
        loaded = read_state_dict(tmp_path / name)
        assert set(loaded) == set(state) and all(loaded[k].equal(v) for k, v in state.items())


def test_plain_mask_beside_weight_is_applied():
    weight, keep = torch.randn(6, 3), torch.rand(6, 3) > 0.5
    weights, masks = split_masks({"fc.weight": weight, "fc.weight_mask": keep.to(torch.uint8)})
    assert set(weights) == {"fc.weight"} and masks["fc.weight"].equal(keep)
    assert masks["fc.weight"].dtype == torch.bool and weights["fc.weight"].equal(weight * keep)
    with pytest.raises(CheckpointError, match="fc.weight_mask") as info:
        split_masks({"fc.weight": weight, "fc.weight_mask": torch.full((6, 3), 0.5)})
    assert info.value.code == "invalid_mask"


def test_resnet_without_batch_counters_validates_and_names_misshaped_convs():
    template = build_model("resnet20", (1, 8, 8), 10).state_dict()
    weights = {k: v.clone() for k, v in template.items() if not k.endswith("num_batches_tracked")}
    validate_state_dict(weights, template)
    weights["layer2.0.downsample.0.weight"] = torch.zeros(32, 16, 3, 3)
    expected = r"layer2\.0\.downsample\.0\.weight.*\(32, 16, 3, 3\)"
    with pytest.raises(CheckpointError, match=expected) as info:
        validate_state_dict(weights, template)
    assert info.value.code == "shape_mismatch" and "(32, 16, 1, 1)" in str(info.value)
    weights["layer2.0.downsample.0.weight"] = torch.full((32, 16, 1, 1), float("inf"))
    with pytest.raises(CheckpointError, match="downsample") as info:
        validate_state_dict(weights, template)
    assert info.value.code == "invalid_model"
