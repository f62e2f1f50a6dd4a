"""Trigger sets in the service (scheme V3): generated from a key under the server secret and embedded
by a registration job, downloadable by the ticket's owner only, and judged against a suspect's
answers by a verification job."""

from __future__ import annotations

import hashlib
import hmac
import json
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy.orm import Session

from service.artifacts import ArtifactStore
from service.datasets.catalog import DatasetRef, load
from service.datasets.npz import read_arrays, validate_inputs, validate_labels
from service.db import release
from service.errors import APIError, not_found
from service.jobs.context import JobContext
from service.models import Owner, Ticket, TriggerSet
from service.triggers.answers import parse_answers
from service.verifications.calibration import reference_tickets
from verifier.checkpoint import read_state_dict
from verifier.masks import Mask
from verifier.models import build_model
from verifier.training import evaluate
from verifier.triggers import TriggerSet as Triggers
from verifier.triggers import chance_p, embed_triggers, empirical_p, generate_triggers, trigger_matches

TRIGGER_MATCHES = "trigger-matches"  # the `ticket_references` kind: a reference model's matches


@dataclass(frozen=True)
class TriggerRequest:
    """What the owner asked for at registration (`share`: the part of every batch that is triggers)."""

    enabled: bool = False
    size: int = 100
    share: float = 0.25
    epochs: int = 20
    lr: float = 0.1
    upload_sha256: str | None = None  # the owner's own set (validated at submission) instead of a generated one

    @property
    def source(self) -> str:
        return "uploaded" if self.upload_sha256 else "generated"


def trigger_key(secret: bytes, ticket_id: str) -> bytes:
    """The key a ticket's trigger set is generated from: without the server secret it cannot be guessed."""
    return hmac.new(secret, b"trigger-set:" + ticket_id.encode(), hashlib.sha256).digest()


@dataclass(frozen=True)
class EmbeddedTriggers:
    weights: dict[str, torch.Tensor]
    triggers: Triggers
    report: dict[str, Any]


def embed_for_registration(ctx: JobContext, *, request: TriggerRequest, ticket_id: str, arch: str,
                           dataset: DatasetRef, weights: dict[str, torch.Tensor], mask: Mask,
                           progress: Callable[[int, float], None] | None = None) -> EmbeddedTriggers:
    """Generate the ticket's trigger set and fine-tune it in with the mask fixed; the report records
    test and trigger accuracy before and after (the fidelity cost)."""
    data = load(ctx.store, dataset)
    if request.upload_sha256:
        triggers = read_uploaded_triggers(ctx.store.path(request.upload_sha256), input_shape=data.input_shape,
                                          num_classes=data.num_classes)
    else:
        triggers = generate_triggers(trigger_key(ctx.settings.secret(), ticket_id), data.input_shape,
                                     data.num_classes, request.size)
    model = build_model(arch, data.input_shape, data.num_classes)
    model.load_state_dict(weights)
    before = (evaluate(model, data.x_test, data.y_test), trigger_matches(model, triggers))
    embed_triggers(model, mask, data.x_train, data.y_train, triggers, share=request.share, epochs=request.epochs,
                   lr=request.lr, seed=zlib.crc32(ticket_id.encode()), progress=progress)
    model.cpu()
    after = (evaluate(model, data.x_test, data.y_test), trigger_matches(model, triggers))
    size = len(triggers)
    report = {"source": request.source, "size": size, "share": request.share, "epochs": request.epochs,
              "lr": request.lr, "test_accuracy_before": before[0], "test_accuracy_after": after[0],
              "trigger_accuracy_before": before[1] / size, "trigger_accuracy_after": after[1] / size}
    state = {name: value.detach().clone() for name, value in model.state_dict().items()}
    return EmbeddedTriggers(state, triggers, report)


MIN_UPLOADED, MAX_UPLOADED = 10, 1000


def read_uploaded_triggers(path: Path, *, input_shape: tuple[int, ...], num_classes: int,
                           max_bytes: int = 1 << 30) -> Triggers:
    """An owner's own trigger set: an .npz with exactly `x` (float in [0, 1], or uint8, at the dataset's
    input shape) and `y` (labels in [0, num_classes)), 10 to 1,000 of them; 422 invalid_trigger_set."""
    code = "invalid_trigger_set"
    arrays = read_arrays(path, ("x", "y"), max_bytes=max_bytes, code=code, what="trigger set")
    x = validate_inputs(arrays["x"], "x", code)
    y = validate_labels(arrays["y"], "y", len(x), code)
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise APIError(422, code, f"x must hold inputs of shape {tuple(input_shape)}; got {tuple(x.shape[1:])}")
    if not MIN_UPLOADED <= len(x) <= MAX_UPLOADED:
        raise APIError(422, code, f"a trigger set holds {MIN_UPLOADED} to {MAX_UPLOADED} inputs; got {len(x)}")
    if x.min() < 0 or x.max() > 1:
        raise APIError(422, code, "x must lie in [0, 1] (raw pixel values, as the dataset's own inputs)")
    if y.max() >= num_classes:
        raise APIError(422, code, f"y must lie in [0, {num_classes})")
    return Triggers(torch.from_numpy(x), torch.from_numpy(y))


