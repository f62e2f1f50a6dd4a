"""Signing a ticket with a QR code and reading a suspect against it: the whole procedure around the
pieces in `qr` and `verifier.align`, used by the service's jobs and by the benchmarks alike."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from verifier.align import Alignment, align_layer
from verifier.data import Dataset
from verifier.masks import Mask, mask_from_weights, overall_density
from verifier.models import build_model, permutable_axes
from verifier.network_alignment import align_units, layer_alignment, shared_kept
from verifier.signatures.qr import (
    Placement,
    QrCode,
    choose_placement,
    decode_window,
    embed_code,
    module_test,
    read_window,
    whiten,
)
from verifier.topology import estimate_suspect_mask
from verifier.training import TrainConfig, evaluate, train
from verifier.units import layer_groups


@dataclass(frozen=True)
class SignedTicket:
    """The signed ticket (weights after the recovery fine-tune, and its mask), where the code sits,
    and a report: placement score, changes made, test accuracy before, embedded, and recovered."""

    weights: dict[str, torch.Tensor]
    mask: Mask
    placement: Placement
    report: dict[str, Any]


def sign_ticket(arch: str, dataset: Dataset, weights: dict[str, torch.Tensor], mask: Mask,
                rewind: dict[str, torch.Tensor], code: QrCode, *, key: bytes | None = None,
                keep_function_patterns: bool = True, recovery: TrainConfig | None = None, seed: int = 0,
                progress: Callable[[int, float], None] | None = None) -> SignedTicket:
    """Place and write `code` (exact kept-weight count), then fine-tune with the new mask fixed on
    `dataset` to recover accuracy (`recovery.epochs` 0 skips it). Revived weights start from `rewind`.
    With a `key` the data modules are whitened (`qr.whiten`) before they are written.

    Only layers whose rows and columns are both hidden units are eligible: there no two independent
    networks share positions, so an unrelated suspect has nothing in common with the window (the
    input layer's pixel columns, say, are blank at the border in every network)."""
    hidden = [name for name in mask if all(permutable_axes(arch, name))]
    written = whiten(code, key) if key is not None else code
    placement = choose_placement(mask, written, layers=hidden)
    embedding = embed_code(mask, weights, rewind, written, placement, keep_function_patterns=keep_function_patterns)
    model = build_model(arch, dataset.input_shape, dataset.num_classes)
    model.load_state_dict(weights)
    accuracy_before = evaluate(model, dataset.x_test, dataset.y_test)
    model.load_state_dict(embedding.state)
    accuracy_embedded = evaluate(model, dataset.x_test, dataset.y_test)
    recovery = recovery or TrainConfig(epochs=2, lr=0.01)
    if recovery.epochs:
        train(model, dataset.x_train, dataset.y_train, config=recovery, seed=seed, mask=embedding.mask,
              progress=progress)
    signed = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    report = {"placement_matched": placement.matched, "data_modules": placement.data_modules,
              "kernels_connected": embedding.kernels_connected, "kernels_removed": embedding.kernels_removed,
              "weights_added": embedding.weights_added, "weights_removed": embedding.weights_removed,
              "rebalanced_added": embedding.rebalanced_added, "rebalanced_removed": embedding.rebalanced_removed,
              "density": overall_density(embedding.mask),
              "recovery": {"epochs": recovery.epochs, "lr": recovery.lr},
              "accuracy_before": accuracy_before, "accuracy_embedded": accuracy_embedded,
              "accuracy_after": evaluate(model, dataset.x_test, dataset.y_test)}
    return SignedTicket(signed, embedding.mask, placement, report)


def read_signature(arch: str, code: QrCode, placement: Placement, ticket_weights: dict[str, torch.Tensor],
                   suspect_weights: dict[str, torch.Tensor], suspect_mask: Mask, *, key: bytes | None = None,
                   permutations: int = 9999, seed: int = 0) -> dict[str, Any]:
    """Align the suspect's signature layer to the ticket's (on the axes that can be permuted, from the
    layer's weights outside the window or from the layers around it, so the alignment knows nothing
    of the code; `_align_signature_layer`), count the window's
    matching data modules against the permutation null, and decode the window. `key` is the
    whitening key the code was written with, if any; the returned window is un-whitened.

    Returns JSON types: `p_value`, `module_test`, `decoded` (the payload text or None), `alignment`,
    the placement, and the window as rows of "0"/"1"."""
    layer = placement.layer
    block = (slice(placement.row, placement.row + code.size), slice(placement.col, placement.col + code.size))
    alignment, aligned_by = _align_signature_layer(arch, layer, block, ticket_weights, suspect_weights, suspect_mask)
    rows, cols = permutable_axes(arch, layer)
    written = whiten(code, key) if key is not None else code
    test = module_test(suspect_mask, written, placement, alignment=alignment, permute_rows=rows,
                       permute_cols=cols, permutations=permutations, seed=seed)
    # un-whiten the window (XOR with the same flips) so it reads as the plain code
    window = read_window(suspect_mask, code, placement, alignment) ^ (written.dark ^ code.dark)
    return {"p_value": test.p_value, "module_test": asdict(test) | {"agreement": test.agreement},
            "decoded": decode_window(window, code),
            "alignment": {"by": aligned_by, "identity": alignment.identity}
            | ({"quality": alignment.quality} if aligned_by == "layer" else {}),
            "layer": layer, "row": placement.row, "col": placement.col,
            "window": ["".join("1" if v else "0" for v in row) for row in window.tolist()]}


def _align_signature_layer(arch: str, layer: str, block: tuple[slice, slice], ticket_weights: dict[str, torch.Tensor],
                           suspect_weights: dict[str, torch.Tensor], suspect_mask: Mask) -> tuple[Alignment, str]:
    """The signature layer's alignment, blind to the window: from the layer's own weights
    (`align_layer`) and from the other layers that index its units (`align_units`), whichever shares more
    kept weights with the ticket outside the window (on a tie the network's). The layer's own weights
    can mislead where a dense copy was cut back to the ticket's density (lenet300_100, pruned weights
    revived at 0.2 of the kept ones' mean magnitude, permuted and rescaled: module p 0.24-0.83 from the
    layer, 1e-4 from the network over 6 placements; at 0.3, 0.02-0.67 against 1e-4);
    the network's can where the layers around it were changed and the layer was not."""
    rows, cols = permutable_axes(arch, layer)
    masked = {name: suspect_weights[name] * keep for name, keep in suspect_mask.items() if name in suspect_weights}
    own = align_layer(ticket_weights[layer], masked[layer], align_rows=rows, align_cols=cols, exclude=block)
    suspect = {name: masked.get(name, suspect_weights.get(name)) for name in ticket_weights}
    groups = {name: axes for name, axes in layer_groups(arch, ticket_weights).items()
              if suspect.get(name) is not None and suspect[name].shape == ticket_weights[name].shape}
    if layer not in groups:
        return own, "layer"
    perms = align_units(ticket_weights, suspect, groups, exclude={layer})
    if any(group is not None and group not in perms for group in groups[layer]):
        return own, "layer"  # no other layer of the suspect indexes that side (a replaced head, say)
    network = layer_alignment(perms, groups[layer], tuple(ticket_weights[layer].shape))
    if shared_kept(ticket_weights[layer], masked[layer], network, block) >= shared_kept(
            ticket_weights[layer], masked[layer], own, block):
        return network, "network"
    return own, "layer"


def signature_read_mask(ticket_mask: Mask, suspect_weights: dict[str, torch.Tensor],
                        suspect_mask: Mask | None = None, *,
                        estimated: tuple[Mask, list[str], bool] | None = None) -> Mask:
    """The suspect's mask the QR test reads: a declared mask (AND nonzero) as given; a dense suspect
    cut back to the ticket's density by balanced magnitude (`verifier.topology.estimate_suspect_mask`;
    `estimated` is its result where the caller has it already); otherwise its own nonzeros. A sparse
    suspect's code is read from its nonzeros: weights added back (the add-on attack) flip only the
    dark modules they land on, whereas cutting the layer back to the ticket's density would drop the
    code's smallest weights (those the code turned on) and flip far more."""
    if estimated is None:
        estimated = estimate_suspect_mask(ticket_mask, suspect_weights, suspect_mask, balanced=True)
    mask, _, dense = estimated
    return mask if dense or suspect_mask is not None else mask_from_weights(suspect_weights, list(mask))
