"""Webhooks for alerts: every alert addressed to an owner (`service.audit.alerts`) is POSTed to each of
their webhook URLs, signed, retried with backoff, under the same SSRF guard as prediction endpoints.

A delivery's body is `{"webhook_id", "delivery_id", "event"}` (the event as the audit API gives it);
headers `X-TicketGuard-Timestamp` (Unix seconds) and `X-TicketGuard-Signature:
sha256=HMAC-SHA256(secret, timestamp + "." + body)`, the secret shown once when the webhook was made
(derived from the server secret, never stored). A 2xx answer delivers it; anything else is retried
after 10 s, 1 min, 5 min, 30 min, 2 h and 12 h, then marked failed with the last reason.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.audit.chain import append_event
from service.audit.merkle import event_json
from service.audit.periodic import PeriodicLoop
from service.config import Settings
from service.db import sessions_for
from service.models import AuditEvent, Webhook, WebhookDelivery, utcnow
from service.triggers.endpoint import EndpointRefused, policy_from_settings, post_once

log = logging.getLogger("ticketguard.webhooks")

BACKOFF = (10.0, 60.0, 300.0, 1800.0, 7200.0, 43200.0)  # seconds before each retry; then failed
CLAIM_SECONDS = 120.0  # a delivery being sent is not picked up by another process for this long
MAX_WEBHOOKS = 10  # per owner
ALERT_PREFIXES = ("alert.", "api_key.")  # the audit events addressed to an owner as alerts


def webhook_secret(server_secret: bytes, webhook_id: str) -> str:
    return hmac.new(server_secret, f"webhook:{webhook_id}".encode(), hashlib.sha256).hexdigest()


def signature(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def append_alert(session: Session, *, owner_id: str, action: str, subject: str, ticket_id: str | None,
                 payload: dict, actor: str) -> AuditEvent:
    """An alert for `owner_id`: an audit event (in the caller's transaction) and a pending delivery to each
    of the owner's webhooks."""
    assert action.startswith(ALERT_PREFIXES), action
    event = append_event(session, actor=actor, action=action, subject=subject, owner_id=owner_id,
                         ticket_id=ticket_id, payload=payload)
    for webhook_id in session.execute(select(Webhook.id).where(Webhook.owner_id == owner_id)).scalars():
        session.add(WebhookDelivery(webhook_id=webhook_id, event_seq=event.seq))
    return event


def _claim(session: Session, delivery: WebhookDelivery) -> bool:
    """Take the delivery for one attempt (compare-and-set on its next attempt time)."""
    claimed = session.execute(
        update(WebhookDelivery).where(WebhookDelivery.id == delivery.id, WebhookDelivery.status == "pending",
                                      WebhookDelivery.next_attempt_at == delivery.next_attempt_at)
        .values(next_attempt_at=utcnow() + timedelta(seconds=CLAIM_SECONDS)))
    session.commit()
    return claimed.rowcount == 1


def deliver_due(settings: Settings, *, limit: int = 50) -> int:
    """Send every pending delivery whose time has come (up to `limit`); how many were attempted."""
    make_session, policy = sessions_for(settings), policy_from_settings(settings)
    attempted = 0
    with make_session() as session:
        due = list(session.execute(select(WebhookDelivery).where(
            WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= utcnow())
            .order_by(WebhookDelivery.next_attempt_at).limit(limit)).scalars())
        session.commit()
        for delivery in due:
            if not _claim(session, delivery):
                continue
            attempted += 1
            try:
                error = _send(session, settings, policy, delivery)
            except Exception as exc:  # a bug or an odd failure: this delivery's attempt, not the round
                log.exception("webhooks: delivery %s failed", delivery.id)
                session.rollback()
                error = f"internal error: {type(exc).__name__}"
            _record(session, delivery.id, error)
    return attempted


def _send(session: Session, settings: Settings, policy, delivery: WebhookDelivery) -> str | None:
    """One attempt; None when delivered, else why not."""
    webhook = session.get(Webhook, delivery.webhook_id)
    event = session.get(AuditEvent, delivery.event_seq)
    body = json.dumps({"webhook_id": webhook.id, "delivery_id": delivery.id, "event": event_json(event)},
                      default=str, sort_keys=True).encode()
    session.commit()  # no transaction idles while the request is out
    stamp = str(int(time.time()))
    headers = {"x-ticketguard-timestamp": stamp,
               "x-ticketguard-signature": signature(webhook_secret(settings.secret(), webhook.id), stamp, body)}
    try:
        status = post_once(webhook.url, body, policy, headers)
    except EndpointRefused as exc:
        return str(exc)
    return None if 200 <= status < 300 else f"the webhook answered {status}"


def _record(session: Session, delivery_id: str, error: str | None) -> None:
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None:  # its webhook was deleted meanwhile
        session.commit()
        return
    delivery.attempts += 1
    if error is None:
        delivery.status, delivery.delivered_at, delivery.last_error = "delivered", utcnow(), None
    elif delivery.attempts > len(BACKOFF):
        delivery.status, delivery.last_error = "failed", error
    else:
        delivery.last_error = error
        delivery.next_attempt_at = utcnow() + timedelta(seconds=BACKOFF[delivery.attempts - 1])
    session.commit()


def delivery_loop(settings: Settings) -> PeriodicLoop:
    """Sends due deliveries every `webhook_poll_interval` seconds in the API process."""
    return PeriodicLoop("ticketguard-webhooks", settings.webhook_poll_interval, lambda: deliver_due(settings), log)
