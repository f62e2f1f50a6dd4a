"""The rule a verdict follows, top to bottom, in one place.

1. Each test a candidate ticket carries gives a `SchemeResult`: its scheme, its p-value (None for a
   test that is evidence only, such as an aligned test without enough references) and its
   evidence. A decoded QR payload whose MAC is valid is `decisive`.
2. A candidate's tests combine by Bonferroni over the tests that gave a p: min(1, k * min p).
3. Among the candidates compared, a decisive one wins, else one whose combined p reaches alpha, else
   one whose withheld tests (rule 5) would, else the smallest combined p (ties go to the earlier
   registration, which comes first).
4. The deciding candidate's p is corrected by Bonferroni over the candidates compared; `match` at
   p <= alpha (or a decisive result, whatever the p), `inconclusive` below the second threshold,
   else `no_match`.
5. A test whose null does not cover the suspect is withheld: it keeps its p in the evidence but
   counts for nothing. The white-box tests (topology, aligned topology, the QR module test) are
   withheld when the suspect shares the ticket's public initialisation (`verifier.initialisation`):
   an honest party starting from that initialisation resembles the ticket too. A decoded QR payload
   with a valid MAC and the trigger set are not: neither arises from an initialisation. Where
   withheld tests alone would have matched, the verdict is `inconclusive` and the relation proven is
   `shares_initialisation`, never theft.

A `match` proves the relation `derives_from_ticket`: the suspect was made from the ticket's weights
(or, for a ticket whose initialisation is private, from what only its owner held).

Each test's own p is valid on its own (the permutation p, the tail bound, the calibrated moment
bound: `verifier.topology`, `verifier.signatures.qr`, `verifier.aligned`); the corrections here keep
the verdict's p valid over the tests and candidates looked at.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

MATCH_ALPHA = 1e-3
INCONCLUSIVE_ALPHA = 1e-2


def bonferroni(p_value: float, tests: int) -> float:
    """Family-wise correction for `tests` looks at the data: min(1, p * tests)."""
    return min(1.0, p_value * max(1, tests))


def verdict(p_value: float, *, alpha: float = MATCH_ALPHA, inconclusive_below: float = INCONCLUSIVE_ALPHA) -> str:
    """`match` at p <= alpha, `inconclusive` below `inconclusive_below`, else `no_match`."""
    if p_value <= alpha:
        return "match"
    return "inconclusive" if p_value < inconclusive_below else "no_match"


@dataclass(frozen=True)
class SchemeResult:
    """One test of one candidate: its p (None: evidence only) and its JSON evidence."""

    scheme: str  # topology, qr, aligned_topology, trigger_set
    p_value: float | None
    evidence: dict[str, Any]
    decisive: bool = False  # a decoded QR payload with a valid MAC
    withheld: str | None = None  # why this test's p counts for nothing (its null does not cover the suspect)

    @property
    def report(self) -> dict[str, Any]:
        """The evidence, with why the test was withheld where it was."""
        return self.evidence | ({"withheld": self.withheld} if self.withheld else {})


@dataclass
class CandidateTests:
    """Every test one candidate ticket carries against the suspect."""

    results: list[SchemeResult] = field(default_factory=list)
    initialisation: dict[str, Any] | None = None  # whether the suspect shares the ticket's initialisation

    def add(self, result: SchemeResult) -> None:
        self.results.append(result)

    def get(self, scheme: str) -> SchemeResult | None:
        return next((r for r in self.results if r.scheme == scheme), None)

    @property
    def counted(self) -> list[SchemeResult]:
        """The tests that gave a p-value that counts."""
        return [r for r in self.results if r.p_value is not None and r.withheld is None]

    @property
    def withheld(self) -> list[SchemeResult]:
        """The tests that gave a p-value whose null does not cover the suspect."""
        return [r for r in self.results if r.p_value is not None and r.withheld is not None]

    @property
    def withheld_p(self) -> float:
        """Bonferroni over the withheld tests (1 where none): what they would have said."""
        withheld = self.withheld
        return bonferroni(min(r.p_value for r in withheld), len(withheld)) if withheld else 1.0

    @property
    def p_value(self) -> float:
        """Bonferroni over the tests that gave a p (1 where none did)."""
        counted = self.counted
        return bonferroni(min(r.p_value for r in counted), len(counted)) if counted else 1.0

    @property
    def decisive(self) -> bool:
        return any(r.decisive for r in self.results)

    def stronger_than(self, other: CandidateTests, *, alpha: float = MATCH_ALPHA) -> bool:
        """A decisive result beats any p; then a combined p at most `alpha`; then withheld tests at most
        `alpha` (the suspect shares this ticket's public initialisation: the search reports that
        relation rather than a weaker candidate's p); then the smaller combined p, the smaller withheld
        p (a tie keeps `other`)."""
        return self._strength(alpha) > other._strength(alpha)

    def _strength(self, alpha: float) -> tuple:
        return (self.decisive, self.p_value <= alpha, self.withheld_p <= alpha, -self.p_value, -self.withheld_p)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form the evidence and reports carry: each scheme's evidence under its name, the
        schemes that gave a p, their p-values and the combined p."""
        out: dict[str, Any] = {r.scheme: r.report for r in self.results}
        counted = self.counted
        out |= {"schemes": [r.scheme for r in counted], "p_values": [r.p_value for r in counted],
                "p_value": self.p_value, "withheld": [r.scheme for r in self.withheld]}
        return out | ({"initialisation": self.initialisation} if self.initialisation is not None else {})


@dataclass(frozen=True)
class Decision:
    """The verdict, its corrected p, what decided it and the correction applied."""

    verdict: str
    p_value: float
    decided_by: str  # p_value, qr_mac or shared_initialisation
    correction: str
    relation: str | None = None  # derives_from_ticket (a match), shares_initialisation (see rule 5), else None


def decide(tests: CandidateTests, *, compared: int, alpha: float = MATCH_ALPHA,
           inconclusive_below: float = INCONCLUSIVE_ALPHA, chosen_from: int | None = None) -> Decision:
    """The verdict for the deciding candidate's `tests`, its p corrected over the `compared`
    candidates (the nearest of `chosen_from` by weight summary, where a search chose them)."""
    p_value = bonferroni(tests.p_value, compared)
    scope = f" (the nearest of {chosen_from} by weight summary)" if chosen_from is not None else ""
    correction = f"bonferroni over {compared} candidate(s){scope} and {len(tests.counted)} test(s)"
    if tests.decisive:
        return Decision("match", p_value, "qr_mac", correction, "derives_from_ticket")
    outcome = verdict(p_value, alpha=alpha, inconclusive_below=inconclusive_below)
    if outcome == "match":
        return Decision(outcome, p_value, "p_value", correction, "derives_from_ticket")
    if bonferroni(tests.withheld_p, compared) <= alpha:
        return Decision("inconclusive", p_value, "shared_initialisation", correction, "shares_initialisation")
    return Decision(outcome, p_value, "p_value", correction)


def strongest(candidates: Sequence[CandidateTests], *, alpha: float = MATCH_ALPHA) -> CandidateTests | None:
    """The candidate that decides: the first of the strongest (`CandidateTests.stronger_than`)."""
    best = None
    for tests in candidates:
        if best is None or tests.stronger_than(best, alpha=alpha):
            best = tests
    return best
