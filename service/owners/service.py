"""Owners and their API keys."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.audit.chain import append_event
from service.errors import APIError
from service.models import ApiKey, Owner
from service.security import display_prefix, hash_api_key, new_api_key

OWNER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}")


def create_owner(session: Session, *, secret: bytes, name: str, is_admin: bool,
                 actor: str) -> tuple[Owner, str]:
    """Create an owner with a first API key; returns (owner, plaintext key). Commits."""
    if not OWNER_NAME.fullmatch(name):
        raise APIError(422, "invalid_name", f"owner names are 1-100 of letters, digits and _ . @ -, "
                       f"starting with a letter or digit; got {name[:100]!r}")
    if session.execute(select(Owner.id).where(Owner.name == name)).first():
        raise APIError(409, "owner_exists", f"an owner named {name!r} already exists")
    owner = Owner(name=name, is_admin=is_admin)
    session.add(owner)
    session.flush()
    key = _add_key(session, secret=secret, owner=owner)
    append_event(session, actor=actor, action="owner.created", subject=f"owner:{owner.id}",
                 owner_id=owner.id, payload={"name": name, "is_admin": is_admin})
    append_event(session, actor=actor, action="api_key.created", subject=f"owner:{owner.id}",
                 owner_id=owner.id, payload={"prefix": display_prefix(key)})
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise APIError(409, "owner_exists", f"an owner named {name!r} already exists") from exc
    return owner, key


def _add_key(session: Session, *, secret: bytes, owner: Owner) -> str:
    key = new_api_key()
    session.add(ApiKey(owner_id=owner.id, key_hash=hash_api_key(secret, key), prefix=display_prefix(key)))
    return key
