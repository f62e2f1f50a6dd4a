"""The lottery-ticket effect on digits: accuracy against remaining weights for IMP with rewinding and
its controls, the extreme ticket, and each finder's wall time on this machine.

    python benchmarks/lth_digits.py --arch lenet300_100 --seeds 0 1 2

IMP prunes 20 % of the remaining weights per round (rewinding to initialisation) for 18 rounds;
rows are the rounds that leave 100, 51, 26, 13, 6.9, 3.5 and 1.8 % of the prunable weights.
Controls at each of those masks: random re-initialisation (same mask, fresh init), random pruning
(random mask at the same per-layer densities, same init), one-shot magnitude pruning (train dense,
prune once to that density, rewind, retrain), and CTS where `verifier.tickets.cts` exists.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verifier.data import load_dataset  # noqa: E402
from verifier.tickets import Ticket, find_imp_ticket  # noqa: E402
from verifier.tickets.controls import (  # noqa: E402
    OneShotConfig,
    find_oneshot_ticket,
    random_pruning_control,
    random_reinit_control,
)
from verifier.training import TrainConfig  # noqa: E402

REPORT_ROUNDS = (0, 3, 6, 9, 12, 15, 18)


def _cts():
    try:
        from verifier.tickets.cts import CtsConfig, find_cts_ticket
    except ImportError:
        return None
    return CtsConfig, find_cts_ticket


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="lenet300_100")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--no-extreme", action="store_true")
    args = parser.parse_args()
    data = load_dataset("digits")
    train_config = TrainConfig(epochs=args.epochs)
    cts = _cts()
    results: dict[tuple[str, int], list[float]] = {}
    densities: dict[int, float] = {}
    timings: dict[str, list[float]] = {}
    extremes = []

    def add(method: str, round_index: int, accuracy: float) -> None:
        results.setdefault((method, round_index), []).append(accuracy)

    def timed(name: str, fn):
        start = time.perf_counter()
        value = fn()
        timings.setdefault(name, []).append(time.perf_counter() - start)
        return value

    for seed in args.seeds:
        snapshots: dict[int, tuple] = {}

        def keep(round_index: int, mask, state, snapshots=snapshots) -> None:
            if round_index in REPORT_ROUNDS:
                snapshots[round_index] = ({k: v.clone() for k, v in mask.items()}, state)

        ticket = timed("imp (18 rounds)", lambda seed=seed, keep=keep: find_imp_ticket(
            args.arch, data, seed=seed, rounds=max(REPORT_ROUNDS), rate=0.2, epochs=args.epochs,
            on_round=keep))
        for row in ticket.rounds:
            if row["round"] in REPORT_ROUNDS:
                add("IMP, rewind to init", row["round"], row["accuracy"])
                densities[row["round"]] = row["density"]
        for round_index, (mask, state) in snapshots.items():
            if round_index == 0:
                continue
            base = Ticket(args.arch, "digits", seed, state, ticket.rewind, mask, 0.0, ticket.dense_accuracy,
                          hyperparameters={"train": vars(train_config)})
            add("random re-init", round_index,
                random_reinit_control(base, data, seed=seed, config=train_config).accuracy)
            add("random pruning", round_index,
                random_pruning_control(base, data, seed=seed, config=train_config).accuracy)
            oneshot_config = OneShotConfig(target_density=densities[round_index], train=train_config)
            oneshot = timed("one-shot magnitude", lambda seed=seed, config=oneshot_config:
                            find_oneshot_ticket(args.arch, data, seed=seed, config=config))
            add("one-shot magnitude", round_index, oneshot.accuracy)
            if cts is not None:
                config_type, finder = cts
                cts_config = config_type(target_density=densities[round_index])
                found = timed("CTS", lambda seed=seed, config=cts_config, finder=finder: finder(
                    args.arch, data, seed=seed, config=config))
                add("CTS", round_index, found.accuracy)
        if not args.no_extreme:
            extreme = timed("imp extreme search", lambda seed=seed: find_imp_ticket(
                args.arch, data, seed=seed, extreme=True, eps=0.01, epochs=args.epochs))
            extremes.append((seed, extreme))
        print(f"seed {seed} done", file=sys.stderr)

    methods = sorted({m for m, _ in results}, key=lambda m: ["IMP, rewind to init", "random re-init",
                                                               "random pruning", "one-shot magnitude",
                                                               "CTS"].index(m))
    print(f"## {args.arch} on digits, seeds {args.seeds}, mean ± std test accuracy\n")
    print("| weights kept | " + " | ".join(methods) + " |")
    print("|---:|" + "---:|" * len(methods))
    for round_index in REPORT_ROUNDS:
        cells = []
        for method in methods:
            values = results.get((method, round_index))
            cells.append(_mean_std(values) if values else "")
        print(f"| {100 * densities[round_index]:.1f} % | " + " | ".join(cells) + " |")
    if extremes:
        print("\n| seed | extreme ticket: weights kept | accuracy | dense accuracy | rounds tried |")
        print("|---:|---:|---:|---:|---:|")
        for seed, extreme in extremes:
            print(f"| {seed} | {100 * extreme.density:.2f} % | {extreme.accuracy:.4f} | "
                  f"{extreme.dense_accuracy:.4f} | {len(extreme.rounds) - 1} |")
    print("\n| finder | wall time per run, s (mean ± std) |")
    print("|---|---:|")
    for name, values in timings.items():
        print(f"| {name} | {_mean_std(values, 1)} |")


def _mean_std(values: list[float], digits: int = 4) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


if __name__ == "__main__":
    main()
