from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, BackgroundTasks, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from service.deps import CurrentOwner, DbSession, SettingsDep, Store
from service.finding import service
from service.finding.configs import describe
from service.jobs.service import visible_job
from service.openapi import binary_response
from service.tickets.endpoints import check_arch_and_dataset
from verifier.checkpoint import save_state_dict
from verifier.tickets.registry import FINDERS

router = APIRouter(tags=["finding"])


class FindRequest(BaseModel):
    arch: str = Field(description="Architecture, e.g. lenet300_100, resnet20.")
    dataset: str = Field(description="Dataset, e.g. digits.")
    method: str = Field("imp", description="Finder: see GET /v1/finders.")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="The initialisation's and data order's seed. "
                             "Default: a random one, recorded in the job, and the ticket's initialisation is "
                             "private. A seed you give makes it public: anyone may give the same, and a model "
                             "that shares a public initialisation is never called a copy on white-box evidence "
                             "alone (sign the ticket or embed a trigger set).")
    hyperparameters: dict[str, Any] = Field(default_factory=dict,
                                            description="Overrides of the method's defaults.")


class FindAccepted(BaseModel):
    job_id: str
    status: str


@router.get("/v1/finders")
def list_finders(owner: CurrentOwner) -> dict[str, Any]:
    """Ticket-finding methods with every hyperparameter's default and help."""
    return {name: {"summary": f.summary, "hyperparameters": describe(f.config_type)}
            for name, f in FINDERS.items()}


@router.post("/v1/tickets/find", status_code=202, response_model=FindAccepted)
def find_ticket(body: FindRequest, request: Request, owner: CurrentOwner, session: DbSession,
                settings: SettingsDep, background: BackgroundTasks) -> FindAccepted:
    """Search a ticket as a job; the result is downloadable and registrable (`from_job`)."""
    dataset = check_arch_and_dataset(session, body.arch, body.dataset, owner=owner)
    job = service.submit_find(session, owner=owner, arch=body.arch, dataset=dataset, method=body.method,
                              seed=body.seed, hyperparameters=body.hyperparameters,
                              max_attempts=settings.max_attempts)
    background.add_task(request.app.state.executor.submit, job.id)
    return FindAccepted(job_id=job.id, status=job.status)


@router.get("/v1/jobs/{job_id}/ticket", response_class=FileResponse,
            responses=binary_response("application/octet-stream", "The found ticket as safetensors."))
def download_found_ticket(
    job_id: str, owner: CurrentOwner, session: DbSession, store: Store,
    form: Annotated[Literal["artifact", "plain", "prune"], Query(
        description="artifact: weights, rewind weights, mask and metadata; plain: trained weights "
                    "(pruned = 0); prune: torch.nn.utils.prune's weight_orig/weight_mask")] = "artifact",
) -> FileResponse:
    """The ticket a `find_ticket` job found, as safetensors."""
    path = service.found_ticket_path(store, visible_job(session, owner=owner, job_id=job_id))
    name = f"ticket-{job_id}-{form}.safetensors"
    if form == "artifact":
        return FileResponse(path, media_type="application/octet-stream", filename=name)
    tmp = Path(tempfile.mkdtemp(dir=store.root / "tmp")) / name
    save_state_dict(service.export_state(path, form), tmp)
    return FileResponse(tmp, media_type="application/octet-stream", filename=name,
                        background=BackgroundTask(_remove, tmp))


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.parent.rmdir()
