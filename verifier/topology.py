"""The first verifier: mask-topology overlap between a ticket and a suspect, with a permutation p-value
and a tail bound for the same null."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from verifier.balance import log_balance
from verifier.consistent_null import NullLayers
from verifier.masks import Mask, mask_from_weights, overall_density, top_k
from verifier.tail_bounds import HOEFFDING_BOUND, union_tail
from verifier.units import LayerGroups

DENSE_THRESHOLD = 0.99
CHUNK = 2000
FIRST_CHUNK = 250
FIRST_DRAW_WORK = 20_000_000  # cells gathered by the first chunk of a large network's null, at most
STOP_AFTER = 10  # exceedances after which a permutation null stops drawing (Besag and Clifford's h)


@dataclass
class LayerEvidence:
    """One layer's share of the evidence: densities, Jaccard, observed and expected overlap."""

    name: str
    ticket_density: float
    suspect_density: float
    jaccard: float
    overlap: int
    expected_overlap: float


@dataclass
class TopologyResult:
    """Outcome of `compare_topology`; `to_dict()` gives plain JSON types."""

    p_value: float  # `combined_p` of the permutation p and the tail bound
    p_permutation: float  # sequential: drawing stops once STOP_AFTER permutations reach the statistic
    p_bound: float  # `verifier.tail_bounds.union_tail`: exact for the permutation null, any resolution
    bound: str  # what p_bound rests on
    null: str  # what the permutations relabel
    z: float  # (observed - null mean) / null sd, from the draws: for reading, not for the decision
    observed_overlap: int
    expected_overlap: float
    jaccard: float
    suspect_dense: bool
    estimated_layers: list[str]
    permutations: int  # drawn, at most the number asked for
    layers: list[LayerEvidence]

    def to_dict(self) -> dict:
        return asdict(self)


def sequential_null(draw: Callable[[int], np.ndarray], observed: float, permutations: int, *,
                    first: int = FIRST_CHUNK) -> tuple[np.ndarray, float]:
    """Null statistics drawn in chunks (`draw(size)`) and the permutation p-value, stopping early
    once STOP_AFTER of them reach `observed`: then p = STOP_AFTER / draws so far (Besag and
    Clifford's sequential Monte Carlo p-value, valid like the full one). A clearly unremarkable
    suspect costs a few hundred draws instead of all `permutations`; a remarkable one, where the
    verdict turns on the tail, still gets every draw and p = (1 + #exceeding) / (1 + permutations)."""
    parts, drawn, exceeded, size = [], 0, 0, first
    while drawn < permutations:
        size = min(size, permutations - drawn)
        values = draw(size)
        hits = np.flatnonzero(values >= observed)
        if exceeded + len(hits) >= STOP_AFTER:
            last = int(hits[STOP_AFTER - exceeded - 1]) + 1
            parts.append(values[:last])
            return np.concatenate(parts), STOP_AFTER / (drawn + last)
        parts.append(values)
        exceeded, drawn, size = exceeded + len(hits), drawn + size, CHUNK
    null = np.concatenate(parts)
    return null, permutation_p(null, observed)


def estimate_suspect_mask(ticket_mask: Mask, suspect_weights: dict[str, torch.Tensor],
                          suspect_mask: Mask | None = None, *, balanced: bool = False
                          ) -> tuple[Mask, list[str], bool]:
    """The suspect's mask over the ticket's layers, the layers where it was estimated, and whether the
    suspect is dense. An explicit `suspect_mask` is taken as it is; otherwise the mask is the
    suspect's nonzeros, except in layers where the suspect keeps more weights than the ticket (a
    dense model, or weights added back): there it is its largest weights at the ticket's density, by
    magnitude, or with `balanced` by balanced magnitude (`balanced_cut`), which no per-unit rescaling
    changes (the raw cut is the closer one for copies that were not rescaled)."""
    if suspect_mask is not None:
        return suspect_mask, [], overall_density(suspect_mask) >= DENSE_THRESHOLD
    names = list(ticket_mask)
    nonzero = mask_from_weights(suspect_weights, names)
    estimated = [name for name in names if int(nonzero[name].sum()) > int(ticket_mask[name].sum())]
    mask = dict(nonzero)
    cut = balanced_cut if balanced else (lambda weight, count: top_k(weight.detach().abs().cpu(), count))
    mask.update({n: cut(suspect_weights[n], int(ticket_mask[n].sum())) for n in estimated})
    return mask, estimated, overall_density(nonzero) >= DENSE_THRESHOLD


