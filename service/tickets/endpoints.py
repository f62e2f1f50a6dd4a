from __future__ import annotations

import io
from typing import Annotated, BinaryIO, Literal

from fastapi import APIRouter, BackgroundTasks, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, Response
from safetensors.torch import save as save_safetensors
from sqlalchemy import select

from service.artifact_records import record_artifact
from service.audit.schemas import ReceiptOut
from service.audit.transparency import log_key, receipt
from service.datasets.catalog import DatasetRef, resolve_dataset
from service.deps import CurrentOwner, DbSession, SettingsDep, Store
from service.errors import APIError
from service.finding.service import found_ticket_path
from service.jobs.service import visible_job
from service.models import AuditEvent, Signature, Ticket, TriggerSet
from service.openapi import binary_response
from service.signatures.service import SignatureRequest, check_qr_fits
from service.tickets import service
from service.tickets.schemas import Accepted, TicketList, TicketOut
from service.triggers.service import TriggerRequest, owned_trigger_set, read_uploaded_triggers, trigger_set_npz
from verifier.models import architecture_names
from verifier.tickets import load_ticket

router = APIRouter(prefix="/v1/tickets", tags=["tickets"])


def check_arch_and_dataset(session, arch: str, dataset: str, *, owner) -> DatasetRef:
    """422 for an unknown arch; the resolved dataset (registered, or uploaded by this owner)."""
    if arch not in architecture_names():
        raise APIError(422, "unknown_arch",
                       f"unknown arch {arch!r}; known: {', '.join(architecture_names())}")
    return resolve_dataset(session, dataset, owner=owner)


def ticket_out(session, ticket: Ticket) -> TicketOut:
    """A ticket as its owner sees it (the signature's and the trigger set's fidelity reports included,
    not the credential or the triggers)."""
    signature = session.get(Signature, ticket.id)
    triggers = session.get(TriggerSet, ticket.id)
    return TicketOut(id=ticket.id, name=ticket.name, arch=ticket.arch, dataset=ticket.dataset,
                     status=ticket.status, sparsity=ticket.sparsity, layer_sparsity=ticket.layer_sparsity,
                     model_sha256=ticket.model_sha256, job_id=ticket.job_id, created_at=ticket.created_at,
                     registered_at=ticket.registered_at, error=ticket.error, error_code=ticket.error_code,
                     derived_from=ticket.derived_from_id, signature=ticket.signature,
                     initialisation=service.initialisation_label(ticket),
                     signature_report=signature.report if signature else None,
                     trigger_set_report=triggers.report if triggers else None)


