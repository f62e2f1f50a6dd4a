"""The rows of a robustness report, its headline, and its CSV form."""

from __future__ import annotations

import csv
import io
from typing import Any

# Every row has these keys, in this order (None where a value does not apply).
COLUMNS = ("attack", "family", "strength", "unit", "status", "test_accuracy", "accuracy_change",
           "within_fidelity", "qr_decoded", "qr_payload_valid", "module_p", "topology_p", "aligned_topology_p",
           "trigger_accuracy", "trigger_p", "p_value", "verdict", "ownership_proven", "seconds", "note")


def empty_row(attack: str, family: str, strength: float, unit: str) -> dict[str, Any]:
    return {**dict.fromkeys(COLUMNS), "attack": attack, "family": family, "strength": strength, "unit": unit}


def scheme_columns(tests: dict[str, Any]) -> dict[str, Any]:
    """The report's per-scheme columns from one candidate's tests (`candidate_tests`)."""
    qr, aligned, trigger = tests.get("qr"), tests.get("aligned_topology"), tests.get("trigger_set")
    return {"qr_decoded": qr["decoded"] if qr else None, "qr_payload_valid": qr["payload_valid"] if qr else None,
            "module_p": qr["p_value"] if qr else None, "topology_p": tests["topology"]["p_value"],
            "aligned_topology_p": aligned.get("p_value") if aligned else None,
            "trigger_accuracy": trigger["matches"] / trigger["size"] if trigger else None,
            "trigger_p": trigger["p_value"] if trigger else None}


def summarize(rows: list[dict[str, Any]], *, fidelity_bound: float, match_alpha: float) -> dict[str, Any]:
    """The headline: of the attacks that kept the thief within the fidelity bound, for how many is
    ownership still proven; which escaped; which cost the thief too much to count."""
    baseline = next((r for r in rows if r["attack"] == "none"), None)
    applied = [r for r in rows if r["status"] == "done" and r["attack"] != "none"]
    within = [r for r in applied if r["within_fidelity"]]
    escapes = [_label(r) for r in within if not r["ownership_proven"]]
    devalued = [_label(r) for r in applied if r["within_fidelity"] is False]
    unbounded = [_label(r) for r in applied if r["within_fidelity"] is None]
    if within:
        headline = (f"ownership proven for {len(within) - len(escapes)} of {len(within)} attacks that stay within "
                    f"the {fidelity_bound:.1%} fidelity bound")
        headline += f"; escaped: {', '.join(escapes)}" if escapes else ""
    else:
        headline = "no attack stayed within the fidelity bound"
    return {"ticket_accuracy": baseline["test_accuracy"] if baseline else None,
            "ticket_verdict": baseline["verdict"] if baseline else None, "fidelity_bound": fidelity_bound,
            "match_alpha": match_alpha, "rows": len(rows), "applied": len(applied),
            "skipped": sum(r["status"] == "skipped" for r in rows),
            "failed": sum(r["status"] == "failed" for r in rows), "within_fidelity": len(within),
            "proven_within_fidelity": len(within) - len(escapes), "escapes": escapes,
            "devalued": devalued, "outside_the_bound": unbounded, "headline": headline}


def _label(row: dict[str, Any]) -> str:
    return f"{row['attack']}@{row['strength']:g}"


def to_csv(rows: list[dict[str, Any]]) -> str:
    """One line per row, `COLUMNS` in order; empty cells for None."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})
    return out.getvalue()
