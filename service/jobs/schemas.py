from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class JobOut(BaseModel):
    id: str
    kind: str
    status: str
    progress: float
    message: str
    attempts: int
    max_attempts: int
    cancel_requested: bool
    result: dict[str, Any] | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job) -> JobOut:
        return cls(**{name: getattr(job, name) for name in cls.model_fields})
