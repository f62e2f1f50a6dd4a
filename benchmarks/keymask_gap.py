"""Scheme V1 (key mask) on digits: the accuracy gap between retraining with the locked mask alone and
with the key restored, per score and key fraction, and the gap a random (forged) key of the same
size closes.

    python benchmarks/keymask_gap.py [--arch lenet300_100] [--seeds 0 1 2] [--epochs 15]
                                     [--density 0.07] [--fractions 0.05 0.2]

Per seed: an IMP ticket (20 % of the remaining weights pruned per round, rewinding to
initialisation, until `--density` of the prunable weights remain). Then, every run from the ticket's
rewind weights with the same seed and `--epochs`: the full ticket mask ("with key", the same for all
rows), the locked mask of each score and fraction ("without"), and the locked mask plus a random key
of the key's size drawn among the locked model's pruned weights ("forged"). gap = with - without;
forged gap = forged - without. Mean and sample standard deviation over seeds. The noise floor is the
ticket mask retrained once more with seed + 1: |accuracy(seed) - accuracy(seed + 1)|.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verifier.data import load_dataset  # noqa: E402
from verifier.keymask import SCORES, KeyConfig, lock_ticket, random_key, retrain_accuracy  # noqa: E402
from verifier.masks import count_kept  # noqa: E402
from verifier.tickets import find_imp_ticket  # noqa: E402
from verifier.training import TrainConfig  # noqa: E402


def _spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    deviation = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:6.2f} ± {100 * deviation:4.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="lenet300_100")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--density", type=float, default=0.07)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.2])
    parser.add_argument("--scores", nargs="+", default=list(SCORES), choices=SCORES)
    parser.add_argument("--path-samples", type=int, default=2000)
    args = parser.parse_args()

    data = load_dataset(args.dataset)
    settings = TrainConfig(epochs=args.epochs)
    rows: dict[tuple[str, float], dict[str, list[float]]] = {}
    with_key, other_seed, densities, ticket_accuracy = [], [], [], []
    started = time.time()
    for seed in args.seeds:
        ticket = find_imp_ticket(args.arch, data, seed=seed, target_density=args.density, rate=0.2,
                                 epochs=args.epochs)
        densities.append(ticket.density)
        ticket_accuracy.append(ticket.accuracy)
        with_key.append(retrain_accuracy(ticket, data, ticket.mask, seed=seed, config=settings))
        other_seed.append(retrain_accuracy(ticket, data, ticket.mask, seed=seed + 1, config=settings))
        for score in args.scores:
            for fraction in args.fractions:
                config = KeyConfig(score=score, key_fraction=fraction, seed=seed, path_samples=args.path_samples,
                                   train=settings)
                locked, key = lock_ticket(ticket, data, config)
                forged = random_key(locked, count_kept(key), seed=seed + 1000)
                without = retrain_accuracy(ticket, data, locked, seed=seed, config=settings)
                faked = retrain_accuracy(ticket, data, {n: locked[n] | forged[n] for n in locked}, seed=seed,
                                         config=settings)
                row = rows.setdefault((score, fraction), {"n": [], "without": [], "gap": [], "forged": []})
                row["n"].append(count_kept(key))
                row["without"].append(without)
                row["gap"].append(with_key[-1] - without)
                row["forged"].append(faked - without)
                print(f"seed {seed} {score:9s} {fraction:.2f}: without {without:.4f} with {with_key[-1]:.4f} "
                      f"forged {faked:.4f}", file=sys.stderr, flush=True)

    print(f"{args.arch} on {args.dataset}, IMP tickets at {100 * statistics.fmean(densities):.2f} % density "
          f"(IMP accuracy {_spread(ticket_accuracy)} %), seeds {args.seeds}, {args.epochs} epochs per run")
    print(f"retrained with the key (ticket mask): {_spread(with_key)} %; noise floor (seed vs seed + 1): "
          f"{_spread([abs(a - b) for a, b in zip(with_key, other_seed, strict=True)])} points")
    print()
    print("| score | key fraction | key weights | acc. without key (%) | gap (points) | seeds with gap > 1 point "
          "| forged-key gap (points) |")
    print("|---|---|---|---|---|---|---|")
    for (score, fraction), row in rows.items():
        above = sum(gap > 0.01 for gap in row["gap"])
        print(f"| {score} | {fraction:.2f} | {round(statistics.fmean(row['n']))} | {_spread(row['without'])} | "
              f"{_spread(row['gap'])} | {above} of {len(row['gap'])} | {_spread(row['forged'])} |")
    print(f"\n{time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
