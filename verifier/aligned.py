"""The topology test for tickets without a signature: mask overlap after channel alignment, judged
against independently found tickets.

A function-preserving permutation of hidden channels scrambles a position-by-position mask
comparison, and the plain overlap test (`verifier.topology`) cannot see through it: its null
permutes hidden units, so a permuted copy looks exactly like the null. Here every prunable layer of
the suspect is first aligned to the ticket (`verifier.align.align_layer`, each layer on its own),
then the kept weights both share are counted. Alignment maximises similarity, so even an unrelated
suspect overlaps more than chance after it; the statistic is therefore judged against the same
statistic between the ticket and independently found tickets of the same architecture, dataset and
similar density (the references), not against random masks.

Statistic: Cohen-style kappa over all layers, (O - E) / (M - E), with O the kept weights both share
after alignment, E the overlap two random masks of the same layer densities would share, and M the
largest overlap possible (the smaller mask's count). 1 for an aligned copy, near 0 for chance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.stats import chi2

from verifier.align import align_layer
from verifier.masks import Mask
from verifier.tail_bounds import MOMENT_BOUNDS, cantelli_tail, kurtosis_tail

ITERATIONS = 2  # alternating row/column rounds per layer (align_layer's): enough for copies, cheap for a search
STATISTIC = f"aligned-kappa-{ITERATIONS}-balanced"  # names the statistic that stored references hold
SPREAD_CONFIDENCE = 0.99  # the bounds use the references' sd at this upper confidence bound
KURTOSIS_CAP = 10.0  # assumed at most this for the null of the aligned statistic (a normal's is 3)

@dataclass
class AlignedLayer:
    """One layer after alignment: shared, expected and largest possible kept weights; the alignment's quality."""

    name: str
    overlap: int
    expected: float
    maximum: int
    kappa: float
    quality: float


@dataclass
class AlignedOverlap:
    """`aligned_overlap`'s result: the pooled kappa and each layer's share."""

    kappa: float
    overlap: int
    expected: float
    maximum: int
    quality: float  # mean alignment quality over the layers (1: an exact permuted copy)
    layers: list[AlignedLayer]

    def to_dict(self) -> dict:
        return asdict(self)


def _kappa(overlap: float, expected: float, maximum: float) -> float:
    return (overlap - expected) / (maximum - expected) if maximum > expected else 0.0


def aligned_overlap(ticket_weights: dict[str, torch.Tensor], ticket_mask: Mask,
                    suspect_weights: dict[str, torch.Tensor], suspect_mask: Mask,
                    permutable: dict[str, tuple[bool, bool]], *, iterations: int = ITERATIONS) -> AlignedOverlap:
    """Align each of the ticket's layers in the suspect (rows and columns that `permutable` allows) on
    the masked weights, then count the kept weights the two masks share.

    Layers are aligned independently, which allows more than a real permutation could (a layer's
    output order must match the next layer's input order); the references pay the same allowance,
    so the comparison stays fair."""
    layers = []
    for name, keep in ticket_mask.items():
        t_keep, s_keep = keep.cpu().bool(), suspect_mask[name].cpu().bool()
        rows, cols = permutable[name]
        alignment = align_layer(ticket_weights[name].cpu() * t_keep, suspect_weights[name].cpu() * s_keep,
                                iterations=iterations, align_rows=rows, align_cols=cols)
        aligned = alignment.apply(s_keep)
        kept_t, kept_s = int(t_keep.sum()), int(s_keep.sum())
        overlap, expected = int((t_keep & aligned).sum()), kept_t * kept_s / t_keep.numel()
        maximum = min(kept_t, kept_s)
        layers.append(AlignedLayer(name, overlap, expected, maximum, _kappa(overlap, expected, maximum),
                                   alignment.quality))
    overlap, expected = sum(x.overlap for x in layers), sum(x.expected for x in layers)
    maximum = sum(x.maximum for x in layers)
    return AlignedOverlap(kappa=_kappa(overlap, expected, maximum), overlap=overlap, expected=expected,
                          maximum=maximum, quality=float(np.mean([x.quality for x in layers])) if layers else 0.0,
                          layers=layers)


@dataclass
class Calibration:
    """A statistic judged against references: the decision p, the rank p beside it, the z-score."""

    p_value: float  # the smaller of `cantelli_tail` and `kurtosis_tail` at the references' mean and spread
    p_empirical: float  # (1 + #references >= observed) / (1 + n): exact if the references are exchangeable
    bound: str  # what p_value rests on
    z: float  # (observed - mean) / sd of the references, for reading
    references: int
    reference_mean: float
    reference_std: float
    spread_bound: float  # the sd the bound uses

    def to_dict(self) -> dict:
        return asdict(self)


CALIBRATION_ASSUMES = ("the null's mean and sd are at most the references' mean and their sd's "
                       f"{SPREAD_CONFIDENCE:.0%} upper confidence bound (inflated by sqrt(1 + 1/n) for a new draw), "
                       f"and its kurtosis at most {KURTOSIS_CAP:g} (a normal's is 3)")


def calibrated_p(observed: float, references: Sequence[float]) -> Calibration:
    """p-value of `observed` against statistics of independent references (at least 2).

    Under the null the suspect is one more independent ticket, so its statistic is exchangeable with
    the references' and the rank p is exact, but it cannot go below 1/(1+n) (0.048 for 20
    references), which is no use to a verdict. The decision p is the smaller of two moment bounds:
    Cantelli's inequality (one-sided Chebyshev), P(X - mu >= t) <= s^2 / (s^2 + t^2), and Markov's
    on the fourth moment, P(X - mu >= t) <= K s^4 / t^4 for a null of kurtosis at most K =
    KURTOSIS_CAP; both hold for any null distribution of that mean, spread and kurtosis, tails far
    heavier than a normal's included: no normal tail is extrapolated. They rest on the references
    estimating the null's mean and spread, so the spread is taken at its upper SPREAD_CONFIDENCE
    bound (chi-square) and widened by sqrt(1 + 1/n) for the mean's own error, and on the kurtosis
    cap; the evidence states both (`bound`). A copy a hundred sds out gets p ~ 1e-7, not the 1e-27
    a fitted normal claimed. Identical references give no spread, only the rank p. A reference
    related to the ticket (a copy registered before it) widens the spread and can only make the p
    larger."""
    refs = np.asarray(references, dtype=np.float64)
    n = len(refs)
    if n < 2:
        raise ValueError("calibration needs at least 2 references")
    mean, sd = float(refs.mean()), float(refs.std(ddof=1))
    p_empirical = (1 + int((refs >= observed).sum())) / (1 + n)
    if refs.max() > refs.min():
        z = (observed - mean) / sd
        spread = sd * np.sqrt((n - 1) / chi2.ppf(1 - SPREAD_CONFIDENCE, n - 1)) * np.sqrt(1 + 1 / n)
        p_value = min(cantelli_tail(observed, mean, float(spread)),
                      kurtosis_tail(observed, mean, float(spread), KURTOSIS_CAP))
        bound = f"{MOMENT_BOUNDS}; assumes {CALIBRATION_ASSUMES}"
    else:  # identical references (duplicates): no spread to extrapolate from, the rank p is all there is
        z, spread = (0.0 if observed <= mean else float("inf")), 0.0
        p_value, bound = p_empirical, "rank among the references (they have no spread)"
    return Calibration(p_value=p_value, p_empirical=p_empirical, bound=bound, z=float(z), references=n,
                       reference_mean=mean, reference_std=sd, spread_bound=float(spread))
