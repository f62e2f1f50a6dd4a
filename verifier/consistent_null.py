"""The topology test's null: every group of hidden units relabelled by one random permutation, in
every layer that indexes it (`verifier.units`). An independently trained network's units have no
identity, so its distribution does not change under such a relabelling; relabelling each layer on
its own (fc2's rows one way, fc3's columns another) is not a relabelling of any network, and its
spread is narrower than the real null's (about 11 % on lenet300_100), which overstated z.

Statistic: kept weights shared with the ticket, summed over the layers. A layer with one moving
axis is Hoeffding's combinatorial statistic sum_u C[u, pi(u)] over its unit-overlap matrix C; a
layer with both axes moving (fc2, every ResNet conv) is a quadratic assignment, counted cell by
cell. `NullLayers.bound_terms` gives each layer's terms for `verifier.tail_bounds.union_tail`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from verifier.tail_bounds import TermBound
from verifier.units import LayerGroups

GATHER_BUDGET = 1 << 22  # cells gathered at once for the quadratic layers (32 MiB of indices)
EXACT_ASSIGNMENT_UP_TO = 1024  # units; past this the conditional mean is bounded by row/column maxima


def _as_cells(mask: torch.Tensor, groups: LayerGroups, sizes: dict[int, int]) -> np.ndarray:
    """The mask as (rows, column units, rest): a flattened feature map's columns in equal blocks per
    unit of the group that moves them, a conv's kernel positions as the rest."""
    rows = mask.shape[0]
    units = sizes[groups[1]] if groups[1] is not None else 1
    return mask.reshape(rows, units, -1).numpy()


@dataclass
class _Layer:
    groups: LayerGroups
    observed: int
    ticket: np.ndarray  # (rows, units, rest) booleans
    suspect: np.ndarray
    overlaps: np.ndarray | None = None  # one moving axis: C[u, v], ticket unit u against suspect unit v
    cells: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # both moving: the ticket's kept cells

    @property
    def moving(self) -> bool:
        return self.groups != (None, None)


