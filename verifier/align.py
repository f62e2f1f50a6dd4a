"""Channel alignment: undo a function-preserving permutation of a layer's channels before comparing.

Permuting a hidden layer's output channels (with its BatchNorm and the next layer's inputs) leaves a
network's function unchanged and scrambles every position-based comparison, a QR window included.
`align_layer` recovers the permutation of one layer's rows (output channels) and columns (input
channels) against the registered ticket by assignment (scipy's linear_sum_assignment): first on
permutation-invariant row and column profiles (each row's sorted magnitudes do not depend on how
the columns are ordered), then by alternating elementwise matching of rows given the columns and
columns given the rows, which is far sharper once one side is right. The search runs on the raw
weights and on balanced ones (`verifier.balance.log_balance`), so that a per-unit positive
rescaling or a folded BatchNorm, which multiplies rows and columns by positive factors without
changing the function, cannot hide a copy; the alignment under which the masks share more kept
weights wins."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from verifier.balance import log_balance


@dataclass(frozen=True)
class Alignment:
    """`rows[i]` is the suspect row that matches ticket row i (likewise `cols`); `quality` is the mean
    cosine similarity of matched rows after alignment (1 for an exact permuted copy, near 0 for an
    unrelated layer)."""

    rows: np.ndarray
    cols: np.ndarray
    quality: float

    @property
    def identity(self) -> bool:
        return bool((self.rows == np.arange(len(self.rows))).all() and (self.cols == np.arange(len(self.cols))).all())

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        """The suspect's tensor (rows, cols, ...) reordered into the ticket's channel order."""
        return tensor[torch.from_numpy(self.rows)][:, torch.from_numpy(self.cols)]


def _as_matrix(weight: torch.Tensor) -> np.ndarray:
    """(out, in, k...) -> float64 (out, in, k) with the kernel flattened last."""
    w = weight.detach().to(torch.float64).cpu()
    return w.reshape(w.shape[0], w.shape[1], -1).numpy()


def _balanced_matrix(weight: torch.Tensor) -> np.ndarray:
    """`_as_matrix`, balanced per row and column (`verifier.balance.log_balance`)."""
    return log_balance(_as_matrix(weight))


def _profiles(w: np.ndarray, axis: int) -> np.ndarray:
    """Per row (axis 0) or column (axis 1): its magnitudes sorted, invariant to the other axis' order."""
    moved = np.moveaxis(np.abs(w), axis, 0).reshape(w.shape[axis], -1)
    return np.sort(moved, axis=1)[:, ::-1]


