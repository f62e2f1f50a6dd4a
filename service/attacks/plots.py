"""PNG plots of a robustness report: per attack family, the verification p-value and the test accuracy
against attack strength, with the verdict threshold and the fidelity bound marked."""

from __future__ import annotations

import io
from typing import Any

P_FLOOR = 1e-20  # p-values below this are drawn at it (a decoded QR code with a valid MAC has p ~ 0)


def family_slug(family: str) -> str:
    """The family's name in a URL: `block removal` -> `block-removal`."""
    return family.replace(" ", "-")


def families(rows: list[dict[str, Any]]) -> list[str]:
    """Families with at least one applied row, in table order."""
    return list(dict.fromkeys(r["family"] for r in rows if r["status"] == "done" and r["attack"] != "none"))


def family_png(rows: list[dict[str, Any]], family: str, *, fidelity_bound: float, match_alpha: float) -> bytes:
    """Two panels for one family, a line per attack: p-value (log scale; the `match_alpha` line) and
    test accuracy (the ticket's, and the fidelity bound under it)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    baseline = next((r for r in rows if r["attack"] == "none"), None)
    chosen = [r for r in rows if r["family"] == family and r["status"] == "done"]
    figure = Figure(figsize=(7, 6), dpi=100, layout="constrained")
    p_axis, accuracy_axis = figure.subplots(2, 1, sharex=True)
    for attack in dict.fromkeys(r["attack"] for r in chosen):
        points = sorted((r["strength"], r) for r in chosen if r["attack"] == attack)
        x = [s for s, _ in points]
        p_values = [max(r["p_value"], P_FLOOR) if r["p_value"] is not None else None for _, r in points]
        if any(p is not None for p in p_values):
            p_axis.plot(x, [p if p is not None else float("nan") for p in p_values], marker="o", label=attack)
        accuracy_axis.plot(x, [r["test_accuracy"] for _, r in points], marker="o", label=attack)
    p_axis.set_yscale("log")
    p_axis.axhline(match_alpha, color="red", linestyle="--", label=f"match threshold ({match_alpha:g})")
    p_axis.set_ylabel(f"verification p-value (floored at {P_FLOOR:g})")
    p_axis.set_title(f"{family}: is ownership still proven?")
    p_axis.legend(fontsize="small")
    if baseline is not None and baseline["test_accuracy"] is not None:
        accuracy = baseline["test_accuracy"]
        accuracy_axis.axhline(accuracy, color="gray", linestyle=":", label=f"ticket ({accuracy:.3f})")
        accuracy_axis.axhline(accuracy - fidelity_bound, color="red", linestyle="--",
                              label=f"fidelity bound (-{fidelity_bound:.1%})")
    units = sorted({r["unit"] for r in chosen})
    accuracy_axis.set_xlabel(" / ".join(units) or "strength")
    accuracy_axis.set_ylabel("test accuracy")
    accuracy_axis.legend(fontsize="small")
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()
