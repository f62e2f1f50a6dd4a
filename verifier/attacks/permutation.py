"""Function-preserving permutation of hidden units: the network computes exactly what it did, and
every position-based comparison is scrambled."""

from __future__ import annotations

import torch

from verifier.attacks.rescale import fold_batchnorm, rescale_units
from verifier.attacks.streams import permute_residual_streams


def permute_hidden_units(arch: str, state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """A function-preserving permutation of hidden units: both hidden layers of lenet300_100; the
    channels of conv1-conv3 and the units of fc1-fc2 of conv4 (conv4's own channels, which fc1 reads
    as flattened blocks, stay); or the internal channels of every residual block (conv, its BatchNorm,
    the next conv's inputs) of the ResNets. The outputs are unchanged; every position-based
    comparison is scrambled. Other architectures: the attack issue."""
    generator = torch.Generator().manual_seed(seed)
    if arch == "lenet300_100":
        chains = [("fc1", None, "fc2"), ("fc2", None, "fc3")]
    elif arch == "conv4":
        chains = [("conv1", None, "conv2"), ("conv2", None, "conv3"), ("conv3", None, "conv4"),
                  ("fc1", None, "fc2"), ("fc2", None, "fc3")]
    elif arch.startswith("resnet"):
        blocks = sorted({key.rsplit(".conv1.weight", 1)[0] for key in state if key.endswith(".conv1.weight")
                         and key.startswith("layer")})
        chains = [(f"{b}.conv{i}", f"{b}.bn{i}", f"{b}.conv{i + 1}") for b in blocks for i in (1, 2)
                  if f"{b}.conv{i + 1}.weight" in state]
    else:
        raise ValueError(f"permute_hidden_units supports lenet300_100, conv4 and the ResNets, not {arch}")
    out = dict(state)
    for producer, norm, consumer in chains:
        order = torch.randperm(out[f"{producer}.weight"].shape[0], generator=generator)
        for key in [f"{producer}.weight", f"{producer}.bias"] + [
                f"{norm}.{p}" for p in ("weight", "bias", "running_mean", "running_var")] * (norm is not None):
            if key in out:
                out[key] = out[key][order]
        out[f"{consumer}.weight"] = out[f"{consumer}.weight"][:, order]
    return out


def permute_every_channel(arch: str, state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """`permute_hidden_units`, and for the ResNets then `permute_residual_streams` (seed + 1): every
    channel that can move does."""
    permuted = permute_hidden_units(arch, state, seed)
    return permute_residual_streams(arch, permuted, seed + 1) if arch.startswith("resnet") else permuted


def reparametrise(arch: str, state: dict[str, torch.Tensor], seed: int, *, spread: float = 100.0
                  ) -> dict[str, torch.Tensor]:
    """`permute_every_channel`, then every unit rescaled by a factor in [1/spread, spread]
    (`rescale_units`, seed + 2), then every BatchNorm folded into its conv: each cheap
    function-preserving edit a thief has, at once."""
    return fold_batchnorm(rescale_units(arch, permute_every_channel(arch, state, seed), seed + 2, spread=spread))


@torch.no_grad()
def check_preserved(arch: str, state: dict[str, torch.Tensor], edited: dict[str, torch.Tensor],
                    input_shape: tuple[int, ...], num_classes: int, seed: int, *, what: str, probes: int = 16,
                    atol: float = 1e-4) -> dict[str, torch.Tensor]:
    """`edited`, once its outputs on `probes` random inputs (eval mode) equal `state`'s within `atol`
    relative to their scale; VerifierError otherwise (an edit that changes the function is not this
    attack)."""
    from verifier.errors import VerifierError
    from verifier.models import build_model

    x = torch.randn(probes, *input_shape, generator=torch.Generator().manual_seed(seed))
    outputs = []
    for weights in (state, edited):
        model = build_model(arch, input_shape, num_classes)
        model.load_state_dict(weights)
        outputs.append(model.eval()(x))
    scale = float(outputs[0].abs().max()) or 1.0
    error = float((outputs[0] - outputs[1]).abs().max())
    if error > atol * scale:
        raise VerifierError(f"the {what} changed the outputs by {error:.3g} (scale {scale:.3g})",
                            code="permutation_not_preserving")
    return edited


def permute_checked(arch: str, state: dict[str, torch.Tensor], input_shape: tuple[int, ...], num_classes: int,
                    seed: int) -> dict[str, torch.Tensor]:
    """`permute_every_channel`, with proof that it preserved the function (`check_preserved`)."""
    return check_preserved(arch, state, permute_every_channel(arch, state, seed), input_shape, num_classes, seed,
                           what="permutation")


def reparametrise_checked(arch: str, state: dict[str, torch.Tensor], input_shape: tuple[int, ...],
                          num_classes: int, seed: int, *, spread: float = 100.0) -> dict[str, torch.Tensor]:
    """`reparametrise`, with proof that it preserved the function (`check_preserved`)."""
    return check_preserved(arch, state, reparametrise(arch, state, seed, spread=spread), input_shape, num_classes,
                           seed, what="reparametrisation")
