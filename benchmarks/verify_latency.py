"""Verification latency on this machine: the topology test alone, and a whole verification via the API.

    python benchmarks/verify_latency.py [--repeats 5] [--archs lenet300_100 resnet20 resnet50] [--topology-only]
        [--initialisation-only]

Prints a table (median and max of the repeats, milliseconds). The topology test runs against an
independent suspect (the sequential null stops early) and against the ticket itself (the tail bound
decides). The initialisation test: the sign test a verification runs against a ticket whose
initialisation is known, and the search among the seeds anyone would try that registering an
upload runs. Via the API each architecture's
ticket is registered three times: `fingerprint` first (no earlier tickets: the aligned test is
uncalibrated and skipped), `qr`, and `fingerprint` again after 10 bulk tickets (`common.fill`), so
that its aligned topology test is calibrated and runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import embedded_service, fill, time_calls  # noqa: E402

from verifier.initialisation import find_known_seed, seeded_signs, sign_agreement  # noqa: E402
from verifier.masks import magnitude_mask  # noqa: E402
from verifier.models import build_model, prunable_parameters  # noqa: E402
from verifier.topology import compare_topology  # noqa: E402
from verifier.units import layer_groups  # noqa: E402


def _ticket(arch: str, density: float, seed: int) -> tuple[dict, dict]:
    torch.manual_seed(seed)
    model = build_model(arch, (1, 8, 8), 10)
    weights = dict(model.state_dict())
    names = prunable_parameters(arch, model)
    mask = magnitude_mask(weights, dict.fromkeys(names, density))
    for name in names:
        weights[name] = weights[name] * mask[name]
    return weights, mask


def initialisation_rows(archs: list[str], repeats: int) -> list[tuple[str, list[float]]]:
    rows = []
    for arch in archs:
        weights, mask = _ticket(arch, 0.2, 20_261_207)  # a seed outside KNOWN_SEEDS: the search tries them all
        signs = seeded_signs(arch, ((1, 8, 8), 10), 20_261_207, list(mask))
        cells = sign_agreement(signs, weights, mask).cells
        rows.append((f"sign test {arch} ({cells:,} cells)",
                     time_calls(lambda signs=signs, weights=weights, mask=mask: sign_agreement(signs, weights, mask),
                                repeats)))
        rows.append((f"known-seed search {arch} (registering an upload)",
                     time_calls(lambda arch=arch, weights=weights, mask=mask: find_known_seed(
                         arch, ((1, 8, 8), 10), weights, mask), repeats)))
    return rows


def topology_rows(archs: list[str], repeats: int) -> list[tuple[str, list[float]]]:
    rows = []
    for arch in archs:
        ticket_weights, ticket_mask = _ticket(arch, 0.2, 0)
        suspect_weights, _ = _ticket(arch, 0.2, 1)
        axes = layer_groups(arch, suspect_weights)
        for kind, suspect in (("independent suspect", suspect_weights), ("copy", ticket_weights)):
            for permutations in (9999, 99999):
                def run(permutations=permutations, ticket_mask=ticket_mask, suspect=suspect, axes=axes) -> None:
                    compare_topology(ticket_mask, suspect, groups=axes, permutations=permutations)

                times = time_calls(run, repeats)
                rows.append((f"compare_topology {arch}, {kind}, {permutations:,} permutations", times))
    return rows


def api_rows(archs: list[str], repeats: int) -> list[tuple[str, list[float]]]:
    from fastapi.testclient import TestClient

    from verifier.checkpoint import save_state_dict

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        settings, app, owner, headers = embedded_service(Path(tmp))
        with TestClient(app) as client:
            for arch in archs:
                ticket, _ = _ticket(arch, 0.2, 0)
                suspect, _ = _ticket(arch, 0.2, 1)
                paths = {}
                for name, state in (("ticket", ticket), ("suspect", suspect)):
                    paths[name] = Path(tmp) / f"{arch}-{name}.safetensors"
                    save_state_dict(state, paths[name])
                suspect_bytes = paths["suspect"].read_bytes()
                for signature, tests in (("fingerprint", "topology"), ("qr", "topology + QR"),
                                         ("fingerprint", "topology + aligned topology")):
                    if tests == "topology + aligned topology":  # references registered before it: calibrated
                        model = build_model(arch, (1, 8, 8), 10)
                        fill(settings, owner.id, arch, model.state_dict(), prunable_parameters(arch, model), 0,
                             settings.topology_min_references)
                    response = client.post("/v1/tickets", headers=headers,
                                           data={"arch": arch, "dataset": "digits", "name": arch,
                                                 "signature": signature, "recovery_epochs": "1"},
                                           files={"model": ("m", paths["ticket"].read_bytes())})
                    ticket_id = response.json()["id"]

                    def verify(ticket_id=ticket_id, suspect_bytes=suspect_bytes, tests=tests) -> None:
                        accepted = client.post("/v1/verifications", headers=headers,
                                               data={"ticket_id": ticket_id},
                                               files={"model": ("s", suspect_bytes)}).json()
                        result = client.get(f"/v1/verifications/{accepted['id']}", headers=headers).json()
                        assert result["status"] == "completed", result
                        aligned = result["evidence"].get("aligned_topology", {}).get("calibrated", False)
                        assert aligned == ("aligned" in tests), result["evidence"]

                    rows.append((f"POST+GET /v1/verifications {arch}, {tests} (inline job, SQLite, 9999 perms)",
                                 time_calls(verify, repeats)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--archs", nargs="+", default=["lenet300_100", "resnet20", "resnet50"])
    parser.add_argument("--topology-only", action="store_true", help="Only the compare_topology rows.")
    parser.add_argument("--initialisation-only", action="store_true", help="Only the initialisation test's rows.")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = initialisation_rows(args.archs, args.repeats)
    if not args.initialisation_only:
        rows += topology_rows(args.archs, args.repeats)
    if not (args.topology_only or args.initialisation_only):
        rows += api_rows(args.archs, args.repeats)
    width = max(len(name) for name, _ in rows)
    print(f"{'what':<{width}}  {'median ms':>10}  {'max ms':>8}")
    for name, times in rows:
        print(f"{name:<{width}}  {statistics.median(times):>10.1f}  {max(times):>8.1f}")


if __name__ == "__main__":
    main()
