"""The aligned topology test (tickets without a signature): stolen copies against independent tickets.

    python benchmarks/aligned_topology.py [--arch lenet300_100|resnet20|conv4] [--independent 30]
                                          [--references-per-ticket 10 20] [--epochs 15] [--cache FILE]

Tickets are found by IMP on digits (3 rounds pruning 50 %, rewinding to init; reference seeds 0-2,
independent seeds 1000..), and each reference is attacked with `qr_signatures.py`'s moves, exactly
as `search_recall.py` does (the two scripts share `--cache` files). Every comparison is the
service's: the suspect's mask estimated as in verification (`estimate_suspect_mask`, a denser suspect
cut back by balanced magnitudes), the units aligned, kappa over all layers, and the p-value from
`calibrated_p` against the kappas between the ticket and n independent tickets, for each n of
`--references-per-ticket` (10 is the service's default calibration size) from one set of alignments.
Every ticket here is IMP 3 x 50 %, so every one has the same density and the calibration is the plain
one (no density slope).

Tables: the null (kappa between a reference and each independent ticket); the survival table (per
attack, the worst p over the references, each calibrated with the first n independent tickets);
false positives, twice: every independent ticket as a suspect against every reference, and every
independent ticket as a suspect against every other independent ticket taken as the registered one,
each calibrated with n of the *other* independent tickets (drawn at random per pair, seed 0); and
the time per comparison.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from search_recall import tickets  # noqa: E402

from verifier.aligned import aligned_overlap, calibrated_p  # noqa: E402
from verifier.masks import mask_from_weights  # noqa: E402
from verifier.models import build_model, permutable_axes, prunable_parameters  # noqa: E402
from verifier.topology import estimate_suspect_mask  # noqa: E402

ALPHA = 1e-3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="lenet300_100")
    parser.add_argument("--independent", type=int, default=30)
    parser.add_argument("--references-per-ticket", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--epochs", type=int, default=15, help="Training epochs per IMP round.")
    parser.add_argument("--cache", type=Path)
    args = parser.parse_args()
    names = prunable_parameters(args.arch, build_model(args.arch, (1, 8, 8), 10))
    permutable = {name: permutable_axes(args.arch, name) for name in names}
    references, independent, attacked = tickets(args.arch, args.independent, args.epochs, args.cache)
    sizes = args.references_per_ticket
    if len(independent) < max(sizes) + 2:
        raise SystemExit(f"--independent must exceed --references-per-ticket ({max(sizes)}) by 2")
    timings: list[float] = []

    def kappa(ticket: dict, suspect: dict) -> float:
        ticket_mask = mask_from_weights(ticket, names)
        mask, _, _ = estimate_suspect_mask(ticket_mask, suspect, balanced=True)
        started = time.perf_counter()
        value = aligned_overlap(ticket, ticket_mask, suspect, mask, permutable).kappa
        timings.append(time.perf_counter() - started)
        return value

    null = np.array([[kappa(ticket, state) for state in independent] for ticket in references])
    print(f"{args.arch}: {len(references)} tickets, {len(independent)} independent tickets, "
          f"calibration from n = {', '.join(map(str, sizes))} references\n")
    print("## Null: kappa between a ticket and independent tickets\n")
    print("| ticket | mean | sd | max |\n|---:|---:|---:|---:|")
    for r, row in enumerate(null):
        print(f"| {r} | {row.mean():.4f} | {row.std(ddof=1):.4f} | {row.max():.4f} |")

    stolen = [(r, name, kappa(references[r], state)) for r, moves in enumerate(attacked) for name, state in moves]
    among = np.array([[kappa(a, b) if a is not b else np.nan for b in independent] for a in independent])
    for n in sizes:
        print(f"\n## Survival, n = {n}: stolen copies (worst over the tickets)\n")
        print("| attack | kappa (min) | z (min) | p (max) | caught (of tickets) |\n|---|---:|---:|---:|---:|")
        rows: dict[str, list[tuple[float, float, float]]] = {}
        for r, name, k in stolen:
            cal = calibrated_p(k, null[r, :n])
            rows.setdefault(name, []).append((k, cal.z, cal.p_value))
        for name, values in rows.items():
            caught = sum(p <= ALPHA for _, _, p in values)
            print(f"| {name} | {min(v[0] for v in values):.3f} | {min(v[1] for v in values):.1f} | "
                  f"{max(v[2] for v in values):.2e} | {caught}/{len(values)} |")

        rng = np.random.default_rng(0)
        print(f"\n## False positives, n = {n}: independent suspects, each calibrated with n of the other "
              "independent tickets\n")
        print("| pairs | flagged at p <= 1e-3 | at p <= 1e-2 | at p <= 0.05 | min p | median p |\n"
              "|---|---:|---:|---:|---:|---:|")
        for label, matrix, skip_own in ((f"{len(references)} tickets x {len(independent)} independent", null, False),
                                        (f"{len(independent)} independent x the other {len(independent) - 1}",
                                         among, True)):
            p_values = []
            for i, row in enumerate(matrix):
                for j in range(len(independent)):
                    if skip_own and i == j:
                        continue
                    others = [k for k in range(len(independent)) if k != j and not (skip_own and k == i)]
                    p_values.append(calibrated_p(row[j], row[rng.choice(others, n, replace=False)]).p_value)
            p_values = np.array(p_values)
            print(f"| {label} ({len(p_values)}) | {int((p_values <= ALPHA).sum())} | "
                  f"{int((p_values <= 0.01).sum())} | {int((p_values <= 0.05).sum())} | {p_values.min():.3g} | "
                  f"{np.median(p_values):.3g} |")
    print(f"\nTime per comparison (mask estimate excluded): median {1000 * np.median(timings):.0f} ms, "
          f"max {1000 * max(timings):.0f} ms over {len(timings)}")


if __name__ == "__main__":
    main()
