"""The rule a verdict follows (`verifier.decision`): tests combined per candidate, the strongest
candidate, the correction over the candidates compared."""

from __future__ import annotations

import pytest

from verifier.decision import CandidateTests, SchemeResult, decide, strongest


def _tests(*results: tuple[str, float | None], decisive: bool = False) -> CandidateTests:
    return CandidateTests([SchemeResult(scheme, p, {"p_value": p}, decisive=decisive and scheme == "qr")
                           for scheme, p in results])


def test_a_candidates_tests_combine_by_bonferroni_over_the_tests_that_gave_a_p():
    tests = _tests(("topology", 0.2), ("aligned_topology", None), ("qr", 1e-4))
    assert tests.p_value == pytest.approx(2e-4)  # the uncalibrated aligned test is evidence only
    assert tests.to_dict()["schemes"] == ["topology", "qr"] and "aligned_topology" in tests.to_dict()
    assert _tests(("aligned_topology", None)).p_value == 1.0


def test_a_valid_mac_beats_any_p_and_ties_keep_the_earlier_candidate():
    plain, earlier_tie, decoded = _tests(("topology", 1e-9)), _tests(("topology", 1e-9)), _tests(("qr", 0.5),
                                                                                                 decisive=True)
    assert strongest([plain, decoded]) is decoded
    assert strongest([plain, earlier_tie]) is plain


def test_the_verdict_corrects_over_the_candidates_compared():
    tests = _tests(("topology", 1e-4), ("qr", 0.3))
    assert decide(tests, compared=1).verdict == "match"  # 2e-4
    five = decide(tests, compared=5, chosen_from=40)
    assert five.verdict == "match" and five.p_value == pytest.approx(1e-3)
    assert five.correction == "bonferroni over 5 candidate(s) (the nearest of 40 by weight summary) and 2 test(s)"
    assert decide(tests, compared=20).verdict == "inconclusive"  # 4e-3
    assert decide(tests, compared=100).verdict == "no_match"


def test_a_decisive_result_is_a_match_whatever_its_p():
    decision = decide(_tests(("qr", 0.9), decisive=True), compared=3)
    assert decision.verdict == "match" and decision.decided_by == "qr_mac" and decision.p_value == 1.0


def _shared(scheme: str, p: float, *, decisive: bool = False) -> SchemeResult:
    return SchemeResult(scheme, p, {"p_value": p}, decisive=decisive, withheld="shares a public initialisation")


def test_withheld_tests_count_for_nothing_and_alone_give_inconclusive_shares_initialisation():
    """Finding 4: a suspect sharing the ticket's public initialisation was `match` at p 1e-300 on the
    white-box tests, whose null (an independent ticket) does not cover it."""
    tests = CandidateTests([_shared("topology", 1e-300), _shared("aligned_topology", 1e-12)])
    assert tests.p_value == 1.0 and tests.withheld_p == pytest.approx(2e-300)
    assert tests.to_dict()["withheld"] == ["topology", "aligned_topology"]
    assert tests.to_dict()["topology"]["withheld"]
    decision = decide(tests, compared=1)
    assert (decision.verdict, decision.decided_by, decision.relation) == (
        "inconclusive", "shared_initialisation", "shares_initialisation")
    assert decide(CandidateTests([_shared("topology", 0.3)]), compared=1).verdict == "no_match"


def test_what_no_initialisation_explains_still_decides_beside_withheld_tests():
    mac = CandidateTests([_shared("topology", 1e-300), _shared("qr", 0.4, decisive=True)])
    assert (decide(mac, compared=1).verdict, decide(mac, compared=1).relation) == ("match", "derives_from_ticket")
    triggers = CandidateTests([_shared("topology", 1e-300), SchemeResult("trigger_set", 1e-9, {})])
    decision = decide(triggers, compared=1)
    assert (decision.verdict, decision.p_value, decision.relation) == ("match", 1e-9, "derives_from_ticket")
    assert decide(_tests(("topology", 0.5)), compared=1).relation is None


def test_a_search_reports_the_shared_initialisation_over_a_weaker_candidates_p():
    """In a 1:N search an honest same-init suspect met its public-initialisation ticket (combined p 1,
    withheld 1e-300) beside an unrelated one (p 0.4): the unrelated one decided, and the relation was
    lost. A candidate reaching alpha still beats it."""
    same_init = CandidateTests([_shared("topology", 1e-300)])
    unrelated, copy = _tests(("topology", 0.4)), _tests(("topology", 1e-6))
    assert strongest([unrelated, same_init]) is same_init
    assert decide(strongest([unrelated, same_init]), compared=2).relation == "shares_initialisation"
    assert strongest([same_init, copy]) is copy
