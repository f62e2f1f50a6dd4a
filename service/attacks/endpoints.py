from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, BackgroundTasks, Query, Request, Response

from service.attacks import service
from service.attacks.plots import families, family_png, family_slug
from service.attacks.report import to_csv
from service.attacks.schemas import AttackInfo, AttackReportOut, AttackRequest
from service.deps import CurrentOwner, DbSession, SettingsDep
from service.errors import not_found
from service.models import AttackReport
from service.openapi import binary_response
from service.tickets.schemas import Accepted
from service.tickets.service import visible_ticket
from verifier.attacks.suite import ATTACKS

router = APIRouter(tags=["attacks"])


def report_out(report: AttackReport) -> AttackReportOut:
    rows = report.rows or []
    return AttackReportOut(
        id=report.id, ticket_id=report.ticket_id, status=report.status, job_id=report.job_id,
        request=report.request, rows=rows, summary=report.summary, error=report.error,
        plots={family: f"/v1/attack-reports/{report.id}/plots/{family_slug(family)}.png"
               for family in families(rows)},
        created_at=report.created_at, completed_at=report.completed_at)


@router.get("/v1/attacks", response_model=list[AttackInfo])
def list_attacks(owner: CurrentOwner) -> list[AttackInfo]:
    """Every attack: its family, the unit of its strength, its strengths in the two presets, the
    range it accepts, and what a ticket must carry for it to apply."""
    return [AttackInfo(name=s.name, family=s.family, unit=s.unit, description=s.description, full=list(s.full),
                       paper=list(s.paper), needs=s.needs, min_strength=s.bounds[0], max_strength=s.bounds[1])
            for s in ATTACKS.values()]


@router.post("/v1/tickets/{ticket_id}/attacks", status_code=202, response_model=Accepted)
def attack_ticket(ticket_id: str, request: Request, owner: CurrentOwner, session: DbSession, settings: SettingsDep,
                  background: BackgroundTasks, body: AttackRequest | None = None) -> Accepted:
    """Attack your own ticket as a thief would, and see whether ownership is still proven: a job that
    applies each attack at each strength, measures the thief's test accuracy and verifies the result
    with every test the ticket carries. Without a body: the `paper` preset. Poll the report
    (`GET /v1/attack-reports/{id}`): rows appear as they finish."""
    ticket = visible_ticket(session, owner=owner, ticket_id=ticket_id)
    report = service.submit_attacks(session, owner=owner, ticket=ticket, request=body or AttackRequest(),
                                    max_attempts=settings.max_attempts)
    background.add_task(request.app.state.executor.submit, report.job_id)
    return Accepted(id=report.id, status=report.status, job_id=report.job_id)


@router.get("/v1/attack-reports", response_model=list[AttackReportOut])
def list_reports(owner: CurrentOwner, session: DbSession,
                 ticket_id: str | None = Query(None, max_length=64)) -> list[AttackReportOut]:
    """Your attack reports, oldest first (optionally of one ticket)."""
    return [report_out(r) for r in service.list_reports(session, owner=owner, ticket_id=ticket_id)]


@router.get("/v1/attack-reports/{report_id}", response_model=AttackReportOut,
            responses={200: {"content": {"text/csv": {}}, "description": "The report, as JSON or CSV."}})
def get_report(report_id: str, owner: CurrentOwner, session: DbSession,
               format: Literal["json", "csv"] = Query("json", description="json, or csv: one line per row.")):
    """A robustness report: one row per attack and strength (test accuracy, change from the ticket,
    within the fidelity bound?, QR decoded?, module-test, topology and trigger p-values, verdict),
    and the headline in `summary` once complete."""
    report = service.visible_report(session, owner=owner, report_id=report_id)
    if format == "csv":
        return Response(to_csv(report.rows or []), media_type="text/csv",
                        headers={"content-disposition": f'attachment; filename="attack-report-{report.id}.csv"'})
    return report_out(report)


@router.get("/v1/attack-reports/{report_id}/plots/{name}", response_class=Response,
            responses=binary_response("image/png", "A PNG plot."))
def get_plot(report_id: str, name: str, owner: CurrentOwner, session: DbSession, settings: SettingsDep) -> Response:
    """One attack family's plot (`report.plots` lists them): verification p-value and test accuracy
    against attack strength, with the verdict threshold and the fidelity bound marked."""
    report = service.visible_report(session, owner=owner, report_id=report_id)
    rows = report.rows or []
    by_slug = {f"{family_slug(f)}.png": f for f in families(rows)}
    if name not in by_slug:
        raise not_found(f"plot {name[:64]!r} of attack report {report.id} (known: {', '.join(by_slug) or 'none yet'})")
    match_alpha = (report.summary or {}).get("match_alpha", settings.match_alpha)
    png = family_png(rows, by_slug[name], fidelity_bound=report.request["fidelity_bound"], match_alpha=match_alpha)
    return Response(png, media_type="image/png")
