"""QR signatures on digits: round trip and fidelity cost, survival of a thief's moves, and false positives.

    python benchmarks/qr_signatures.py [--arch lenet300_100|resnet20] [--references 3] [--independent 30]
                                       [--epochs 15]

Reference tickets: IMP with rewinding to init (3 rounds pruning 50 %, 15 epochs), seeds 0..R-1, each
signed with a version 3-H QR code, whitened with a per-ticket key as the service does (function
patterns kept from the map), recovery fine-tune 2 epochs
at lr 0.01. Independent tickets: the same recipe, seeds 1000..1000+N-1, read against every signed
reference. Thieves start from each signed ticket. Each suspect is read with channel alignment and
the module test (9,999 permutations by default); `match` means p <= 0.001 (Bonferroni over the
topology and QR tests is left out here: this table is the QR test alone).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verifier.attacks import fine_tune, permute_hidden_units, prune_further, reparametrise  # noqa: E402
from verifier.data import load_dataset  # noqa: E402
from verifier.decision import verdict  # noqa: E402
from verifier.masks import Mask, apply_mask, global_magnitude_prune  # noqa: E402
from verifier.models import build_model  # noqa: E402
from verifier.signatures.qr import make_code, make_payload, whitening_key  # noqa: E402
from verifier.signatures.signing import read_signature, sign_ticket, signature_read_mask  # noqa: E402
from verifier.tickets import find_imp_ticket  # noqa: E402
from verifier.training import evaluate, train  # noqa: E402

SECRET = b"benchmark secret"


def _model(arch, data, state):
    model = build_model(arch, data.input_shape, data.num_classes)
    model.load_state_dict(state)
    return model


def _add_on(state: dict[str, torch.Tensor], mask: Mask, fraction: float, seed: int,
            level: float = 0.1) -> dict[str, torch.Tensor]:
    """Revive `fraction` of the pruned weights with random values at `level` times the mean kept
    magnitude (the paper's fake2; `fraction` 1: the whole model dense)."""
    generator = torch.Generator().manual_seed(seed)
    out = dict(state)
    for name, keep in mask.items():
        revive = (torch.rand(keep.shape, generator=generator) < fraction) & ~keep
        scale = state[name][keep].abs().mean() * level
        out[name] = torch.where(revive, scale * torch.randn(keep.shape, generator=generator), state[name])
    return out


def attacks(arch, data, signed_state, mask, seed):
    """(name, attacked state) for every move of the survival table."""
    def pruned(fraction, state=signed_state, base_mask=mask):
        model = _model(arch, data, state)
        prune_further(model, copy.deepcopy(base_mask), fraction)
        return model.state_dict()

    tuned = _model(arch, data, signed_state)
    fine_tune(tuned, copy.deepcopy(mask), data.x_train, data.y_train, epochs=3, lr=0.01, seed=seed)
    yield "fine-tuned, mask fixed (3 epochs)", tuned.state_dict()
    for fraction in (0.05, 0.1, 0.2, 0.3, 0.5):
        yield f"pruned a further {fraction:.0%}", pruned(fraction)
    for fraction in (0.005, 0.01, 0.02, 0.05):
        yield f"add-on {fraction:.1%} of pruned weights", _add_on(signed_state, mask, fraction, seed)
    permuted = permute_hidden_units(arch, signed_state, seed)
    names = {"lenet300_100": "hidden units permuted", "conv4": "channels and hidden units permuted"}
    yield names.get(arch, "block channels permuted"), permuted
    yield ("every channel permuted, every unit rescaled (1/100-100), BatchNorms folded",
           reparametrise(arch, signed_state, seed))
    yield "pruned a further 10%, then permuted and rescaled", reparametrise(arch, pruned(0.1), seed)
    for level in (0.1, 0.2, 0.3, 0.5):
        yield (f"made dense (every pruned weight revived at {level:.0%} of the kept mean), permuted and rescaled",
               reparametrise(arch, _add_on(signed_state, mask, 1.0, seed, level), seed))
    dense = _model(arch, data, signed_state)
    train(dense, data.x_train, data.y_train, epochs=2, lr=0.01, seed=seed)  # mask dropped
    names = list(mask)
    kept = sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
    regrown = global_magnitude_prune(dict(dense.named_parameters()), {n: torch.ones_like(mask[n]) for n in names},
                                     1 - kept)
    apply_mask(dense, regrown)
    yield "dense fine-tune (2 epochs), re-pruned to the ticket's density", dense.state_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="lenet300_100")
    parser.add_argument("--references", type=int, default=3)
    parser.add_argument("--independent", type=int, default=30)
    parser.add_argument("--permutations", type=int, default=9999)
    parser.add_argument("--epochs", type=int, default=15, help="Training epochs per IMP round.")
    args = parser.parse_args()
    started = time.monotonic()
    data = load_dataset("digits")
    torch.manual_seed(0)
    signed = []
    print("## Round trip and fidelity cost\n")
    print("| seed | layer | offset | matched before | accuracy before | embedded | after recovery | decoded |")
    print("|---:|---|---|---:|---:|---:|---:|---|")
    for seed in range(args.references):
        ticket = find_imp_ticket(args.arch, data, seed=seed, rounds=3, rate=0.5, epochs=args.epochs)
        code = make_code(make_payload(SECRET, "owner", f"ticket-{seed}"))
        key = whitening_key(SECRET, f"ticket-{seed}")
        result = sign_ticket(args.arch, data, ticket.state, ticket.mask, ticket.rewind, code, key=key, seed=seed)
        own = read_signature(args.arch, code, result.placement, result.weights, result.weights, result.mask,
                             key=key, permutations=args.permutations, seed=seed)
        r = result.report
        print(f"| {seed} | {result.placement.layer} | ({result.placement.row}, {result.placement.col}) | "
              f"{r['placement_matched']}/{r['data_modules']} | {r['accuracy_before']:.4f} | "
              f"{r['accuracy_embedded']:.4f} | {r['accuracy_after']:.4f} | {own['decoded'] == code.payload} |")
        signed.append((seed, code, key, result))
    print("\n## Survival of a thief's moves (QR test alone, with alignment)\n")
    print("| attack | accuracy (mean over refs) | decoded | module p (max over refs) | agreement (min) | "
          "match |")
    print("|---|---:|---:|---:|---:|---:|")
    rows: dict[str, list] = {}
    for seed, code, key, result in signed:
        for name, state in attacks(args.arch, data, result.weights, result.mask, seed=2000 + seed):
            mask = signature_read_mask(result.mask, state)  # as the service reads a suspect
            read = read_signature(args.arch, code, result.placement, result.weights, state, mask, key=key,
                                  permutations=args.permutations, seed=seed)
            accuracy = evaluate(_model(args.arch, data, state), data.x_test, data.y_test)
            rows.setdefault(name, []).append((accuracy, read["decoded"] == code.payload, read["p_value"],
                                              read["module_test"]["agreement"]))
    for name, values in rows.items():
        print(f"| {name} | {statistics.mean(v[0] for v in values):.4f} | {sum(v[1] for v in values)}/{len(values)}"
              f" | {max(v[2] for v in values):.2g} | {min(v[3] for v in values):.3f} | "
              f"{sum(verdict(v[2]) == 'match' for v in values)}/{len(values)} |")
    print("\n## False positives: independent tickets read against each signed reference\n")
    p_values, decoded = [], 0
    for index in range(args.independent):
        other = find_imp_ticket(args.arch, data, seed=1000 + index, rounds=3, rate=0.5, epochs=args.epochs)
        for seed, code, key, result in signed:
            read = read_signature(args.arch, code, result.placement, result.weights, other.state, other.mask,
                                  key=key, permutations=args.permutations, seed=seed)
            p_values.append(read["p_value"])
            decoded += read["decoded"] is not None
    p_sorted = sorted(p_values)
    quantiles = [p_sorted[int(q * (len(p_sorted) - 1))] for q in (0.05, 0.25, 0.5, 0.75, 0.95)]
    print(f"{len(p_values)} pairs ({args.independent} independent tickets x {len(signed)} references): "
          f"match (p <= 0.001) {sum(p <= 1e-3 for p in p_values)}, inconclusive (p < 0.01) "
          f"{sum(1e-3 < p < 1e-2 for p in p_values)}, decoded {decoded}; min p {p_sorted[0]:.3g}; "
          f"p quantiles 5/25/50/75/95 %: " + " ".join(f"{q:.3f}" for q in quantiles))
    print(f"\nwall time {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
