from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class OwnerCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100, description="Unique: letters, digits, _ . @ -.")
    admin: bool = False


class OwnerCreated(BaseModel):
    id: str
    name: str
    is_admin: bool
    created_at: datetime
    api_key: str = Field(description="Shown once; store it now.")


class OwnerOut(BaseModel):
    id: str
    name: str
    is_admin: bool
    created_at: datetime
