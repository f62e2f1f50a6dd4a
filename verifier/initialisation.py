"""Does a suspect share a ticket's initialisation? An exact test on weight signs.

Two honest parties who start from the same initialisation (a seed anyone would type, such as 0 or
42) and prune with their own recipes find tickets whose masks and weights resemble each other far
more than independent tickets do: the white-box tests' null, "an independent ticket", does not cover
them, and a white-box match between them says nothing about theft (issue 14, finding 4).

The test: an initialisation draws every weight of a prunable layer from a distribution symmetric
about zero, independently, so for any suspect made without that initialisation the signs of the
initial weights are fair coins independent of the suspect's weights. Training keeps most large
weights' signs (the ones magnitude pruning keeps), so a suspect that started from those weights, or
was copied from a ticket that did, agrees with them on far more than half of its kept cells. The
count of agreeing cells is Binomial(n, 1/2) under the null: its upper tail is an exact p, with no
assumption on the suspect, and it does not change when a unit is rescaled by a positive factor. It
reads cells at their positions: a suspect whose units were permuted is not seen to share the
initialisation (an honest party has no reason to permute; a copy permuted to hide is then judged
as an independent ticket would be, which the alignment-based tests see through).

An initialisation counts as public when its seed is one anyone would try (`KNOWN_SEEDS`, with this
project's model definitions): a suspect that shares a public initialisation may be an honest
party's ticket. A private one (a seed drawn at random, as the finder does by default) cannot be
shared by chance: sharing it means the suspect came from the ticket's owner.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from scipy.stats import binom

from verifier.masks import Mask
from verifier.models import build_model

KNOWN_SEEDS: tuple[int, ...] = (*range(100), 123, 1234, 2020, 2021, 2022, 2023, 2024, 2025, 2026, 3407, 4242,
                                12345, 31337, 54321, 123456, 424242, 1234567, 12345678, 123456789)
SHARED_ALPHA = 1e-3  # a suspect shares the initialisation when the sign test's p is at most this
PUBLIC_SEED_ALPHA = 1e-6  # a registered ticket starts from a known seed at this p, corrected over the seeds


@dataclass(frozen=True)
class SignAgreement:
    """How many of the suspect's kept cells have the initial weight's sign, and the exact p of that
    many or more under fair, independent initial signs."""

    cells: int
    agreeing: int
    p_value: float  # binomial upper tail; 0.0 where it underflows (see log10_p)
    log10_p: float

    @property
    def fraction(self) -> float:
        return self.agreeing / self.cells if self.cells else 0.5

    @property
    def shared(self) -> bool:
        return self.cells > 0 and self.p_value <= SHARED_ALPHA

    def to_dict(self) -> dict:
        return asdict(self) | {"fraction": self.fraction, "shared": self.shared}


def initial_signs(weights: dict[str, torch.Tensor], names: Iterable[str]) -> Mask:
    """The fingerprint of an initialisation that the test needs: which weights of the prunable layers
    `names` are positive (one bit a weight; stored like a mask)."""
    return {name: weights[name].detach().cpu() > 0 for name in names}


def sign_agreement(signs: Mask, weights: dict[str, torch.Tensor], keep: Mask) -> SignAgreement:
    """The sign test over the cells `keep` holds (and `weights` leaves nonzero), in the layers both
    `signs` and `keep` name."""
    cells = agreeing = 0
    for name, positive in signs.items():
        if name not in keep or name not in weights or tuple(weights[name].shape) != tuple(positive.shape):
            continue
        weight = weights[name].detach().cpu().float()
        used = keep[name].cpu().bool() & (weight != 0)
        cells += int(used.sum())
        agreeing += int(((weight > 0) == positive.cpu().bool())[used].sum())
    if cells == 0:
        return SignAgreement(0, 0, 1.0, 0.0)
    log_p = _log_upper_tail(agreeing, cells)
    return SignAgreement(cells, agreeing, math.exp(log_p), log_p / math.log(10))


def _log_upper_tail(k: int, n: int) -> float:
    """ln P(Binomial(n, 1/2) >= k): scipy's where it is finite, else the bound ln T_k - ln(1 - r) with
    T_k = C(n, k) / 2^n and r = (n - k) / (k + 1), the ratio that bounds every later term's to the one
    before (a geometric series above the tail, so the value is never smaller than the truth)."""
    log_p = float(binom.logsf(k - 1, n, 0.5))
    if math.isfinite(log_p):
        return log_p
    ratio = (n - k) / (k + 1)
    log_term = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)
    return log_term - math.log1p(-ratio)


def suspect_agreement(signs: Mask, weights: dict[str, torch.Tensor], declared: Mask | None = None) -> SignAgreement:
    """The sign test on every cell a suspect uses: its nonzero weights, within its `declared` mask if
    it has one. A choice of cells made without the initialisation, so the p stays exact."""
    used = {name: weights[name].detach().cpu() != 0 for name in signs if name in weights}
    if declared is not None:
        used = {name: keep & declared[name].cpu().bool() if name in declared else keep for name, keep in used.items()}
    return sign_agreement(signs, weights, used)


def seeded_signs(arch: str, spec: tuple, seed: int, names: Iterable[str]) -> Mask:
    """The initial signs `verifier.models.build_model` draws after `torch.manual_seed(seed)`, as this
    project's finders start (the global RNG is restored afterwards)."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = build_model(arch, *spec)
    finally:
        torch.random.set_rng_state(state)
    return initial_signs(dict(model.named_parameters()), names)


@dataclass(frozen=True)
class KnownInitialisation:
    """A registered ticket's initialisation, found among the seeds anyone would try."""

    seed: int
    signs: Mask
    agreement: SignAgreement


def find_known_seed(arch: str, spec: tuple, weights: dict[str, torch.Tensor], mask: Mask,
                    seeds: Iterable[int] = KNOWN_SEEDS) -> KnownInitialisation | None:
    """The seed in `seeds` whose initialisation the ticket (`weights` on `mask`) starts from, if one
    does at p <= PUBLIC_SEED_ALPHA after a Bonferroni correction over the seeds tried."""
    seeds = list(seeds)
    best = None
    for seed in seeds:
        signs = seeded_signs(arch, spec, seed, mask)
        agreement = sign_agreement(signs, weights, mask)
        if best is None or agreement.log10_p < best.agreement.log10_p:
            best = KnownInitialisation(seed, signs, agreement)
    if best is None or best.agreement.log10_p + math.log10(len(seeds)) > math.log10(PUBLIC_SEED_ALPHA):
        return None
    return best