@router.post("", status_code=202, response_model=Accepted)
def register_ticket(
    request: Request, owner: CurrentOwner, session: DbSession, settings: SettingsDep, store: Store,
    background: BackgroundTasks,
    name: Annotated[str, Form(min_length=1, max_length=200)],
    model: Annotated[UploadFile | None, File(description="The ticket: .safetensors, or a .pt/.pth "
                                             "state dict. Or give `from_job`.")] = None,
    from_job: Annotated[str | None, Form(description="A succeeded find_ticket job of yours whose "
                                         "ticket to register instead of an upload.")] = None,
    arch: Annotated[str | None, Form(description="Architecture name, e.g. resnet20.")] = None,
    dataset: Annotated[str | None, Form(description="Dataset the ticket was trained on.")] = None,
    signature: Annotated[Literal["auto", "qr", "fingerprint", "none"], Form(
        description="qr: write a QR code bound to you and this ticket into the mask topology; fingerprint "
                    "or none: keep the mask as it is; auto: qr where a layer is large enough.")] = "auto",
    qr_version: Annotated[int, Form(ge=1, le=6, description="QR version (size 17 + 4 * version).")] = 3,
    qr_error: Annotated[Literal["L", "M", "Q", "H"], Form(description="QR error-correction level.")] = "H",
    keep_function_patterns: Annotated[bool, Form(
        description="Leave finder, timing and format modules as the mask had them (the code stays hidden).")] = True,
    recovery_epochs: Annotated[int, Form(ge=0, le=100, description="Fine-tuning epochs with the signed mask "
                                         "fixed, on the ticket's dataset, to recover accuracy.")] = 2,
    trigger_set: Annotated[bool, Form(description="Also embed a secret trigger set (keyed out-of-distribution "
                                      "inputs with keyed labels) for black-box verification.")] = False,
    trigger_size: Annotated[int, Form(ge=10, le=1000, description="Trigger inputs.")] = 100,
    trigger_share: Annotated[float, Form(gt=0, le=0.5, description="Part of every training batch that is "
                                         "trigger inputs (0.25 on digits; the paper's 1/128 is for CIFAR's "
                                         "50,000 images).")] = 0.25,
    trigger_epochs: Annotated[int, Form(ge=1, le=200, description="Fine-tuning epochs, mask fixed, on the "
                                        "data mixed with the triggers.")] = 20,
    trigger_lr: Annotated[float, Form(gt=0, le=1, description="Learning rate of that fine-tune.")] = 0.1,
    trigger_file: Annotated[UploadFile | None, File(description="Your own trigger set instead of a generated one "
                                                    "(implies trigger_set): .npz with `x` (inputs at the "
                                                    "dataset's shape, float in [0, 1] or uint8) and `y` (labels), "
                                                    "10 to 1,000. Its labels are yours, so verification judges it "
                                                    "against independently registered models only.")] = None,
) -> Accepted:
    """Register ownership of a ticket. The model is validated now; the record is written by a job."""
    if not name.isprintable():
        raise APIError(422, "invalid_name", "name must not contain control characters")
    if (model is None) == (from_job is None):
        raise APIError(422, "invalid_request", "send either a `model` file or `from_job`, not both")
    rewind_sha256, seed_drawn = None, None
    if from_job is not None:
        source, arch, dataset, rewind_sha256, seed_drawn = found_ticket_source(
            session, store, owner=owner, job_id=from_job, arch=arch, dataset=dataset)
    else:
        if arch is None or dataset is None:
            raise APIError(422, "invalid_request", "`arch` and `dataset` are required with a model file")
        source = model.file
    dataset_ref = check_arch_and_dataset(session, arch, dataset, owner=owner)
    if signature in ("auto", "qr"):
        check_qr_fits(qr_version, qr_error)
    request_signature = SignatureRequest(kind=signature, version=qr_version, error=qr_error,
                                         keep_function_patterns=keep_function_patterns,
                                         recovery_epochs=recovery_epochs)
    trigger_upload = None
    if trigger_file is not None:
        with store.staged(trigger_file.file, max_bytes=settings.max_upload_bytes) as staged:
            read_uploaded_triggers(staged.path, input_shape=dataset_ref.spec[0], num_classes=dataset_ref.spec[1],
                                   max_bytes=settings.max_upload_bytes)
            trigger_upload = store.keep(staged)
            record_artifact(session, sha256=trigger_upload, size=staged.size, kind="trigger_upload")
    with store.staged(source, max_bytes=settings.max_upload_bytes) as upload:
        ticket = service.submit_registration(session, owner=owner, store=store, upload=upload, name=name,
                                             arch=arch, dataset=dataset_ref, signature=request_signature,
                                             rewind_sha256=rewind_sha256, seed_drawn=seed_drawn,
                                             max_attempts=settings.max_attempts,
                                             triggers=TriggerRequest(
                                                 enabled=trigger_set or trigger_upload is not None, size=trigger_size,
                                                 share=trigger_share, epochs=trigger_epochs, lr=trigger_lr,
                                                 upload_sha256=trigger_upload))
    background.add_task(request.app.state.executor.submit, ticket.job_id)
    return Accepted(id=ticket.id, status=ticket.status, job_id=ticket.job_id)


