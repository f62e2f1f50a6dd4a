"""Does the 1:N search's shortlist keep a stolen ticket? Summary distances after each attack.

    python benchmarks/search_recall.py [--arch lenet300_100|resnet20] [--independent 20] [--epochs 15]
                                       [--cache FILE]

Reference tickets (seeds 0-2) and independent tickets (seeds 1000..) are found by IMP on digits
(3 rounds pruning 50 %, rewinding to init), as in `qr_signatures.py`; each reference is attacked with
that script's moves. For every attack: the stolen copy's rank among all references and independent
tickets by summary distance (0 = nearest, what the shortlist needs), its distance to its own ticket,
and the share of independent pairs (independent-independent and reference-independent) that are
nearer than that (times N: about how many of N registered independent tickets would outrank it).
`--cache` keeps the trained tickets and attacked copies in a file (torch.save) for a rerun.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from qr_signatures import attacks  # noqa: E402

from verifier.data import load_dataset  # noqa: E402
from verifier.models import build_model, prunable_parameters  # noqa: E402
from verifier.summaries import RANK, spectral_summary, summary_distances  # noqa: E402
from verifier.tickets import find_imp_ticket  # noqa: E402


def tickets(arch: str, independent: int, epochs: int, cache: Path | None):
    """(reference states, independent states, per reference [(attack, state)])."""
    if cache is not None and cache.exists():
        return torch.load(cache, weights_only=True)
    data = load_dataset("digits")
    found = [find_imp_ticket(arch, data, seed=s, rounds=3, rate=0.5, epochs=epochs) for s in range(3)]
    others = [find_imp_ticket(arch, data, seed=1000 + i, rounds=3, rate=0.5, epochs=epochs).state
              for i in range(independent)]
    attacked = [list(attacks(arch, data, t.state, t.mask, seed=2000 + r)) for r, t in enumerate(found)]
    result = ([t.state for t in found], others, attacked)
    if cache is not None:
        torch.save(result, cache)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="lenet300_100")
    parser.add_argument("--independent", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=15, help="Training epochs per IMP round.")
    parser.add_argument("--cache", type=Path)
    args = parser.parse_args()
    names = prunable_parameters(args.arch, build_model(args.arch, (1, 8, 8), 10))
    references, independent, attacked = tickets(args.arch, args.independent, args.epochs, args.cache)
    pool = np.stack([spectral_summary(s, names) for s in references + independent])
    refs = len(references)
    pairs = np.concatenate([summary_distances(pool[i], pool[refs:], len(names))[np.arange(len(independent)) != i - refs]
                            for i in range(len(pool))])
    print(f"{args.arch}: {refs} references, {len(independent)} independent tickets, summary rank {RANK}; "
          f"independent pairs: {len(pairs)}, distance min {pairs.min():.4f}, median {np.median(pairs):.4f}\n")
    print("| attack | rank of its ticket (per reference) | distance to its ticket (max) | "
          "independent pairs nearer (max) |")
    print("|---|---|---:|---:|")
    rows: dict[str, list[tuple[int, float, float]]] = {}
    for r, moves in enumerate(attacked):
        for name, state in moves:
            distances = summary_distances(spectral_summary(state, names), pool, len(names))
            own = distances[r]
            rows.setdefault(name, []).append((int((distances < own).sum()), float(own), float((pairs < own).mean())))
    for name, values in rows.items():
        print(f"| {name} | {', '.join(str(v[0]) for v in values)} | {max(v[1] for v in values):.4f} | "
              f"{max(v[2] for v in values):.1%} |")


if __name__ == "__main__":
    main()