class NullLayers:
    """The layers of one ticket/suspect pair, ready to draw relabelled overlaps from."""

    def __init__(self, ticket: dict[str, torch.Tensor], suspect: dict[str, torch.Tensor],
                 groups: dict[str, LayerGroups]) -> None:
        self.sizes: dict[int, int] = {}
        for name, (rows, _) in groups.items():
            if rows is not None and name in ticket:
                self.sizes[rows] = ticket[name].shape[0]
        for name, (_, cols) in groups.items():
            if cols is not None and name in ticket:
                self.sizes.setdefault(cols, ticket[name].shape[1])
        self.layers: list[_Layer] = []
        for name, keep in ticket.items():
            g = groups.get(name, (None, None))
            t = _as_cells(keep.cpu().bool(), g, self.sizes)
            s = _as_cells(suspect[name].cpu().bool(), g, self.sizes)
            layer = _Layer(g, int((t & s).sum()), t, s)
            if g[0] is not None and g[1] is not None:
                layer.cells = np.nonzero(t)
            elif g[0] is not None:
                layer.overlaps = t.reshape(t.shape[0], -1).astype(np.float64) @ s.reshape(s.shape[0], -1).T.astype(
                    np.float64)
            elif g[1] is not None:
                tc, sc = np.moveaxis(t, 1, 0), np.moveaxis(s, 1, 0)
                layer.overlaps = tc.reshape(tc.shape[0], -1).astype(np.float64) @ sc.reshape(
                    sc.shape[0], -1).T.astype(np.float64)
            self.layers.append(layer)

    @property
    def cells_per_draw(self) -> int:
        """What one draw gathers: the kept cells of the layers both of whose axes move, and one entry
        per unit of the others."""
        return sum(len(layer.cells[0]) if layer.cells is not None else
                   (layer.overlaps.shape[0] if layer.overlaps is not None else 0) for layer in self.layers)

    @property
    def observed(self) -> int:
        return sum(layer.observed for layer in self.layers)

    @property
    def constant(self) -> int:
        """Overlap of the layers no relabelling moves."""
        return sum(layer.observed for layer in self.layers if not layer.moving)

    def expected(self) -> float:
        """The null mean: each moving axis uniformly relabelled."""
        total = 0.0
        for layer in self.layers:
            if not layer.moving:
                total += layer.observed
            elif layer.overlaps is not None:
                total += layer.overlaps.sum() / layer.overlaps.shape[0]
            else:
                t, s = layer.ticket, layer.suspect
                rest = (t.sum(axis=(0, 1)) * s.sum(axis=(0, 1))).sum()
                total += rest / (t.shape[0] * t.shape[1])
        return float(total)

    def draw(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """Total overlap under `size` random relabellings, one permutation per group per draw."""
        perms = {g: np.argsort(rng.random((size, n)), axis=1) for g, n in self.sizes.items()}
        total = np.full(size, float(self.constant))
        for layer in self.layers:
            rows, cols = layer.groups
            if layer.overlaps is not None:
                order = perms[rows if rows is not None else cols]
                total += layer.overlaps[np.arange(order.shape[1]), order].sum(axis=1)
            elif layer.cells is not None:
                total += self._quadratic(layer, perms[rows], perms[cols])
        return total

    @staticmethod
    def _quadratic(layer: _Layer, row_perms: np.ndarray, col_perms: np.ndarray) -> np.ndarray:
        o, i, k = layer.cells
        suspect = layer.suspect.reshape(-1)
        units, rest = layer.suspect.shape[1], layer.suspect.shape[2]
        step = max(1, GATHER_BUDGET // max(1, len(o)))
        out = np.empty(row_perms.shape[0])
        for start in range(0, row_perms.shape[0], step):
            r, c = row_perms[start:start + step], col_perms[start:start + step]
            index = (r[:, o] * units + c[:, i]) * rest + k
            out[start:start + step] = suspect[index].sum(axis=1)
        return out

    def bound_terms(self) -> list[TermBound] | None:
        """Each moving layer as a term of `union_tail`, or None where a layer's rows and columns are the
        same group (no bound is derived for that case). One moving axis: Hoeffding's statistic over C.
        Both: given the column relabelling, a Hoeffding statistic over the rows (`_conditional_view`),
        or the other way round; the smaller bound is used."""
        terms = []
        for layer in self.layers:
            if not layer.moving:
                continue
            if layer.overlaps is not None:
                c = layer.overlaps
                terms.append(TermBound(layer.observed, ((float(c.sum() / c.shape[0]), float(c.max())),)))
                continue
            if layer.groups[0] == layer.groups[1]:
                return None
            terms.append(TermBound(layer.observed, (_conditional_view(layer.ticket, layer.suspect),
                                                    _conditional_view(layer.ticket.swapaxes(0, 1),
                                                                      layer.suspect.swapaxes(0, 1)))))
        return terms


def _conditional_view(t: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """(mean bound, scale) of a quadratic layer seen as Hoeffding's statistic over its first axis given
    any relabelling of its second: entries at most the largest unit's kept count (the smaller of the
    ticket's and the suspect's largest), mean at most the largest conditional mean."""
    scale = float(min(t.sum(axis=(1, 2)).max(), s.sum(axis=(1, 2)).max()))
    means = (t.sum(axis=0).astype(np.float64) @ s.sum(axis=0).T.astype(np.float64)) / t.shape[0]
    return _largest_assignment(means), scale


def _largest_assignment(matrix: np.ndarray) -> float:
    """max over permutations pi of sum_i matrix[i, pi(i)]: exact up to EXACT_ASSIGNMENT_UP_TO units, an
    upper bound (the smaller of the row-maxima and column-maxima sums) past it."""
    if matrix.shape[0] <= EXACT_ASSIGNMENT_UP_TO:
        rows, cols = linear_sum_assignment(matrix, maximize=True)
        return float(matrix[rows, cols].sum())
    return float(min(matrix.max(axis=1).sum(), matrix.max(axis=0).sum()))
