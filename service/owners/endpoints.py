from __future__ import annotations

from fastapi import APIRouter

from service.deps import AdminOwner, CurrentOwner, DbSession, SettingsDep
from service.owners import service
from service.owners.schemas import OwnerCreate, OwnerCreated, OwnerOut

router = APIRouter(prefix="/v1", tags=["owners"])


@router.post("/owners", status_code=201, response_model=OwnerCreated)
def create_owner(body: OwnerCreate, admin: AdminOwner, session: DbSession,
                 settings: SettingsDep) -> OwnerCreated:
    """Create an owner and its first API key (admin only). The key is returned once."""
    owner, key = service.create_owner(session, secret=settings.secret(), name=body.name,
                                      is_admin=body.admin, actor=admin.name)
    return OwnerCreated(id=owner.id, name=owner.name, is_admin=owner.is_admin,
                        created_at=owner.created_at, api_key=key)


@router.get("/me", response_model=OwnerOut)
def whoami(owner: CurrentOwner) -> OwnerOut:
    """The owner the API key belongs to."""
    return OwnerOut(id=owner.id, name=owner.name, is_admin=owner.is_admin, created_at=owner.created_at)
