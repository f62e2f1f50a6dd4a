from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, BackgroundTasks, File, Form, Request, Response, UploadFile

from service.deps import CurrentOwner, DbSession, SettingsDep, Store
from service.errors import not_found
from service.models import Owner, Signature, Ticket, Verification
from service.openapi import binary_response
from service.signatures.service import EVIDENCE_IMAGES, evidence_image
from service.tickets.schemas import Accepted
from service.triggers.endpoint import policy_from_settings
from service.verifications import service
from service.verifications.schemas import VerificationOut

router = APIRouter(prefix="/v1/verifications", tags=["verifications"])


def verification_out(session, verification: Verification) -> VerificationOut:
    """Reveal the matched ticket's id, owner name and registration time; nothing more of it."""
    ticket_id = verification.matched_ticket_id or verification.requested_ticket_id
    ticket = session.get(Ticket, ticket_id) if ticket_id else None
    owner = session.get(Owner, ticket.owner_id) if ticket else None
    return VerificationOut(
        id=verification.id, status=verification.status, mode=verification.mode, source=verification.source,
        attested_by=service.attested_by(verification.source),
        verdict=verification.verdict,
        ticket_id=ticket_id, owner=owner.name if owner else None,
        registered_at=ticket.registered_at if ticket else None, p_value=verification.p_value,
        evidence=verification.evidence, job_id=verification.job_id, created_at=verification.created_at,
        completed_at=verification.completed_at, error=verification.error)


ANSWERS_MAX_BYTES = 1 << 20


@router.post("", status_code=202, response_model=Accepted)
def create_verification(
    request: Request, owner: CurrentOwner, session: DbSession, settings: SettingsDep, store: Store,
    background: BackgroundTasks,
    model: Annotated[UploadFile | None, File(description="The suspect model (.safetensors or .pt/.pth).")] = None,
    endpoint: Annotated[str | None, Form(max_length=2000, description="Instead of a file: the URL of the "
                                         "suspect's prediction API (black-box; the JSON contract is in "
                                         "the README). Needs `ticket_id`.")] = None,
    answers: Annotated[UploadFile | None, File(description="Instead of a file: the suspect's answers to your "
                                               "ticket's trigger inputs (GET /v1/tickets/{id}/trigger-set), "
                                               'as JSON {"labels": [...]} or {"logits": [[...]]}. '
                                               "Needs `ticket_id`.")] = None,
    ticket_id: Annotated[str | None, Form(description="One of your tickets; omit to search all.")] = None,
    mode: Annotated[Literal["white_box", "black_box", "both"] | None, Form(
        description="white_box: weights and mask; black_box: answers to the ticket's trigger inputs only; "
                    "both (a model file). Default: white_box for a model file, black_box otherwise.")] = None,
    key_check: Annotated[bool, Form(description="With a locked `ticket_id`: also retrain from its rewind "
                                    "weights with the suspect's mask, without and with the key, and report "
                                    "the accuracy gap (minutes on a CPU).")] = False,
) -> Accepted:
    """Ask whether a suspect model derives from a registered ticket. Runs as a job."""
    answer_bytes = None
    if answers is not None:
        with store.staged(answers.file, max_bytes=ANSWERS_MAX_BYTES) as staged:
            answer_bytes = staged.path.read_bytes()
    common = {"ticket_id": ticket_id, "key_check": key_check, "max_attempts": settings.max_attempts,
              "mode": mode, "endpoint": endpoint, "answers": answer_bytes, "policy": policy_from_settings(settings)}
    if model is not None:
        with store.staged(model.file, max_bytes=settings.max_upload_bytes) as upload:
            verification = service.submit_verification(session, owner=owner, store=store, upload=upload, **common)
    else:
        verification = service.submit_verification(session, owner=owner, store=store, upload=None, **common)
    background.add_task(request.app.state.executor.submit, verification.job_id)
    return Accepted(id=verification.id, status=verification.status, job_id=verification.job_id)


@router.get("/{verification_id}", response_model=VerificationOut)
def get_verification(verification_id: str, owner: CurrentOwner, session: DbSession) -> VerificationOut:
    verification = service.visible_verification(session, owner=owner, verification_id=verification_id)
    return verification_out(session, verification)


@router.get("/{verification_id}/evidence/{name}", response_class=Response,
            responses=binary_response("image/png", "A PNG image."))
def get_evidence_image(verification_id: str, name: str, owner: CurrentOwner, session: DbSession) -> Response:
    """QR evidence as PNG: `expected.png` (the code as embedded), `window.png` (the suspect's window read
    as a QR symbol) or `difference.png` (red: the code removed the kernel, the suspect has it; blue: the
    other way). Only for the owner of the signed ticket; 404 otherwise."""
    if name not in EVIDENCE_IMAGES:
        raise not_found(f"evidence image {name!r} (known: {', '.join(EVIDENCE_IMAGES)})")
    verification = service.visible_verification(session, owner=owner, verification_id=verification_id)
    qr = (verification.evidence or {}).get("qr") or {}
    ticket = session.get(Ticket, qr["ticket_id"]) if "window" in qr else None
    signature = session.get(Signature, ticket.id) if ticket else None
    if signature is None or (ticket.owner_id != owner.id and not owner.is_admin):
        raise not_found("QR evidence of this verification")
    return Response(evidence_image(signature, qr["window"], name), media_type="image/png")