def balanced_cut(weight: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` largest weights of a linear or conv layer by balanced magnitude (`verifier.balance.
    log_balance`), as a boolean mask of its shape: the same cells for every positive per-unit
    rescaling of the layer. On lenet300_100 tickets made dense with small revived weights it keeps
    96-97 % of the ticket's kept weights, rescaled (factors 1/100 to 100) or not; the raw cut keeps
    99.5 % unrescaled but 38-40 % rescaled. Balancing also evens out the ticket's own row and column
    scales, which magnitude pruning used, so where few weights were added back the raw cut is the
    closer one (5 % revived: aligned kappa 0.84-0.91 balanced, 0.998 raw)."""
    w = weight.detach().to(torch.float64).cpu()
    if w.dim() < 2:
        return top_k(w.abs(), count)
    balanced = log_balance(w.reshape(w.shape[0], w.shape[1], -1).numpy())
    return top_k(torch.from_numpy(np.abs(balanced)).reshape(w.shape), count)


def compare_topology(ticket_mask: Mask, suspect_weights: dict[str, torch.Tensor], *,
                     groups: dict[str, LayerGroups], suspect_mask: Mask | None = None,
                     permutations: int = 9999, seed: int = 0) -> TopologyResult:
    """Test whether the suspect's mask overlaps the ticket's more than an independent network's would.

    Statistic: total overlap of kept weights over the ticket's layers. Null: an independently trained
    network's hidden units have no identity, so the suspect's units are relabelled, one permutation
    per group of units in every layer that indexes it (`groups`, from `verifier.units.layer_groups`;
    `verifier.consistent_null`); this keeps the suspect's own structure (dead inputs, unit densities)
    that a uniform-random null ignores. The p-value (`combined_p`) is the smaller of the Monte Carlo
    permutation p, which can go no lower than 1/(1 + permutations), and a tail bound that is exact
    for the same null at any depth (`verifier.tail_bounds.union_tail`), with the level split between
    them; where the bound alone already decides, only a first chunk of permutations is drawn (for z).

    Without an explicit `suspect_mask`, the mask is the suspect's nonzeros, except in layers where
    the suspect keeps more weights than the ticket (a dense model, or weights added back): there it
    is estimated as the suspect's largest weights at the ticket's density. The estimate depends on
    the suspect and the densities only, so the null stays valid.
    """
    if permutations < 1:
        raise ValueError("permutations must be at least 1")
    names = list(ticket_mask)
    suspect_mask, estimated, dense = estimate_suspect_mask(ticket_mask, suspect_weights, suspect_mask)
    layers = []
    for name in names:
        t, s = ticket_mask[name].cpu().bool(), suspect_mask[name].cpu().bool()
        overlap, union = int((t & s).sum()), int((t | s).sum())
        layers.append(LayerEvidence(name, float(t.float().mean()), float(s.float().mean()),
                                    overlap / union if union else 0.0, overlap,
                                    float(t.sum()) * float(s.sum()) / t.numel()))
    null_layers = NullLayers({n: ticket_mask[n] for n in names}, {n: suspect_mask[n] for n in names}, groups)
    observed = null_layers.observed
    terms = null_layers.bound_terms()
    p_bound = union_tail(terms, observed - null_layers.constant) if terms is not None else 1.0
    rng = np.random.default_rng(seed)
    # a large network's draws cost its kept cells each (resnet50: ~5M): start with fewer, so that an
    # unremarkable suspect, which stops after about 20, does not pay for 250
    first = int(np.clip(FIRST_DRAW_WORK // max(1, null_layers.cells_per_draw), 20, FIRST_CHUNK))
    if combined_p(1 / (1 + permutations), p_bound) == combined_p(1.0, p_bound):  # the bound decides
        null = null_layers.draw(min(first, permutations), rng)
        p_permutation = permutation_p(null, observed)
    else:
        null, p_permutation = sequential_null(lambda size: null_layers.draw(size, rng), observed, permutations,
                                              first=first)
    mean, std = float(null.mean()), float(null.std())
    z = (observed - mean) / std if std > 0 else (0.0 if observed == mean else float("inf"))
    union = sum(int((ticket_mask[n].bool() | suspect_mask[n].bool()).sum()) for n in names)
    return TopologyResult(
        p_value=combined_p(p_permutation, p_bound), p_permutation=p_permutation, p_bound=p_bound,
        bound=HOEFFDING_BOUND if terms is not None else "none (a layer's rows and columns are one group)",
        null=CONSISTENT_NULL, z=float(z), observed_overlap=observed, expected_overlap=null_layers.expected(),
        jaccard=observed / union if union else 0.0, suspect_dense=dense, estimated_layers=estimated,
        permutations=len(null), layers=layers)


CONSISTENT_NULL = "units relabelled, one permutation per unit group across the layers that index it"
BOUND_SHARE = 0.5  # of the level, given to the tail bound; the rest to the permutation p


def permutation_p(null: np.ndarray, observed: float) -> float:
    """(1 + #null >= observed) / (1 + len(null)): exact for a permutation null, floored at 1/(1+len)."""
    return (1 + int((null >= observed).sum())) / (1 + len(null))


def combined_p(p_permutation: float, p_bound: float) -> float:
    """A valid p from two valid p-values for the same null, by weighted Bonferroni:
    min(1, p_permutation / (1 - BOUND_SHARE), p_bound / BOUND_SHARE), i.e. twice the smaller. The
    permutation p resolves the body of the null (down to 1/(1+B)); the bound, exact but loose,
    reaches the far tail where the permutations cannot (a fine-tuned, further-pruned copy of a
    lenet300_100 digits ticket: p_bound 6e-6 where 999 permutations stop at 1e-3)."""
    return float(min(1.0, p_permutation / (1 - BOUND_SHARE), p_bound / BOUND_SHARE))
