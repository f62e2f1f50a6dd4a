from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class VerificationOut(BaseModel):
    id: str
    status: str = Field(description="pending, completed, failed or cancelled.")
    mode: str = Field("white_box", description="white_box, black_box or both.")
    source: str = Field("model", description="What the suspect was: model (a file), endpoint or answers.")
    attested_by: str = Field("observed", description="observed: the service ran the model or queried the "
                             "endpoint itself; owner: the verdict rests on answers the ticket's owner "
                             "uploaded, which the service did not see the suspect give.")
    verdict: str | None = Field(description="match, no_match or inconclusive once completed.")
    ticket_id: str | None = Field(description="The matched ticket, else the ticket you named.")
    owner: str | None = Field(description="Name of that ticket's owner.")
    registered_at: datetime | None
    p_value: float | None
    evidence: dict[str, Any] | None
    job_id: str | None
    created_at: datetime
    completed_at: datetime | None
    error: str | None = None
