"""Calibration of the first verifier (mask-topology test) on digits: stolen copies against
independently found tickets, over several reference tickets.

    python benchmarks/topology_calibration.py [--arch lenet300_100] [--references 3] [--independent 30]

Any registered architecture builds for digits (resnet20 and conv4 included).
Reference tickets: IMP with rewinding, seeds 0..R-1. Independent tickets: the same recipe with seeds
1000..1000+N-1. Thieves: each reference fine-tuned with its mask fixed (3 epochs) and then pruned a
further 10 % (seeds 2000+), and fine-tuned without the mask (1 epoch, so every weight moves).
Prints one row per (reference, suspect kind) with p-values, z and the verdicts.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verifier.attacks import fine_tune, prune_further  # noqa: E402
from verifier.data import load_dataset  # noqa: E402
from verifier.decision import verdict  # noqa: E402
from verifier.masks import overall_density  # noqa: E402
from verifier.models import build_model  # noqa: E402
from verifier.tickets import find_imp_ticket  # noqa: E402
from verifier.topology import compare_topology  # noqa: E402
from verifier.training import evaluate, train  # noqa: E402
from verifier.units import layer_groups  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="lenet300_100")
    parser.add_argument("--references", type=int, default=3)
    parser.add_argument("--independent", type=int, default=30)
    parser.add_argument("--thieves", type=int, default=3)
    parser.add_argument("--permutations", type=int, default=9999)
    args = parser.parse_args()
    started = time.monotonic()
    data = load_dataset("digits")
    references = [find_imp_ticket(args.arch, data, seed=s, rounds=3, rate=0.5) for s in range(args.references)]
    independents = [find_imp_ticket(args.arch, data, seed=1000 + s, rounds=3, rate=0.5)
                    for s in range(args.independent)]
    axes = layer_groups(args.arch, references[0].state)
    print(f"tickets: {overall_density(references[0].mask):.1%} of weights kept; reference accuracy "
          f"{statistics.mean(t.accuracy for t in references):.3f} (dense "
          f"{statistics.mean(t.dense_accuracy for t in references):.3f}); found in "
          f"{time.monotonic() - started:.0f} s")
    header = f"{'ref':>3}  {'suspects':<34}  {'n':>3}  {'acc':>5}  {'min p':>8}  {'median p':>8}  " \
             f"{'median z':>8}  {'match':>5}  {'inconcl.':>8}  {'no_match':>8}"
    print(header)
    totals = {"independent": [], "stolen (mask kept, +10% pruned)": [], "stolen (fine-tuned dense)": []}
    for index, reference in enumerate(references):
        groups: dict[str, list[tuple[float, float, float]]] = {key: [] for key in totals}
        for other in independents:
            result = compare_topology(reference.mask, other.state, groups=axes,
                                      permutations=args.permutations, seed=index)
            groups["independent"].append((result.p_value, result.z, other.accuracy))
        for thief_seed in range(args.thieves):
            thief = build_model(args.arch, data.input_shape, data.num_classes)
            thief.load_state_dict(reference.state)
            mask = copy.deepcopy(reference.mask)
            fine_tune(thief, mask, data.x_train, data.y_train, epochs=3, seed=2000 + thief_seed)
            prune_further(thief, mask, 0.10)
            result = compare_topology(reference.mask, thief.state_dict(), groups=axes,
                                      permutations=args.permutations, seed=index)
            groups["stolen (mask kept, +10% pruned)"].append(
                (result.p_value, result.z, evaluate(thief, data.x_test, data.y_test)))
            dense = build_model(args.arch, data.input_shape, data.num_classes)
            dense.load_state_dict(reference.state)
            train(dense, data.x_train, data.y_train, epochs=1, lr=0.01, seed=3000 + thief_seed)
            result = compare_topology(reference.mask, dense.state_dict(), groups=axes,
                                      permutations=args.permutations, seed=index)
            groups["stolen (fine-tuned dense)"].append(
                (result.p_value, result.z, evaluate(dense, data.x_test, data.y_test)))
        for kind, rows in groups.items():
            totals[kind].extend(rows)
            _print_row(str(index), kind, rows)
    for kind, rows in totals.items():
        _print_row("all", kind, rows)
    independent_p = np.array([p for p, _, _ in totals["independent"]])
    print("independent p-value quantiles (5/25/50/75/95 %):",
          " ".join(f"{q:.3f}" for q in np.quantile(independent_p, [0.05, 0.25, 0.5, 0.75, 0.95])))
    print(f"total {time.monotonic() - started:.0f} s")


def _print_row(reference: str, kind: str, rows: list[tuple[float, float, float]]) -> None:
    p_values = [p for p, _, _ in rows]
    verdicts = [verdict(p) for p in p_values]
    print(f"{reference:>3}  {kind:<34}  {len(rows):>3}  {statistics.mean(a for _, _, a in rows):>5.3f}  "
          f"{min(p_values):>8.2g}  {statistics.median(p_values):>8.2g}  "
          f"{statistics.median(z for _, z, _ in rows):>8.2f}  {verdicts.count('match'):>5}  "
          f"{verdicts.count('inconclusive'):>8}  {verdicts.count('no_match'):>8}")


if __name__ == "__main__":
    main()
