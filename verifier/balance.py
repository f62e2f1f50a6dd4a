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
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import lsqr

TOLERANCE = 1e-12  # lsqr's relative tolerances: the fitted log scales are exact to about this
SWEEPS = 2  # energy sweeps after the log-norm fit (more drift towards Sinkhorn's limit, which may not exist)


def balance(w: np.ndarray, *, sweeps: int = SWEEPS) -> np.ndarray:
    """`w` (out, in, k) float64 rescaled per row and column to a canonical form: the log-norm fit
    (`log_balance`), then `sweeps` Sinkhorn sweeps on the cells' energies. Zero cells stay zero.
    Exactly invariant (to lsqr's tolerance) to a positive scaling of rows and columns of `w`,
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
    scale exp(a_o + b_i); zero cells stay zero. Exactly invariant (to lsqr's tolerance) to a positive
    scaling of rows and columns of `w`, equivariant to permutations of either."""
    norms = np.sqrt((w * w).sum(axis=2))
    rows, cols = np.nonzero(norms)
    if len(rows) == 0:
        return w.copy()
    out_channels, in_channels = norms.shape
    cells = np.arange(len(rows))
    design = coo_matrix((np.ones(2 * len(rows)), (np.concatenate([cells, cells]),
                                                  np.concatenate([rows, out_channels + cols]))),
                        shape=(len(rows), out_channels + in_channels)).tocsr()
    target = np.log(norms[rows, cols])
    solution = lsqr(design, target, atol=TOLERANCE, btol=TOLERANCE, iter_lim=20 * (out_channels + in_channels))[0]
    fitted = design @ solution
    out = np.zeros_like(w)
    out[rows, cols] = w[rows, cols] * np.exp(-fitted)[:, None]
    return out
