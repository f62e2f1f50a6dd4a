"""A canonical scale for a layer's weights: undo a function-preserving per-unit rescaling.

ReLU is positively homogeneous, so scaling a hidden unit's incoming weights (and bias) by s > 0 and
its outgoing weights by 1/s leaves a network's function unchanged; so does folding a BatchNorm into
the conv before it (its rows scaled by gamma / sd). Either multiplies a layer's weight W[o, i, :] by
r_o * c_i for positive r and c, which distorts every comparison of raw weights (cosines, sorted
magnitudes, singular values).

`balance` removes that freedom exactly. On the cells (o, i) the layer keeps, it fits the two-way
additive model log ||W[o, i, :]|| ~ a_o + b_i by least squares and divides each cell by exp(a_o + b_i).
A rescaling adds log r_o + log c_i to every cell's log norm, which the fit absorbs in full (the fitted
values of a least-squares fit are unique even where a_o and b_i are not), so W and D_r W D_c balance
to the same matrix; permuting rows or columns permutes the balanced matrix the same way, so
alignment works on it. The balanced cells' log norms are the fit's residuals: they average 0, which
fixes the one common factor too.

A log-norm fit weighs every kept cell alike, so a few tiny weights (revived by an add-on attack) or
the smallest ones pruned away move it. Two Sinkhorn sweeps on the cells' energies follow (rows, then
columns, scaled to equal energy sums), which the large weights dominate; they start from the fit's
invariant output, so the result stays exactly invariant. (Sinkhorn alone converges to an invariant
limit only where the sparsity pattern has total support, which pruned layers often lack; a few
sweeps from an invariant start need no such condition.)
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import solve
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

SWEEPS = 2  # energy sweeps after the log-norm fit (more drift towards Sinkhorn's limit, which may not exist)


def balance(w: np.ndarray, *, sweeps: int = SWEEPS) -> np.ndarray:
    """`w` (out, in, k) float64 rescaled per row and column to a canonical form: the log-norm fit
    (`log_balance`), then `sweeps` Sinkhorn sweeps on the cells' energies. Zero cells stay zero.
    Exactly invariant (to rounding) to a positive scaling of rows and columns of `w`,
    equivariant to permutations of either."""
    out = log_balance(w)
    energy = (out * out).sum(axis=2)
    rows, cols = energy.sum(axis=1) > 0, energy.sum(axis=0) > 0
    live = energy[np.ix_(rows, cols)]
    r, c = np.ones(live.shape[0]), np.ones(live.shape[1])
    for _ in range(sweeps):
        r = live.shape[1] / (live @ c)
        c = live.shape[0] / (live.T @ r)
    out[np.ix_(rows, cols)] *= (np.sqrt(r)[:, None] * np.sqrt(c)[None, :])[..., None]
    return out


def log_balance(w: np.ndarray) -> np.ndarray:
    """`w` (out, in, k) float64 with every kept cell W[o, i, :] divided by its fitted row and column
    scale exp(a_o + b_i); zero cells stay zero. Exactly invariant (to rounding) to a positive scaling
    of rows and columns of `w`, equivariant to permutations of either.

    The least-squares normal equations are solved with the larger side eliminated: what is left is a
    graph Laplacian over the smaller side, singular by one constant per connected part of the layer
    (it moves between the sides without changing a fitted value), so one unit per part is held at 0
    and the rest, positive definite, is solved by Cholesky. The fitted values are unique."""
    norms = np.sqrt(np.einsum("oik,oik->oi", w, w))
    nonzero = norms > 0
    live_rows, live_cols = nonzero.any(axis=1), nonzero.any(axis=0)
    if not live_rows.any():
        return np.zeros_like(w)
    log_norms = np.log(norms, out=np.zeros_like(norms), where=nonzero)
    kept = nonzero.astype(np.float64)
    everything = live_rows.all() and live_cols.all()
    if not everything:
        log_norms, kept = log_norms[np.ix_(live_rows, live_cols)], kept[np.ix_(live_rows, live_cols)]
    transposed = kept.shape[0] < kept.shape[1]  # eliminate the larger side, which is then the rows
    if transposed:
        kept, log_norms = kept.T, log_norms.T
    row_degree, col_degree = kept.sum(axis=1), kept.sum(axis=0)
    row_sums, col_sums = log_norms.sum(axis=1), log_norms.sum(axis=0)
    incidence = csr_matrix(kept)
    schur = np.diag(col_degree) - (incidence.T @ incidence.multiply(1.0 / row_degree[:, None])).toarray()
    rhs = col_sums - kept.T @ (row_sums / row_degree)
    _, part = connected_components(csr_matrix(schur != 0), directed=False)
    free = np.ones(len(rhs), dtype=bool)
    free[np.unique(part, return_index=True)[1]] = False  # the first unit of each part is held at 0
    b = np.zeros(len(rhs))
    if free.any():
        b[free] = solve(schur[np.ix_(free, free)], rhs[free], assume_a="pos")
    a = (row_sums - kept @ b) / row_degree
    fitted = a[:, None] + b[None, :]
    if transposed:
        fitted = fitted.T
    if everything:
        scale = np.exp(-fitted) * nonzero
    else:
        scale = np.zeros(norms.shape)
        scale[np.ix_(live_rows, live_cols)] = np.exp(-fitted)
    return w * scale[..., None]
