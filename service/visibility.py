"""The owner filter in one place: a row another owner holds answers 404, exactly like a missing one."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy.orm import Session

from service.errors import APIError
from service.models import Owner, is_id

Row = TypeVar("Row")


def get_visible(session: Session, model: type[Row], row_id: str, *, owner: Owner, what: str) -> Row:
    """The row with this id if `owner` holds it (an admin sees all); 404 otherwise."""
    row = session.get(model, row_id) if is_id(row_id) else None
    if row is None or (row.owner_id != owner.id and not owner.is_admin):
        raise APIError(404, "not_found", f"{what} {row_id[:64]} not found")
    return row
