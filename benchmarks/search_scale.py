"""1:N search latency: one verification without `ticket_id` against 10 ... 10,000 registered tickets.

    python benchmarks/search_scale.py [--arch resnet20] [--counts 10 100 1000 10000] [--repeats 3]

The registry is filled in place (SQLite, local artifacts): random-initialised networks of the
architecture built for digits' 1x8x8 input, each magnitude-pruned to 20 % per layer, stored as the
registration job stores them (canonical weights, bit-packed mask, the summary index row). Two
tickets are registered through the API: one with `signature=fingerprint`, one with `signature=qr` (1
recovery epoch on digits), after 10 bulk tickets so that the fingerprint ticket's aligned topology
test is calibrated (the smallest registry therefore holds 12). Suspects, each verified through the
API (inline job, the service's default 9,999 permutations): an independent ticket (every shortlisted
candidate is tested in full), the fingerprint ticket pruned a further 10 % (topology tests), and a
channel-permuted copy of the QR ticket (decoded; a valid MAC ends the search). "rank" is the
prefilter alone: reading the index and ranking every compatible ticket by summary distance. Bulk
tickets get the aligned test's references only where a search gives them that test
(`calibrate_nearest`): measuring them for all 10,000 would take hours, and only the tested ones
change the latency."""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import embedded_service, fill, random_ticket, time_calls  # noqa: E402

from verifier.attacks import permute_hidden_units  # noqa: E402
from verifier.masks import global_magnitude_prune, mask_from_weights  # noqa: E402
from verifier.models import build_model, prunable_parameters  # noqa: E402
from verifier.summaries import spectral_summary  # noqa: E402

INPUT, CLASSES = (1, 8, 8), 10


def calibrate_nearest(settings, store, ranked_ids: list[str]) -> None:
    """Measure the references (earlier tickets, as registration does) of the unsigned tickets a search
    gives the aligned test, where the bulk fill left them without: the independent suspect's
    verification then pays for that test as it would in a registry calibrated at registration."""
    from sqlalchemy import select

    from service.db import session_factory
    from service.models import Ticket
    from service.verifications.calibration import recalibrate, stored_references

    shortlist = ranked_ids[:settings.search_candidates]
    with session_factory(settings.resolved_database_url)() as session:
        tickets = {t.id: t for t in session.execute(select(Ticket).where(Ticket.id.in_(shortlist))).scalars()}
        unsigned = [i for i in shortlist if tickets[i].signature != "qr"][:settings.aligned_candidates]
        calibrated = stored_references(session, unsigned)
        for ticket_id in unsigned:
            count = len(calibrated.get(ticket_id, [])) or recalibrate(session, store, tickets[ticket_id],
                                                                    limit=settings.topology_references)
            print(f"nearest unsigned candidate of the independent suspect: {count} references "
                  f"(the aligned test runs from {settings.topology_min_references})", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--counts", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from service.artifacts import ArtifactStore
    from service.db import session_factory
    from service.verifications.search import index_entries, rank_entries
    from verifier.checkpoint import save_state_dict

    model = build_model(args.arch, INPUT, CLASSES)
    template = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = prunable_parameters(args.arch, model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        settings, app, owner, headers = embedded_service(Path(tmp))
        files = {}

        def save(name: str, state: dict) -> bytes:
            path = Path(tmp) / f"{name}.safetensors"
            save_state_dict(state, path)
            return path.read_bytes()

        with TestClient(app) as client:
            filled = settings.topology_min_references  # registered before the fingerprint ticket: the
            fill(settings, owner.id, args.arch, template, names, 0, filled)  # references of its aligned test
            registered = {}
            for seed, signature in ((1, "fingerprint"), (2, "qr")):
                response = client.post("/v1/tickets", headers=headers,
                                       data={"arch": args.arch, "dataset": "digits", "name": signature,
                                             "signature": signature, "recovery_epochs": "1"},
                                       files={"model": ("m", save(signature, random_ticket(template, names, seed)))})
                ticket = client.get(f"/v1/tickets/{response.json()['id']}", headers=headers).json()
                assert ticket["status"] == "registered" and ticket["signature"] == signature, ticket
                registered[signature] = client.get(f"/v1/tickets/{ticket['id']}/model", headers=headers).content
            from safetensors.torch import load as load_safetensors

            fingerprint = load_safetensors(registered["fingerprint"])
            pruned = global_magnitude_prune(fingerprint, mask_from_weights(fingerprint, names), 0.1)
            files["independent ticket"] = save("independent", random_ticket(template, names, 3))
            files["fingerprint ticket, pruned a further 10 %"] = save(
                "pruned", {k: (v * pruned[k] if k in pruned else v) for k, v in fingerprint.items()})
            files["QR ticket, channels permuted"] = save(
                "permuted", permute_hidden_units(args.arch, copy.deepcopy(load_safetensors(registered["qr"])), 4))
            for target in sorted(args.counts):
                fill(settings, owner.id, args.arch, template, names, filled, max(filled, target - 2))
                filled = max(filled, target - 2)
                count = filled + 2  # with the two registered through the API
                store = ArtifactStore(settings.resolved_artifact_dir)
                suspect = spectral_summary(load_safetensors(files["independent ticket"]), names)

                def rank(store=store, suspect=suspect) -> list:
                    with session_factory(settings.resolved_database_url)() as session:
                        entries = index_entries(session, None)
                    return rank_entries(entries, suspect, names, store)

                rank_times = time_calls(rank, args.repeats)
                calibrate_nearest(settings, store, [entry.ticket_id for _, entry in rank()])
                for name, data in files.items():
                    verdicts = []

                    def verify(data=data, verdicts=verdicts) -> None:
                        accepted = client.post("/v1/verifications", headers=headers,
                                               files={"model": ("s", data)}).json()
                        result = client.get(f"/v1/verifications/{accepted['id']}", headers=headers).json()
                        assert result["status"] == "completed", result
                        evidence = result["evidence"]
                        aligned = evidence.get("aligned_topology", {}).get("calibrated", False)
                        verdicts.append(f"{result['verdict']} ({evidence['candidates_compared']} tested"
                                        f"{', aligned test run' if aligned else ''})")

                    times = time_calls(verify, args.repeats)
                    rows.append((count, name, statistics.median(rank_times), statistics.median(times), max(times),
                                 verdicts[-1]))
                    print(rows[-1], file=sys.stderr, flush=True)
    print("| tickets | suspect | rank ms | verification median ms | max ms | verdict |")
    print("|---:|---|---:|---:|---:|---|")
    for count, name, rank_ms, median, worst, result in rows:
        print(f"| {count:,} | {name} | {rank_ms:.1f} | {median:.1f} | {worst:.1f} | {result} |")


if __name__ == "__main__":
    main()
