"""Untrusted model files: read by content (safetensors or weights-only torch.load), validated."""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from verifier.errors import CheckpointError
from verifier.masks import Mask

MASK_SUFFIX, ORIG_SUFFIX = "_mask", "_orig"
# the entries a training framework nests a state dict under, and the prefixes a wrapper puts before every
# name: nn.DataParallel / DistributedDataParallel (`module.`), Lightning and friends (`model.`),
# torch.compile (`_orig_mod.`)
NESTING_KEYS = ("state_dict", "model", "model_state_dict")
WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")


def _looks_like_safetensors(path: Path) -> bool:
    """True for a file that starts like safetensors: 8-byte little-endian header length, then '{'.

    A file that starts so but is shorter than its header says is refused as truncated.
    """
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (length,) = struct.unpack("<Q", head[:8])
    available = path.stat().st_size - 8
    if length > available:
        raise CheckpointError(f"truncated safetensors file: its header declares {length} bytes but only "
                              f"{available} follow", code="unreadable_model")
    return length > 0


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors or a PyTorch file; never executes code from the file.

    The format is detected from the content. PyTorch files are loaded only with
    `torch.load(weights_only=True)`. A state dict nested under "state_dict", "model" or
    "model_state_dict" is unwrapped, and a wrapper's prefix on every name ("module.", "model.",
    "_orig_mod.") is removed, as a thief's framework ships them.
    """
    path = Path(path)
    try:
        if _looks_like_safetensors(path):
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except (SafetensorError, pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError,
            ValueError, OSError, json.JSONDecodeError, struct.error, AttributeError, TypeError,
            KeyError, IndexError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"not a readable model file (safetensors, or a PyTorch state dict "
                              f"loadable with weights_only=True): {_first_line(exc)}",
                              code="unreadable_model") from None
    state = _unwrapped(state)
    if not isinstance(state, dict) or not state:
        raise CheckpointError("the file does not hold a non-empty mapping of tensor names to tensors",
                              code="unreadable_model")
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"entry {str(name)[:100]!r} is not a named tensor", code="unreadable_model")
        kind = _unsupported_kind(value)
        if kind:
            raise CheckpointError(f"tensor {name[:100]!r} is {kind}; only dense (strided) CPU tensors are "
                                  "accepted", code="unreadable_model")
    return strip_wrapper_prefixes(dict(state))


def _unwrapped(state: object) -> object:
    """The state dict inside a training checkpoint's nesting (one level per known key, at most three)."""
    for _ in range(3):
        if not isinstance(state, dict):
            break
        nested = next((state[key] for key in NESTING_KEYS if isinstance(state.get(key), dict)), None)
        if nested is None:
            break
        state = nested
    return state


def strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove a wrapper's prefix while every name carries it (`module.model.fc1.weight` -> `fc1.weight`)."""
    while True:
        prefix = next((p for p in WRAPPER_PREFIXES if all(name.startswith(p) for name in state)), None)
        if prefix is None or any(name == prefix for name in state):
            return state
        state = {name[len(prefix):]: tensor for name, tensor in state.items()}


def _unsupported_kind(tensor: torch.Tensor) -> str | None:
    """What makes `tensor` other than a plain dense CPU tensor (sparse, quantized, nested, meta), if anything."""
    if tensor.layout != torch.strided:
        return f"a {str(tensor.layout).removeprefix('torch.')} tensor"
    if tensor.is_quantized:
        return "a quantized tensor"
    if tensor.is_nested:
        return "a nested tensor"
    if tensor.device.type != "cpu":
        return f"a tensor on device {tensor.device.type!r}"
    return None


def split_masks(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Mask]:
    """Separate `*_mask` entries (torch.nn.utils.prune form) from weights.

    `X.weight_orig` + `X.weight_mask` become `X.weight = orig * mask`; masks are keyed by the
    weight name. A mask holding anything other than 0 and 1 is refused. A declared mask is never
    trusted over the weights: the mask returned is the support the weights actually use (declared
    AND nonzero), so an all-ones mask over a ticket's weights declares nothing away.
    """
    weights, masks = {}, {}
    for name, tensor in state.items():
        if name.endswith(MASK_SUFFIX):
            target = name[: -len(MASK_SUFFIX)]
            if tensor.is_complex() or not bool(((tensor == 0) | (tensor == 1)).all()):
                raise CheckpointError(f"mask {name!r} holds values other than 0 and 1", code="invalid_mask")
            masks[target] = tensor.bool()
        elif not name.endswith(ORIG_SUFFIX):
            weights[name] = tensor
    for name, tensor in state.items():
        if name.endswith(ORIG_SUFFIX):
            target = name[: -len(ORIG_SUFFIX)]
            if target not in masks:
                raise CheckpointError(f"{name!r} has no matching {target + MASK_SUFFIX!r}",
                                      code="invalid_mask")
            weights[target] = tensor
    for target, mask in masks.items():
        if target not in weights:
            raise CheckpointError(f"mask {target + MASK_SUFFIX!r} has no weight {target!r}",
                                  code="unexpected_tensor")
        if mask.shape != weights[target].shape:
            raise CheckpointError(f"mask {target + MASK_SUFFIX!r} has shape {tuple(mask.shape)}, its weight "
                                  f"{tuple(weights[target].shape)}", code="shape_mismatch")
        weights[target] = weights[target] * mask
        masks[target] = mask & (weights[target] != 0)
    return weights, masks


def validate_state_dict(weights: dict[str, torch.Tensor], template: dict[str, torch.Tensor]) -> None:
    """Check names, shapes and dtypes against a model's `state_dict()`; name the first problem.

    `num_batches_tracked` buffers may be missing.
    """
    for name, expected in template.items():
        if name not in weights:
            if name.endswith("num_batches_tracked"):
                continue
            raise CheckpointError(f"missing tensor {name!r} (expected shape {tuple(expected.shape)})",
                                  code="missing_tensor")
        got = weights[name]
        if got.shape != expected.shape:
            raise CheckpointError(f"tensor {name!r} has shape {tuple(got.shape)}, expected "
                                  f"{tuple(expected.shape)}", code="shape_mismatch")
        if expected.is_floating_point():
            if not got.is_floating_point():
                raise CheckpointError(f"tensor {name!r} has dtype {got.dtype}, expected floating point",
                                      code="invalid_model")
            if not bool(torch.isfinite(got).all()):
                raise CheckpointError(f"tensor {name!r} holds NaN or infinite values", code="invalid_model")
    for name in weights:
        if name not in template:
            raise CheckpointError(f"unexpected tensor {name!r}: the architecture has no such parameter",
                                  code="unexpected_tensor")


def save_state_dict(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Save as safetensors (the canonical format), contiguous, on the CPU."""
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))
