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

    p_value: float  # the smaller of `cantelli_tail` and `kurtosis_tail` at the null's estimated mean and spread
    p_empirical: float  # (1 + #references >= observed) / (1 + n), on scaled residuals where adjusted for density
    bound: str  # what p_value rests on
    z: float  # (observed - mean) / sd of the references, for reading
    references: int
    reference_mean: float  # the null's mean the bound uses (at the suspect's density where adjusted)
    reference_std: float  # the references' sd (their residual sd where adjusted)
    spread_bound: float  # the sd the bound uses
    density_adjusted: bool = False  # mean and sd read off a fit of the statistic on log density
    density_slope: float | None = None  # the fit's slope: the statistic per unit of log density
    suspect_density: float | None = None
    reference_densities: tuple[float, float] | None = None  # the references' smallest and largest density

    def to_dict(self) -> dict:
        return asdict(self)


CALIBRATION_ASSUMES = ("the null's mean and sd are at most the references' mean and their sd's "
                       f"{SPREAD_CONFIDENCE:.0%} upper confidence bound (inflated by sqrt(1 + 1/n) for a new draw), "
                       f"and its kurtosis at most {KURTOSIS_CAP:g} (a normal's is 3)")
DENSITY_ASSUMES = ("at the suspect's density the null's mean is the references' linear fit on log density and its "
                   f"sd at most their residual sd's {SPREAD_CONFIDENCE:.0%} upper confidence bound (inflated for a new "
                   f"draw and the fit's error there), and its kurtosis at most {KURTOSIS_CAP:g} (a normal's is 3)")
DENSITY_MARGIN = 1.1  # a suspect's density may lie this factor beyond the references' densities, no further
FIT_MIN_REFERENCES = 4  # fewer references, or densities spanning less than DENSITY_MARGIN: the plain mean and sd


def spread_order(densities: Sequence[float]) -> list[int]:
    """The order in which candidate references (given most preferred first, e.g. most recent) are
    taken: the sparsest and the densest first, then the rest as given, so that the references span
    the densities a suspect can be read at (`calibrated_p` reads none beyond them)."""
    if not len(densities):
        return []
    ends = [int(np.argmin(densities)), int(np.argmax(densities))]
    return list(dict.fromkeys(ends + list(range(len(densities)))))


class DensityOutsideReferences(ValueError):
    """The suspect's density lies outside what the references cover: they say nothing about its null."""


def calibrated_p(observed: float, references: Sequence[float], *, densities: Sequence[float] | None = None,
                 suspect_density: float | None = None) -> Calibration:
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
    larger.

    The statistic depends on the suspect's density (on resnet20 a suspect at half the ticket's
    density overlaps it more after alignment), so with `densities` (each reference's share of kept
    weights) and `suspect_density` the null is read at the suspect's density: the references'
    statistics are fitted on log density by least squares, the mean is the fit there and the spread
    the residual sd, widened by the prediction factor sqrt(1 + 1/n + (x - mean x)^2 / Sxx).
    References whose densities span less than DENSITY_MARGIN are taken as of one density (the plain
    mean and sd: a slope fitted on them would be noise). A suspect beyond the references' densities
    by more than DENSITY_MARGIN raises `DensityOutsideReferences`: no reference speaks for it."""
    refs = np.asarray(references, dtype=np.float64)
    n = len(refs)
    if n < 2:
        raise ValueError("calibration needs at least 2 references")
    if densities is None:
        return _plain(observed, refs)
    if suspect_density is None or len(densities) != n:
        raise ValueError("a density adjustment needs every reference's density and the suspect's")
    x, x0 = np.log(np.asarray(densities, dtype=np.float64)), float(np.log(suspect_density))
    span = (float(np.exp(x.min())), float(np.exp(x.max())))
    if not x.min() - np.log(DENSITY_MARGIN) <= x0 <= x.max() + np.log(DENSITY_MARGIN):
        raise DensityOutsideReferences(
            f"the suspect keeps {suspect_density:.1%} of its weights, the references {span[0]:.1%}-{span[1]:.1%}: "
            f"none within a factor {DENSITY_MARGIN:g} of it")
    sxx = float(((x - x.mean()) ** 2).sum())
    where = {"suspect_density": float(suspect_density), "reference_densities": span}
    if n < FIT_MIN_REFERENCES or x.max() - x.min() < np.log(DENSITY_MARGIN):  # too narrow to fit a slope on
        return _plain(observed, refs, **where)
    slope = float(((x - x.mean()) * (refs - refs.mean())).sum() / sxx)
    fitted = refs.mean() + slope * (x - x.mean())
    mean = float(refs.mean() + slope * (x0 - x.mean()))
    residuals = refs - fitted
    sd = float(np.sqrt((residuals ** 2).sum() / (n - 2)))
    leverage = 1 / n + (x - x.mean()) ** 2 / sxx
    inflation = np.sqrt(1 + 1 / n + (x0 - x.mean()) ** 2 / sxx)  # a new draw, and the fit's error at x0
    # the rank p compares like with like: each reference's residual scaled by its own sd (an in-sample
    # residual has sd sqrt(1 - h) of the noise's), the suspect's by a new draw's
    scaled = residuals / np.sqrt(np.maximum(1 - leverage, 1e-12))
    p_empirical = (1 + int((scaled >= (observed - mean) / inflation).sum())) / (1 + n)
    if sd <= 1e-12 * max(1.0, abs(mean)):  # residuals at rounding level: no spread to extrapolate from
        return Calibration(p_value=p_empirical, p_empirical=p_empirical, z=0.0 if observed <= mean else float("inf"),
                           bound="rank among the references' residuals (they have no spread)", references=n,
                           reference_mean=mean, reference_std=0.0, spread_bound=0.0, density_adjusted=True,
                           density_slope=slope, **where)
    spread = sd * np.sqrt((n - 2) / chi2.ppf(1 - SPREAD_CONFIDENCE, n - 2)) * inflation
    return Calibration(p_value=_moment_p(observed, mean, float(spread)), p_empirical=p_empirical,
                       bound=f"{MOMENT_BOUNDS}; assumes {DENSITY_ASSUMES}", z=(observed - mean) / sd, references=n,
                       reference_mean=mean, reference_std=sd, spread_bound=float(spread), density_adjusted=True,
                       density_slope=slope, **where)


def _moment_p(observed: float, mean: float, spread: float) -> float:
    return min(cantelli_tail(observed, mean, spread), kurtosis_tail(observed, mean, spread, KURTOSIS_CAP))


def _plain(observed: float, refs: np.ndarray, **where) -> Calibration:
    """`calibrated_p` on the references' mean and sd, without a density fit."""
    n = len(refs)
    mean, sd = float(refs.mean()), float(refs.std(ddof=1))
    p_empirical = (1 + int((refs >= observed).sum())) / (1 + n)
    if refs.max() > refs.min():
        z = (observed - mean) / sd
        spread = sd * np.sqrt((n - 1) / chi2.ppf(1 - SPREAD_CONFIDENCE, n - 1)) * np.sqrt(1 + 1 / n)
        p_value, bound = _moment_p(observed, mean, float(spread)), f"{MOMENT_BOUNDS}; assumes {CALIBRATION_ASSUMES}"
    else:  # identical references (duplicates): no spread to extrapolate from, the rank p is all there is
        z, spread = (0.0 if observed <= mean else float("inf")), 0.0
        p_value, bound = p_empirical, "rank among the references (they have no spread)"
    return Calibration(p_value=p_value, p_empirical=p_empirical, bound=bound, z=float(z), references=n,
                       reference_mean=mean, reference_std=sd, spread_bound=float(spread), **where)
