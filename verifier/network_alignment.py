"""Aligning every hidden unit of a suspect to the ticket at once, through the layers that index it.

`verifier.align.align_layer` aligns one layer from its own weights. Where those weights are a poor
guide (a dense copy cut back to the ticket's density keeps only part of a signature layer's
weights, and the rest mislead), the layers around it still name its units: fc2's columns are fc1's
rows, which fc1's fixed input pixels pin down, and fc2's rows are fc3's columns, pinned by the fixed
classes. `align_units` matches each group of units (`verifier.units`) on every layer that indexes
it, weight matching in the manner of Ainsworth et al. (Git Re-Basin, 2023): first in an order where
each group is matched on layers whose other axis is fixed or already matched, then by coordinate
ascent on the summed inner products of all layers. Weights are balanced per row and column
(`verifier.balance.log_balance`), so no positive per-unit rescaling moves the result.
"""

from __future__ import annotations

import numpy as np
import torch

from verifier.align import Alignment, _assign, _shared_cells
from verifier.balance import log_balance
from verifier.units import LayerGroups

SWEEPS = 5  # rounds of coordinate ascent after the first pass; each stops early once nothing moves


def _cells(weight: torch.Tensor, units: int | None) -> np.ndarray:
    """A layer balanced and laid out as (rows, column units, rest): a flattened feature map's columns
    in equal blocks per unit, a conv's kernel positions in the rest."""
    w = weight.detach().to(torch.float64).cpu()
    matrix = w.reshape(w.shape[0], w.shape[1], -1).numpy()
    balanced = log_balance(matrix) if np.any(matrix) else matrix
    return balanced.reshape(w.shape[0], units or 1, -1)


def _similarity(group: int, layers: dict[str, tuple[np.ndarray, np.ndarray]], groups: dict[str, LayerGroups],
                perms: dict[int, np.ndarray], usable) -> np.ndarray | None:
    """Summed inner products of the ticket's and the suspect's slices for each pair of the group's
    units, over the layers `usable` admits (their other axis fixed or matched); None if none is."""
    total = None
    for name, (t, s) in layers.items():
        rows, cols = groups[name]
        for axis, other in ((0, cols), (1, rows)):
            if (rows, cols)[axis] != group or not usable(other):
                continue
            placed = s if other is None else (s[:, perms[other]] if axis == 0 else s[perms[other]])
            a, b = (np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1) for x in (t, placed))
            term = a @ b.T
            total = term if total is None else total + term
    return total


def align_units(ticket: dict[str, torch.Tensor], suspect: dict[str, torch.Tensor], groups: dict[str, LayerGroups],
                *, exclude: set[str] | frozenset[str] = frozenset(), sweeps: int = SWEEPS) -> dict[int, np.ndarray]:
    """For every unit group some compared layer indexes: perm[i] = the suspect unit matched to the
    ticket's unit i. `groups` from
    `verifier.units.layer_groups` (every weight layer, the unpruned first and last ones too: their
    fixed pixels and classes anchor the rest); both weight dicts hold each layer named there in the
    same shape (pruned weights zero). The layers in `exclude` are left out of the matching entirely
    (a signature layer: the alignment then knows nothing of the code, however the suspect was
    balanced), so each of their groups must be indexed by another layer too."""
    names = [name for name in groups if name in ticket and name in suspect and name not in exclude]
    sizes: dict[int, int] = {}
    for name in names:
        rows, cols = groups[name]
        if rows is not None:
            sizes[rows] = ticket[name].shape[0]
    for name in names:
        cols = groups[name][1]
        if cols is not None:
            sizes.setdefault(cols, ticket[name].shape[1])
    layers = {name: tuple(_cells(weights[name], sizes.get(groups[name][1])) for weights in (ticket, suspect))
              for name in names}
    perms: dict[int, np.ndarray] = {}
    pending = sorted(sizes)
    while pending:  # first pass: each group on the layers whose other side is already placed
        for group in pending:
            similarity = _similarity(group, layers, groups, perms, lambda other: other is None or other in perms)
            if similarity is not None:
                perms[group] = _assign(similarity)
                pending.remove(group)
                break
        else:  # nothing anchored (no fixed side anywhere): start the rest from the identity
            perms.update({group: np.arange(sizes[group]) for group in pending})
            pending = []
    for _ in range(sweeps):
        moved = False
        for group in sorted(sizes):
            better = _assign(_similarity(group, layers, groups, perms, lambda other: True))
            moved |= not np.array_equal(better, perms[group])
            perms[group] = better
        if not moved:
            break
    return perms


def layer_alignment(perms: dict[int, np.ndarray], groups: LayerGroups, shape: tuple[int, ...]) -> Alignment:
    """One layer's rows and columns under `align_units`' permutations (a fixed side stays in order; a
    flattened feature map's columns move in blocks with their channel); quality NaN (no cosine was taken)."""
    rows, cols = groups
    if cols is None:
        columns = np.arange(shape[1])
    else:
        block = shape[1] // len(perms[cols])
        columns = (perms[cols][:, None] * block + np.arange(block)).reshape(-1)
    return Alignment(rows=perms[rows] if rows is not None else np.arange(shape[0]), cols=columns,
                     quality=float("nan"))


def shared_kept(ticket: torch.Tensor, suspect: torch.Tensor, alignment: Alignment,
                exclude: tuple[slice, slice] | None = None) -> int:
    """Kept weights (nonzero kernels) the ticket's layer and the aligned suspect's share, `exclude` left
    out on both sides: the scale-free fit by which two alignments of one layer are compared."""
    t, s = (w.detach().reshape(w.shape[0], w.shape[1], -1).abs().sum(-1).cpu().numpy() for w in (ticket, suspect))
    if exclude is not None:
        t = t.copy()
        t[exclude] = 0.0
    return _shared_cells(t, s, alignment.rows, alignment.cols, exclude)
