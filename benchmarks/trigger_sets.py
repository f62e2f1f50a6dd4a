"""Trigger sets (scheme V3): embedding cost, survival of a thief's moves, false positives (digits).

    python benchmarks/trigger_sets.py [--arch lenet300_100|conv4|resnet20] [--independent 30]
                                      [--epochs 15] [--cache FILE]
                                      [--share 0.25] [--embed-epochs 20] [--embed-lr 0.1]

Tickets are those of `search_recall.py` and `aligned_topology.py` (IMP on digits, 3 rounds pruning
50 %, rewinding to init; reference seeds 0-2, independent seeds 1000..; the scripts share `--cache`
files). Each reference ticket gets a trigger set from its own key and has it fine-tuned in exactly
as registration does (`embed_triggers` with 100 triggers, mask fixed; share, epochs and learning rate
default to the service's). Then each thief's move, and the trigger accuracy and chance p-value
(one-sided binomial against 1/10) of the result:

- further magnitude pruning of 5, 10, 20, 50 % of the kept weights;
- fine-tuning on the training data without triggers, mask fixed, lr 0.01, for 1, 5 and 20 epochs;
- distillation (`verifier.attacks.distill`: 20 epochs, lr 0.05, temperature 4, the training inputs
  without labels) into a fresh student of the same architecture at the ticket's layer densities (a
  random mask, kept weights scaled by 1/sqrt(density): `fresh_sparse_student`);
- a false claim: an independent ticket fine-tuned the same way on a trigger set from a guessed key.

False positives: every independent ticket answers every reference's trigger set.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from search_recall import tickets  # noqa: E402

from service.triggers.service import TriggerRequest  # noqa: E402
from verifier.attacks import distill, fine_tune, fresh_sparse_student, prune_further  # noqa: E402
from verifier.data import load_dataset  # noqa: E402
from verifier.masks import densities, mask_from_weights, random_mask  # noqa: E402
from verifier.models import build_model, prunable_parameters  # noqa: E402
from verifier.training import evaluate  # noqa: E402
from verifier.triggers import chance_p, embed_triggers, generate_triggers, trigger_matches  # noqa: E402

ALPHA = 1e-3


def _model(arch, data, state):
    model = build_model(arch, data.input_shape, data.num_classes)
    model.load_state_dict(state)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="lenet300_100")
    parser.add_argument("--independent", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=15, help="Training epochs per IMP round (ticket finding).")
    parser.add_argument("--cache", type=Path)
    defaults = TriggerRequest()
    parser.add_argument("--share", type=float, default=defaults.share)
    parser.add_argument("--embed-epochs", type=int, default=defaults.epochs)
    parser.add_argument("--embed-lr", type=float, default=defaults.lr)
    args = parser.parse_args()
    embed = {"share": args.share, "epochs": args.embed_epochs, "lr": args.embed_lr}
    started = time.monotonic()
    data = load_dataset("digits")
    names = prunable_parameters(args.arch, build_model(args.arch, data.input_shape, data.num_classes))
    references, independent, _ = tickets(args.arch, args.independent, args.epochs, args.cache)
    rows: dict[str, list[tuple[float, float, float]]] = {}  # move -> per seed (test acc, trigger acc, p)
    embedded, sets = [], []

    def record(name: str, model, triggers) -> None:
        matches = trigger_matches(model, triggers)
        rows.setdefault(name, []).append((evaluate(model, data.x_test, data.y_test), matches / len(triggers),
                                          chance_p(matches, len(triggers), data.num_classes)))

    for seed, state in enumerate(references):
        triggers = generate_triggers(f"reference-{seed}".encode(), data.input_shape, data.num_classes)
        mask = mask_from_weights(state, names)
        model = _model(args.arch, data, state)
        record("ticket before embedding", model, triggers)
        embed_triggers(model, mask, data.x_train, data.y_train, triggers, seed=seed, **embed)
        record("ticket with trigger set", model, triggers)
        embedded.append(model.state_dict())
        sets.append(triggers)
        for fraction in (0.05, 0.1, 0.2, 0.5):
            attacked = copy.deepcopy(model)
            prune_further(attacked, copy.deepcopy(mask), fraction)
            record(f"pruned a further {fraction:.0%}", attacked, triggers)
        for epochs in (1, 5, 20):
            attacked = copy.deepcopy(model)
            fine_tune(attacked, mask, data.x_train, data.y_train, epochs=epochs, lr=0.01, seed=100 + seed)
            record(f"fine-tuned {epochs} epoch(s) without triggers", attacked, triggers)
        student_mask = random_mask({name: mask[name].shape for name in names}, densities(mask), seed=200 + seed)
        student = fresh_sparse_student(args.arch, data.input_shape, data.num_classes, student_mask, seed=seed)
        distill(model, student, student_mask, data.x_train, epochs=20, seed=seed)
        record("distilled into a fresh sparse student (20 epochs)", student, triggers)
        claimant = _model(args.arch, data, independent[seed])
        guessed = generate_triggers(f"guess-{seed}".encode(), data.input_shape, data.num_classes)
        embed_triggers(claimant, mask_from_weights(independent[seed], names), data.x_train, data.y_train, guessed,
                       seed=seed, **embed)
        record("false claim: independent ticket trained on guessed triggers", claimant, triggers)
        print(f"reference {seed} done ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)

    print(f"{args.arch} on digits: {len(references)} tickets (seeds 0-{len(references) - 1}), "
          f"{len(independent)} independent tickets; embedding {embed}; 100 triggers, chance 10 %\n")
    print("| move | test accuracy (%) | trigger accuracy (%) | chance p (max) | flagged at p <= 1e-3 |")
    print("|---|---|---|---:|---:|")
    for name, values in rows.items():
        test, trig, p = (np.array(column) for column in zip(*values, strict=True))
        print(f"| {name} | {100 * test.mean():.2f} ± {100 * test.std():.2f} | {100 * trig.mean():.1f} ± "
              f"{100 * trig.std():.1f} (min {100 * trig.min():.0f}) | {p.max():.1e} | "
              f"{int((p <= ALPHA).sum())}/{len(p)} |")
    p_values, accuracies = [], []
    for state in independent:
        model = _model(args.arch, data, state)
        for triggers in sets:
            matches = trigger_matches(model, triggers)
            accuracies.append(matches / len(triggers))
            p_values.append(chance_p(matches, len(triggers), data.num_classes))
    p_values = np.array(p_values)
    print(f"\nFalse positives: {len(p_values)} (independent ticket, trigger set) pairs: flagged at p <= 1e-3: "
          f"{int((p_values <= ALPHA).sum())}, at p <= 0.01: {int((p_values <= 0.01).sum())}, at p <= 0.05: "
          f"{int((p_values <= 0.05).sum())}; min p {p_values.min():.3g}; trigger accuracy "
          f"{100 * statistics.mean(accuracies):.1f} % (max {100 * max(accuracies):.0f} %)")
    print(f"\n({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
