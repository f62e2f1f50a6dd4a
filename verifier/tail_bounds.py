"""Tail bounds that let a p-value go below what its Monte Carlo draws or references can resolve.

A permutation p from B draws can go no lower than 1/(1+B), a rank p among n references no lower than
1/(n+1). Where a verdict needs less, these bounds supply it, each with what it rests on:

* `hoeffding_tail`: Chatterjee's Bernstein-type inequality for Hoeffding's combinatorial statistic
  X = sum_i a[i, pi(i)], pi a uniform random permutation and a[i, j] in [0, 1] (Chatterjee 2007,
  "Stein's method for concentration inequalities", Prop. 1.1):
  P(X - EX >= t) <= 2 exp(-t^2 / (4 EX + 2 t)). An exact statement about the permutation null; no
  assumption beyond it. Entries in [0, M] are scaled by 1/M.
* `union_tail`: a sum of such statistics, each bounded as above, by a union bound over a split of
  the excess; any split gives a valid bound, so the best of several is taken.
* `cantelli_tail`: the one-sided Chebyshev inequality P(X - mu >= t) <= s^2 / (s^2 + t^2), which holds
  for every distribution with mean mu and standard deviation s; `kurtosis_tail`: Markov's inequality
  on the fourth moment, for every distribution of at most a given kurtosis. They rest on mu, s and
  the kurtosis, so where these are estimated or assumed the evidence says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

HOEFFDING_BOUND = "chatterjee-2007-prop-1.1, union over layers"
MOMENT_BOUNDS = "cantelli (one-sided chebyshev) and markov on the fourth moment, the smaller"


def hoeffding_tail(excess: float, mean: float, scale: float) -> float:
    """Upper bound on P(X >= mean + excess) for X = sum_i a[i, pi(i)] with entries in [0, `scale`] and
    E X <= `mean` (a larger mean only loosens the bound, so an upper bound on E X may be given)."""
    if excess <= 0 or scale <= 0:
        return 1.0
    exponent = excess * excess / (scale * (4.0 * max(mean, 0.0) + 2.0 * excess))
    return min(1.0, 2.0 * math.exp(-exponent))


@dataclass(frozen=True)
class TermBound:
    """One term of a sum of permutation statistics: its observed value and one or more ways to see it
    as Hoeffding's statistic, each (an upper bound on its null mean, the largest entry of its
    matrix); the term's tail is the smallest of their bounds."""

    observed: float
    views: tuple[tuple[float, float], ...]

    @property
    def mean(self) -> float:
        return min(mean for mean, _ in self.views)

    @property
    def scale(self) -> float:
        return min(scale for _, scale in self.views)

    def tail(self, threshold: float) -> float:
        """Upper bound on P(term >= threshold)."""
        return min(hoeffding_tail(threshold - mean, mean, scale) for mean, scale in self.views)


def union_tail(terms: Sequence[TermBound], total: float) -> float:
    """Upper bound on P(sum_l X_l >= total) from per-term `hoeffding_tail`s: the event needs some
    X_l >= mean_l + t_l for any split t_l >= 0 with sum_l (mean_l + t_l) = total. Several splits are
    tried (by observed excess, by each term's noise scale, all to one term) and the smallest bound
    kept; every one of them is a valid bound for this `total`, so their minimum is too."""
    if not terms:
        return 1.0
    excess = total - sum(term.mean for term in terms)
    if excess <= 0:
        return 1.0
    observed = np.array([max(term.observed - term.mean, 0.0) for term in terms])
    noise = np.array([math.sqrt(term.scale * (4 * term.mean + 1.0)) for term in terms])
    weights = [observed, noise, noise * noise] + [np.eye(len(terms))[i] for i in range(len(terms))]
    best = 1.0
    for weight in weights:
        if weight.sum() <= 0:
            continue
        shares = excess * weight / weight.sum()
        bound = sum(term.tail(term.mean + share) for share, term in zip(shares, terms, strict=True))
        best = min(best, bound)
    return best


def kurtosis_tail(observed: float, mean: float, std: float, kurtosis: float) -> float:
    """P(X >= observed) <= E(X - mean)^4 / t^4 = kurtosis * std^4 / t^4 (Markov on the fourth moment),
    for any X of that mean, spread and at most that kurtosis (3 for a normal)."""
    excess = observed - mean
    if excess <= 0 or std <= 0:
        return 1.0
    return float(min(1.0, kurtosis * (std / excess) ** 4))


def cantelli_tail(observed: float, mean: float, std: float) -> float:
    """P(X >= observed) <= std^2 / (std^2 + (observed - mean)^2) for any X of that mean and spread."""
    excess = observed - mean
    if excess <= 0:
        return 1.0
    if std <= 0:
        return 1.0  # no spread known: nothing can be said past the mean
    return float(std * std / (std * std + excess * excess))
