"""Function-preserving reparametrisations beyond permutation: per-unit positive rescaling and
BatchNorm folding. ReLU (and max-pooling) commute with a positive factor, so a hidden unit's output
can be multiplied by s > 0 and the weights that read it divided by s; a BatchNorm can be folded into
the conv before it. The network computes what it did; every raw weight is changed."""

from __future__ import annotations

import math

import torch

from verifier.units import residual_blocks, residual_streams


def _chains(arch: str, state: dict[str, torch.Tensor]) -> list[tuple[list[str], list[str]]]:
    """(producers, consumers) per group of units one factor may scale: the producers' output rows
    (a linear or conv layer's weight and bias, or a BatchNorm's weight and bias) are multiplied by it,
    the consumers' input columns divided by it."""
    if arch == "lenet300_100":
        return [(["fc1"], ["fc2"]), (["fc2"], ["fc3"])]
    if arch == "conv4":
        return [(["conv1"], ["conv2"]), (["conv2"], ["conv3"]), (["conv3"], ["conv4"]), (["conv4"], ["fc1"]),
                (["fc1"], ["fc2"]), (["fc2"], ["fc3"])]
    if arch.startswith("resnet"):
        inside = [([f"{b}.bn{i}"], [f"{b}.conv{i + 1}"]) for b in residual_blocks(state) for i in range(1, 10)
                  if f"{b}.conv{i + 1}.weight" in state]
        streams = [([p for p in producers if p == "bn1" or ".bn" in p or p.endswith("downsample.1")], consumers)
                   for producers, consumers in residual_streams(state)]
        return inside + streams
    raise ValueError(f"rescale_units supports lenet300_100, conv4 and the ResNets, not {arch}")


def rescale_units(arch: str, state: dict[str, torch.Tensor], seed: int, *, spread: float = 100.0
                  ) -> dict[str, torch.Tensor]:
    """Every hidden unit (and, in the ResNets, every residual-stream channel) scaled by its own
    factor, log-uniform in [1/spread, spread]: what writes it multiplied, what reads it divided. A
    consumer that reads a flattened feature map (conv4's fc1) divides each channel's block of
    columns. The outputs are unchanged up to rounding."""
    if spread < 1:
        raise ValueError("spread must be at least 1")
    generator = torch.Generator().manual_seed(seed)
    out = dict(state)
    for producers, consumers in _chains(arch, state):
        units = state[f"{producers[0]}.weight"].shape[0]
        factors = torch.exp((2 * torch.rand(units, generator=generator, dtype=torch.float64) - 1) * math.log(spread))
        for module in producers:
            for key in (f"{module}.weight", f"{module}.bias"):
                if key in out:
                    shape = (-1,) + (1,) * (out[key].dim() - 1)
                    out[key] = (out[key].double() * factors.view(shape)).to(out[key].dtype)
        for module in consumers:
            weight = out[f"{module}.weight"]
            per_column = factors.repeat_interleave(weight.shape[1] // units)
            out[f"{module}.weight"] = (weight.double() / per_column.view(1, -1, *(1,) * (weight.dim() - 2))
                                       ).to(weight.dtype)
    return out


def _conv_before(norm: str, state: dict[str, torch.Tensor]) -> str:
    """The conv a BatchNorm normalises: `bnN` after `convN`, `X.(k+1)` after `X.k` (a projection
    shortcut, a VGG feature stack)."""
    stem, _, last = norm.rpartition(".")
    if last.startswith("bn"):
        conv = f"{stem + '.' if stem else ''}conv{last.removeprefix('bn')}"
    else:
        conv = f"{stem}.{int(last) - 1}"
    if f"{conv}.weight" not in state or state[f"{conv}.weight"].dim() != 4:
        raise ValueError(f"no conv found before the BatchNorm {norm}")
    return conv


def fold_batchnorm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every BatchNorm folded into the conv before it, as deployment tools do: the conv's rows (and
    bias) scaled by gamma / sqrt(var + eps), and the BatchNorm left as a shift only (gamma 1, its
    mean 0, its variance 1 - eps, beta absorbing the mean). Eval-mode outputs are unchanged."""
    eps = 1e-5  # torch.nn.BatchNorm2d's default, which every architecture here uses
    out = dict(state)
    for key in [k for k in state if k.endswith(".running_var")]:
        norm = key.removesuffix(".running_var")
        conv = _conv_before(norm, state)
        gamma, beta = state[f"{norm}.weight"].double(), state[f"{norm}.bias"].double()
        mean, var = state[f"{norm}.running_mean"].double(), state[f"{norm}.running_var"].double()
        scale = gamma / torch.sqrt(var + eps)
        weight = state[f"{conv}.weight"]
        out[f"{conv}.weight"] = (weight.double() * scale.view(-1, 1, 1, 1)).to(weight.dtype)
        if f"{conv}.bias" in state:
            out[f"{conv}.bias"] = (state[f"{conv}.bias"].double() * scale).to(weight.dtype)
        out[f"{norm}.weight"] = torch.ones_like(state[f"{norm}.weight"])
        out[f"{norm}.bias"] = (beta - scale * mean).to(state[f"{norm}.bias"].dtype)
        out[f"{norm}.running_mean"] = torch.zeros_like(state[f"{norm}.running_mean"])
        out[f"{norm}.running_var"] = torch.full_like(state[f"{norm}.running_var"], 1 - eps)
    return out
