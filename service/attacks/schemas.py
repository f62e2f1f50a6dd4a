"""Requests and answers of the attack API: which attacks, at which strengths, on which data, within
which budget; and the report that comes back."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from verifier.attacks.suite import ATTACKS, preset
from verifier.errors import VerifierError

MAX_ROWS = 60


class AttackItem(BaseModel):
    name: str = Field(description="An attack: " + ", ".join(ATTACKS) + " (GET /v1/attacks lists them).")
    strengths: list[float] | None = Field(None, min_length=1, max_length=10, description="Strengths in the "
                                          "attack's unit; default: those of the `full` preset.")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in ATTACKS:
            raise ValueError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")
        return name

    @model_validator(mode="after")
    def _strengths(self) -> AttackItem:
        spec = ATTACKS[self.name]
        try:
            self.strengths = [spec.check(s) for s in (self.strengths or spec.full)]
        except VerifierError as error:
            raise ValueError(str(error)) from None
        return self


class AttackBudget(BaseModel):
    max_epochs: int = Field(20, ge=1, le=200, description="Attacks whose strength counts training epochs run "
                            "only up to this many; stronger rows are reported as skipped.")
    max_minutes: float | None = Field(None, gt=0, le=24 * 60, description="Rows not started this long after "
                                      "the job began are reported as skipped (default: no limit).")


class AttackRequest(BaseModel):
    preset: Literal["paper", "full"] | None = Field(None, description="paper: the paper's table (fine-tuning, "
                                                    "magnitude and random pruning, add-on, replacement, forged "
                                                    "key); full: every attack at every preset strength. "
                                                    "Default paper, unless `attacks` is given.")
    attacks: list[AttackItem] | None = Field(None, min_length=1, max_length=MAX_ROWS,
                                             description="Instead of a preset: attacks and their strengths.")
    data: str | None = Field(None, description="The data set the thief trains on (its training split): one "
                             "of the ticket's input shape and class count; default the ticket's own.")
    data_fraction: float = Field(1.0, gt=0, le=1, description="Share of that training split the thief has.")
    transfer_dataset: str | None = Field(None, description="The other task of `transfer` (same input shape); "
                                         "default: the thief's data relabelled by the parity of its class.")
    fidelity_bound: float = Field(0.01, gt=0, lt=1, description="An attack costing the thief more test "
                                  "accuracy than this (0.01 = 1 point) has devalued the model: it counts as "
                                  "failed whatever the verdict.")
    lr: float = Field(0.01, gt=0, le=1, description="The thief's fine-tuning learning rate.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seeds every attack (each row gets its own from it).")
    budget: AttackBudget = Field(default_factory=AttackBudget)

    @model_validator(mode="after")
    def _one_plan(self) -> AttackRequest:
        if self.preset is not None and self.attacks is not None:
            raise ValueError("give either `preset` or `attacks`, not both")
        rows = len(self.plan())
        if rows > MAX_ROWS:
            raise ValueError(f"at most {MAX_ROWS} attack rows per report, not {rows}")
        return self

    def plan(self) -> list[tuple[str, float]]:
        """(attack, strength) rows in table order, without repeats."""
        if self.attacks is None:
            rows = preset(self.preset or "paper")
        else:
            rows = [(item.name, s) for item in self.attacks for s in item.strengths]
        return list(dict.fromkeys((name, float(s)) for name, s in rows))


class AttackReportOut(BaseModel):
    """A robustness report: one row per attack and strength (a `none` row first: the ticket itself)."""

    id: str
    ticket_id: str
    status: str
    job_id: str | None
    request: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: dict[str, Any] | None
    plots: dict[str, str] = Field(description="Attack family -> URL of its PNG plot.")
    error: str | None
    created_at: datetime
    completed_at: datetime | None


class AttackInfo(BaseModel):
    name: str
    family: str
    unit: str
    description: str
    full: list[float]
    paper: list[float]
    needs: str | None
    min_strength: float
    max_strength: float
