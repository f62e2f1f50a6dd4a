"""What the benchmark scripts share: timing repeated calls, and an embedded service to call."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

DENSITY = 0.2  # of the bulk tickets


def time_calls(fn: Callable[[], object], repeats: int) -> list[float]:
    """Milliseconds of `repeats` calls of `fn`, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def embedded_service(data_dir: Path):
    """(settings, app, owner, headers): the service on SQLite in `data_dir`, jobs run inline, one owner."""
    from service.app import create_app
    from service.config import Settings
    from service.db import session_factory
    from service.owners.service import create_owner

    settings = Settings(data_dir=data_dir, executor="inline", secret_key="bench")
    app = create_app(settings)
    with session_factory(settings.resolved_database_url)() as session:
        owner, key = create_owner(session, secret=settings.secret(), name="bench", is_admin=False, actor="bench")
    return settings, app, owner, {"Authorization": f"Bearer {key}"}


def random_ticket(template: dict[str, torch.Tensor], names: list[str], seed: int) -> dict[str, torch.Tensor]:
    """A freshly initialised network (He-normal weights), magnitude-pruned to DENSITY per layer."""
    from verifier.masks import magnitude_mask

    generator = torch.Generator().manual_seed(seed)
    weights = dict(template)
    for name in names:
        shape = template[name].shape
        fan_in = template[name][0].numel()
        weights[name] = torch.randn(shape, generator=generator) * (2.0 / fan_in) ** 0.5
    mask = magnitude_mask(weights, dict.fromkeys(names, DENSITY))
    return {k: (v * mask[k] if k in mask else v) for k, v in weights.items()}


def fill(settings, owner_id: str, arch: str, template, names, start: int, stop: int) -> None:
    """Register tickets start..stop-1 directly in the database and the artifact store."""
    from service.artifact_records import record_artifact
    from service.artifacts import ArtifactStore
    from service.db import session_factory
    from service.modelfiles import store_mask, store_weights
    from service.models import Ticket, TicketSummary, utcnow
    from service.verifications.search import SUMMARY_KIND
    from verifier.masks import mask_from_weights
    from verifier.summaries import spectral_summary

    store = ArtifactStore(settings.resolved_artifact_dir)
    with session_factory(settings.resolved_database_url)() as session:
        for seed in range(start, stop):
            weights = random_ticket(template, names, 10_000 + seed)
            mask = mask_from_weights(weights, names)
            model_sha, model_size = store_weights(store, weights)
            mask_sha, mask_size = store_mask(store, mask)
            record_artifact(session, sha256=model_sha, size=model_size, kind="model")
            record_artifact(session, sha256=mask_sha, size=mask_size, kind="mask")
            ticket = Ticket(owner_id=owner_id, name=f"bulk {seed}", arch=arch, dataset="digits",
                            status="registered", upload_sha256=model_sha, model_sha256=model_sha,
                            mask_sha256=mask_sha, sparsity=1 - DENSITY, layer_sparsity={},
                            registered_at=utcnow(), signature="fingerprint")
            session.add(ticket)
            session.flush()
            session.add(TicketSummary(ticket_id=ticket.id, kind=SUMMARY_KIND,
                                      vector=spectral_summary(weights, names).astype("<f4").tobytes()))
            if seed % 500 == 499:
                session.commit()
        session.commit()
