"""Untrusted model files -> validated weights and masks, through the verifier's safe loaders."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from service.artifacts import ArtifactStore
from verifier.checkpoint import read_state_dict, save_state_dict, split_masks, validate_state_dict
from verifier.errors import CheckpointError
from verifier.masks import Mask, mask_from_weights, overall_density, save_mask
from verifier.models import build_model, prunable_parameters

Spec = tuple[tuple[int, ...], int]  # (input shape, number of classes)


@dataclass
class ParsedModel:
    arch: str
    weights: dict[str, torch.Tensor]
    mask: Mask
    prunable: list[str]


def parse_for_arch(path: Path, *, arch: str, spec: Spec, require_sparse: bool) -> ParsedModel:
    """Read a model file, check every tensor against `arch` built for `dataset`, derive its mask.

    The mask comes from `*_mask` entries where present, otherwise from exact zeros. Raises
    `VerifierError` subclasses (mapped to 422) naming the first problem.
    """
    template = build_model(arch, *spec).state_dict()
    weights, masks = split_masks(read_state_dict(path))
    return fit_to_template(weights, masks, template=template, arch=arch, spec=spec, require_sparse=require_sparse)


def fit_to_template(weights: dict[str, torch.Tensor], masks: Mask, *, template: dict[str, torch.Tensor],
                    arch: str, spec: Spec, require_sparse: bool) -> ParsedModel:
    validate_state_dict(weights, template)
    weights = dict(weights)
    for name, tensor in template.items():
        weights[name] = weights[name].to(tensor.dtype) if name in weights else tensor.clone()
        if tensor.is_floating_point() and not bool(torch.isfinite(weights[name]).all()):
            raise CheckpointError(f"tensor {name!r} holds values outside the range of {tensor.dtype}",
                                  code="invalid_model")
    prunable = prunable_parameters(arch, build_model(arch, *spec))
    mask = {name: masks[name] if name in masks else mask_from_weights(weights, [name])[name]
            for name in prunable}
    for name in prunable:
        weights[name] = weights[name] * mask[name]
    if require_sparse and overall_density(mask) >= 1.0:
        raise CheckpointError(f"no weight of {arch}'s prunable layers is pruned: a ticket is a sparse "
                              "network (zeros in the weights, or *_mask entries)", code="not_sparse")
    return ParsedModel(arch=arch, weights=weights, mask=mask, prunable=prunable)


def store_weights(store: ArtifactStore, weights: dict[str, torch.Tensor]) -> tuple[str, int]:
    """Save canonical safetensors into the store; returns (sha256, size)."""
    with tempfile.TemporaryDirectory(dir=store.root / "tmp") as tmp:
        path = Path(tmp) / "model.safetensors"
        save_state_dict(weights, path)
        return store.put_file(path)


def store_mask(store: ArtifactStore, mask: Mask) -> tuple[str, int]:
    with tempfile.TemporaryDirectory(dir=store.root / "tmp") as tmp:
        path = Path(tmp) / "mask.safetensors"
        save_mask(mask, path)
        return store.put_file(path)