def save_triggers(store: ArtifactStore, triggers: Triggers) -> tuple[str, int]:
    """The set as an .npz artifact (x float32, y int64); returns (sha256, size)."""
    with tempfile.TemporaryDirectory(dir=store.root / "tmp") as tmp:
        path = Path(tmp) / "triggers.npz"
        np.savez(path, x=triggers.x.numpy(), y=triggers.y.numpy())
        return store.put_file(path)


def load_triggers(path: Path) -> Triggers:
    with np.load(path, allow_pickle=False) as archive:
        return Triggers(torch.from_numpy(archive["x"]), torch.from_numpy(archive["y"]))


def trigger_references(session: Session, store: ArtifactStore, *, ticket_id: str, model_sha256: str, arch: str,
                       dataset: DatasetRef, triggers: Triggers, limit: int) -> list[tuple[str, float]]:
    """(reference id, matches) of up to `limit` models registered before this ticket (same architecture
    and dataset) answering its triggers: the empirical null. Models are run on the worker's CPU."""
    references = reference_tickets(session, ticket_id=ticket_id, model_sha256=model_sha256, arch=arch,
                                   dataset=dataset.name, density=None, limit=limit)
    release(session)  # no transaction held while the references are measured
    values = []
    for reference in references:
        model = build_model(arch, *dataset.spec)
        model.load_state_dict(read_state_dict(store.path(reference.model_sha256)))
        values.append((reference.id, float(trigger_matches(model, triggers))))
    return values


UPLOADED_CAVEAT = ("the owner chose these labels and could have copied a model's answers into them: this set is "
                   "evidence only about models published after its registration time (registered_at; the audit "
                   "chain's ticket.registered event timestamps it)")


def judge_answers(triggers: Triggers, answers: np.ndarray, num_classes: int, reference_matches: list[float], *,
                  min_references: int, source: str = "generated", registered_at: datetime | None = None
                  ) -> dict[str, Any]:
    """The trigger-set test's evidence: matches, the chance p and, with at least `min_references`
    reference models, the p against their match rate; the decision takes the larger. The chance p
    is exact only for keyed labels (`generated`): an owner who chose the labels of an `uploaded` set
    could have chosen a suspect's own answers, so such a set is judged against the references alone
    and decides nothing (p 1) until there are enough of them; its evidence carries the set's
    registration time (`registered_at`) and a caveat, as it says nothing of models published before."""
    matches, total = int((torch.as_tensor(answers) == triggers.y).sum()), len(triggers)
    result: dict[str, Any] = {"source": source, "matches": matches, "size": total, "chance_rate": 1.0 / num_classes,
                              "p_chance": chance_p(matches, total, num_classes), "references": len(reference_matches)}
    if source == "uploaded":
        result.update(registered_at=registered_at.isoformat() if registered_at else None, caveat=UPLOADED_CAVEAT)
    result["p_value"] = result["p_chance"] if source == "generated" else 1.0
    result["calibrated"] = len(reference_matches) >= min_references
    if result["calibrated"]:
        p_empirical, rate = empirical_p(matches, total, [round(m) for m in reference_matches], num_classes)
        result.update(reference_rate=sum(reference_matches) / (total * len(reference_matches)), null_rate=rate,
                      p_empirical=p_empirical, p_value=max(result["p_chance"], p_empirical))
    return result


@torch.no_grad()
def predict_labels(arch: str, spec: tuple, weights: dict[str, torch.Tensor], x: torch.Tensor) -> np.ndarray:
    """An uploaded suspect run as a black box: only its predicted labels leave this function."""
    model = build_model(arch, *spec)
    model.load_state_dict(weights)
    model.eval()
    return model(x).argmax(1).numpy()


def owned_trigger_set(session: Session, *, owner: Owner, ticket_id: str) -> TriggerSet:
    """The trigger set of a ticket the caller owns; 404 for anyone else (admins included) and for a
    ticket without one."""
    ticket = session.get(Ticket, ticket_id)
    if ticket is None or ticket.owner_id != owner.id:
        raise not_found(f"ticket {ticket_id}")
    found = session.get(TriggerSet, ticket_id)
    if found is None:
        raise not_found(f"trigger set of ticket {ticket_id} (registered without `trigger_set=true`)")
    return found


def trigger_set_npz(store: ArtifactStore, found: TriggerSet) -> bytes:
    """The owner's download: the stored .npz (x: inputs in [0, 1] at the dataset's input shape; y: labels)."""
    return store.path(found.artifact_sha256).read_bytes()


def read_answers(data: bytes, size: int, num_classes: int) -> np.ndarray:
    """Answers an owner uploads (`service.triggers.answers`), one per trigger input in the downloaded
    order; 422 for anything else."""
    try:
        return parse_answers(json.loads(data.decode("utf-8")), size, num_classes)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise APIError(422, "invalid_answers", f"answers: {exc}") from None
