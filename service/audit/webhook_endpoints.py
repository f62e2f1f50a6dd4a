"""`/v1/webhooks`: an owner's URLs for their alerts (`service.audit.webhooks` delivers them)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from service.audit.webhooks import MAX_WEBHOOKS, webhook_secret
from service.deps import CurrentOwner, DbSession, SettingsDep
from service.errors import APIError
from service.models import Webhook, WebhookDelivery, is_id
from service.triggers.endpoint import EndpointRefused, policy_from_settings, resolve_target

router = APIRouter(prefix="/v1/webhooks", tags=["alerts"])


class WebhookIn(BaseModel):
    url: str = Field(max_length=2000, description="https URL (http only for hosts the operator allows) that "
                                                  "receives your alerts as signed POSTs.")


class WebhookOut(BaseModel):
    id: str
    url: str
    created_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(description="Shown once: verify each delivery's X-TicketGuard-Signature with it.")


class WebhookList(BaseModel):
    webhooks: list[WebhookOut]


class DeliveryOut(BaseModel):
    id: str
    event_seq: int
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    delivered_at: datetime | None


class DeliveryList(BaseModel):
    deliveries: list[DeliveryOut]


def _owned(session, owner, webhook_id: str) -> Webhook:
    webhook = session.get(Webhook, webhook_id) if is_id(webhook_id) else None
    if webhook is None or webhook.owner_id != owner.id:
        raise APIError(404, "webhook_not_found", f"no webhook {webhook_id} of yours")
    return webhook


@router.post("", status_code=201, response_model=WebhookCreated)
def create_webhook(body: WebhookIn, owner: CurrentOwner, session: DbSession, settings: SettingsDep) -> WebhookCreated:
    """Send your alerts to `url`. The URL must pass the same guard as prediction endpoints (https, a
    public address); the answer carries the signing secret, once."""
    try:
        resolve_target(body.url, policy_from_settings(settings))
    except EndpointRefused as exc:
        raise APIError(422, "webhook_refused", str(exc)) from None
    count = session.execute(select(func.count()).select_from(Webhook).where(Webhook.owner_id == owner.id)).scalar()
    if count >= MAX_WEBHOOKS:
        raise APIError(409, "too_many_webhooks", f"at most {MAX_WEBHOOKS} webhooks per owner; delete one first")
    webhook = Webhook(owner_id=owner.id, url=body.url)
    session.add(webhook)
    session.commit()
    return WebhookCreated(id=webhook.id, url=webhook.url, created_at=webhook.created_at,
                          secret=webhook_secret(settings.secret(), webhook.id))


@router.get("", response_model=WebhookList)
def list_webhooks(owner: CurrentOwner, session: DbSession) -> WebhookList:
    rows = session.execute(select(Webhook).where(Webhook.owner_id == owner.id).order_by(Webhook.created_at)).scalars()
    return WebhookList(webhooks=[WebhookOut(id=w.id, url=w.url, created_at=w.created_at) for w in rows])


@router.delete("/{webhook_id}", status_code=204)
def delete_webhook(webhook_id: str, owner: CurrentOwner, session: DbSession) -> None:
    """Stop sending alerts there (its pending deliveries go with it)."""
    session.delete(_owned(session, owner, webhook_id))
    session.commit()


@router.get("/{webhook_id}/deliveries", response_model=DeliveryList)
def list_deliveries(webhook_id: str, owner: CurrentOwner, session: DbSession) -> DeliveryList:
    """The webhook's last 100 deliveries, newest first: pending (with the next attempt's time), delivered
    or failed (with the last reason)."""
    webhook = _owned(session, owner, webhook_id)
    rows = session.execute(select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook.id)
                           .order_by(WebhookDelivery.event_seq.desc()).limit(100)).scalars()
    return DeliveryList(deliveries=[DeliveryOut.model_validate(d, from_attributes=True) for d in rows])