def found_ticket_source(session, store, *, owner, job_id: str, arch: str | None,
                        dataset: str | None) -> tuple[BinaryIO, str, str, str, bool | None]:
    """The trained weights of a found ticket as a readable file, with its arch, dataset and artifact, and
    whether its seed was drawn by the service (None: found before that was recorded)."""
    job = visible_job(session, owner=owner, job_id=job_id)
    path = found_ticket_path(store, job)
    found = load_ticket(path)
    for given, actual, what in ((arch, found.arch, "arch"), (dataset, found.dataset, "dataset")):
        if given is not None and given != actual:
            raise APIError(422, "invalid_request",
                           f"{what} {given!r} does not match the found ticket's {actual!r}")
    buffer = io.BytesIO(save_safetensors({k: v.contiguous() for k, v in found.state.items()}))
    return buffer, found.arch, found.dataset, job.result["ticket_sha256"], job.params.get("seed_drawn")


@router.get("", response_model=TicketList)
def list_tickets(owner: CurrentOwner, session: DbSession) -> TicketList:
    """Your tickets (all tickets for an admin)."""
    return TicketList(tickets=[ticket_out(session, t) for t in service.list_tickets(session, owner=owner)])


@router.get("/{ticket_id}", response_model=TicketOut)
def get_ticket(ticket_id: str, owner: CurrentOwner, session: DbSession) -> TicketOut:
    return ticket_out(session, service.visible_ticket(session, owner=owner, ticket_id=ticket_id))


@router.get("/{ticket_id}/receipt", response_model=ReceiptOut)
def ticket_receipt(ticket_id: str, owner: CurrentOwner, session: DbSession, settings: SettingsDep) -> ReceiptOut:
    """The receipt of your ticket's registration: the `ticket.registered` event, a signed tree head of
    the transparency log that includes it, and the inclusion proof. Keep it: it proves when the ticket
    was registered, offline, with only the log's public key (`ticketguard receipt verify FILE`)."""
    ticket = service.visible_ticket(session, owner=owner, ticket_id=ticket_id)
    event = session.execute(select(AuditEvent).where(AuditEvent.ticket_id == ticket.id,
                                                     AuditEvent.action == "ticket.registered")
                            .order_by(AuditEvent.seq).limit(1)).scalar()
    if event is None or ticket.status != "registered":
        raise APIError(409, "not_registered", f"ticket {ticket.id} is {ticket.status}, not registered: "
                                              "a receipt exists once its registration job has succeeded")
    result = receipt(session, event, log_key(settings, session))
    session.commit()
    return ReceiptOut(**result)


@router.get("/{ticket_id}/model", response_class=FileResponse,
            responses=binary_response("application/octet-stream", "The registered ticket as safetensors."))
def download_ticket(ticket_id: str, owner: CurrentOwner, session: DbSession, store: Store) -> FileResponse:
    """The registered ticket as safetensors (pruned weights are exact zeros)."""
    ticket = service.visible_ticket(session, owner=owner, ticket_id=ticket_id)
    return FileResponse(service.ticket_model_path(store, ticket), media_type="application/octet-stream",
                        filename=f"ticket-{ticket.id}.safetensors")


@router.get("/{ticket_id}/trigger-set", response_class=Response,
            responses=binary_response("application/octet-stream", "An .npz archive."))
def download_trigger_set(ticket_id: str, owner: CurrentOwner, session: DbSession, store: Store) -> Response:
    """Your ticket's trigger set as .npz: `x` (float32, the dataset's input shape, values in [0, 1])
    and `y` (int64 labels). Query a suspect with `x` in this order and upload its answers to
    `POST /v1/verifications` (`answers`). Only the ticket's owner: 404 for anyone else."""
    found = owned_trigger_set(session, owner=owner, ticket_id=ticket_id)
    return Response(trigger_set_npz(store, found), media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="triggers-{ticket_id}.npz"'})