def _assign(similarity: np.ndarray) -> np.ndarray:
    """perm[i] = the suspect index assigned to ticket index i, maximising total similarity. Exact ties
    (channels with nothing to tell them apart, such as all-zero ones) keep their own position."""
    rows, cols = linear_sum_assignment(similarity + 1e-9 * np.eye(len(similarity)), maximize=True)
    perm = np.empty(similarity.shape[0], dtype=np.int64)
    perm[rows] = cols
    return perm


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity between every row of a and every row of b."""
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return an @ bn.T


def _hide(s: np.ndarray, rows: np.ndarray, cols: np.ndarray, exclude: tuple[slice, slice] | None) -> np.ndarray:
    """The suspect with the block that the current alignment maps onto the excluded one zeroed, so
    both sides leave the same cells out."""
    if exclude is None:
        return s
    hidden = s.copy()
    hidden[np.ix_(rows[exclude[0]], cols[exclude[1]])] = 0.0
    return hidden


def _refine(t: np.ndarray, s: np.ndarray, rows: np.ndarray, cols: np.ndarray, *, iterations: int,
            align_rows: bool, align_cols: bool, exclude: tuple[slice, slice] | None) -> tuple[np.ndarray, np.ndarray]:
    """Alternate matching columns given the rows and rows given the columns until nothing changes."""
    out_channels, in_channels = t.shape[:2]
    for _ in range(iterations):
        previous = (rows.copy(), cols.copy())
        if align_cols:  # columns given rows: compare each column over the matched rows
            by_col = np.moveaxis(_hide(s, rows, cols, exclude)[rows], 1, 0).reshape(in_channels, -1)
            cols = _assign(_cosine(np.moveaxis(t, 1, 0).reshape(in_channels, -1), by_col))
        if align_rows:  # rows given columns
            by_row = _hide(s, rows, cols, exclude)[:, cols].reshape(out_channels, -1)
            rows = _assign(_cosine(t.reshape(out_channels, -1), by_row))
        if np.array_equal(previous[0], rows) and np.array_equal(previous[1], cols):
            break
    return rows, cols


def _fit(t: np.ndarray, s: np.ndarray, rows: np.ndarray, cols: np.ndarray,
         exclude: tuple[slice, slice] | None) -> float:
    """Mean cosine similarity of matched rows, the excluded block left out on both sides."""
    aligned = _hide(s, rows, cols, exclude)[rows][:, cols].reshape(t.shape[0], -1)
    return float(np.diag(_cosine(t.reshape(t.shape[0], -1), aligned)).mean())


def _search(t: np.ndarray, s: np.ndarray, *, iterations: int, align_rows: bool, align_cols: bool,
            exclude: tuple[slice, slice] | None) -> tuple[np.ndarray, np.ndarray, float]:
    """(rows, cols, quality) of one representation of the two layers (`t` with its window zeroed)."""
    out_channels, in_channels = t.shape[:2]
    rows, cols = np.arange(out_channels), np.arange(in_channels)
    if align_rows:
        rows = _assign(_cosine(_profiles(t, 0), _profiles(s, 0)))
    if align_cols:
        cols = _assign(_cosine(_profiles(t, 1), _profiles(s, 1)))
    refine = {"iterations": iterations, "align_rows": align_rows, "align_cols": align_cols, "exclude": exclude}
    rows, cols = _refine(t, s, rows, cols, **refine)
    if exclude is not None:
        # The profiles above see the suspect's window but not the ticket's, which can lead the search
        # away from a copy left in place. So a suspect that already fits, unpermuted, at least as well
        # as the alignment found is refined from there instead. An independent suspect never does
        # (unpermuted it fits about 0.01, aligned 0.1-0.25), so its alignment, and the null the
        # false-positive runs measured, stay those of the single start.
        unpermuted = (np.arange(out_channels), np.arange(in_channels))
        if _fit(t, s, *unpermuted, exclude) >= _fit(t, s, rows, cols, exclude):
            rows, cols = _refine(t, s, *unpermuted, **refine)
    aligned = s[rows][:, cols].reshape(out_channels, -1)
    return rows, cols, float(np.diag(_cosine(t.reshape(out_channels, -1), aligned)).mean())


def _shared_cells(t: np.ndarray, s: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                  exclude: tuple[slice, slice] | None) -> int:
    """Kept weights the ticket and the aligned suspect share, the excluded block left out on both sides:
    a fit that no rescaling of either side changes."""
    return int(((t != 0) & (_hide(s, rows, cols, exclude)[rows][:, cols] != 0)).sum())


def align_layer(ticket_weight: torch.Tensor, suspect_weight: torch.Tensor, *, iterations: int = 8,
                align_rows: bool = True, align_cols: bool = True,
                exclude: tuple[slice, slice] | None = None) -> Alignment:
    """Recover the suspect's row and column permutations of one conv or linear weight against the ticket's.

    A side that cannot be permuted (the network's input pixels, its class outputs) is held fixed with
    `align_rows=False` or `align_cols=False`. `exclude` = (ticket rows, ticket columns) leaves that
    block of the ticket out of the matching (a signature window: the alignment then knows nothing of
    the code, so it cannot pull an unrelated suspect towards it). The ticket's and the suspect's
    weights must have the same shape; pruned weights are zeros in either.

    The search runs twice, on the raw weights and on the balanced ones, and keeps the alignment under
    which the two masks share more kept weights (outside `exclude`): a copy whose units were rescaled
    is found by the balanced search, which no rescaling changes; a copy that was only fine-tuned or
    pruned further keeps the raw search's alignment, which the changed support disturbs least.
    """
    if ticket_weight.shape != suspect_weight.shape:
        raise ValueError(f"shapes differ: ticket {tuple(ticket_weight.shape)}, suspect {tuple(suspect_weight.shape)}")
    best = None
    for view in (_as_matrix, _balanced_matrix):
        t, s = view(ticket_weight), view(suspect_weight)
        if exclude is not None:
            t = t.copy()
            t[exclude] = 0.0
        rows, cols, quality = _search(t, s, iterations=iterations, align_rows=align_rows, align_cols=align_cols,
                                      exclude=exclude)
        shared = _shared_cells(t, s, rows, cols, exclude)
        if best is None or shared > best[0]:
            best = (shared, rows, cols, quality)
    return Alignment(rows=best[1], cols=best[2], quality=best[3])
