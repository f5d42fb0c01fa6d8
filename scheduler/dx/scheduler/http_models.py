"""The JSON documents of the HTTP API (they make its OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from dx.scheduler.api_base import Text
from dx.shared.runs import RunStatus, Trigger


class ErrorBody(BaseModel):
    """What went wrong: a stable code (docs/error-codes.md) and a message for people."""

    code: str
    message: str
    details: list[dict[str, str]] | None = None


class ErrorOut(BaseModel):
    """Every error response."""

    error: ErrorBody


class LastRun(BaseModel):
    id: int
    status: RunStatus
    finished_at: datetime | None


class ModuleOut(BaseModel):
    """A module as the console lists it."""

    id: str
    kind: str
    mode: str | None
    database: str
    paused: bool
    schedule: dict[str, Any] | None = Field(description="the module's schedule as configured, or null")
    next_fire: datetime | None = Field(description="next scheduled fire, in the module's time zone")
    timezone: str | None = Field(None, description="the time zone of the schedule (its own, else the tenant's)")
    last_run: LastRun | None


class ModuleDetail(ModuleOut):
    """One module with its whole configuration (secrets are ${DX_SECRET_NAME} references)."""

    config: dict[str, Any]


class ModuleList(BaseModel):
    modules: list[ModuleOut]


class ScheduleOut(BaseModel):
    """A module's schedule and its next fire times."""

    module: str
    paused: bool
    schedule: dict[str, Any] | None
    timezone: str | None = Field(description="the zone of the fire times: the schedule's, else the tenant's, "
                                             "else UTC; null without a schedule")
    fires: list[datetime]


class RunNowIn(BaseModel):
    """A run-now request; a repeated ``request_id`` returns the run the first request made."""

    model_config = {"extra": "forbid"}
    request_id: Text | None = Field(default=None, min_length=1, max_length=200,
                                   description="the client's id of this request (idempotency key)")
    requested_by: Text | None = Field(default=None, min_length=1, max_length=200,
                                     description="who asked; default: token:<token name>")


class RunWarning(BaseModel):
    """What a run did not do as the client may have meant, while it went on (e.g. UNKNOWN_COLUMN)."""

    code: str = Field(description="a code of docs/error-codes.md")
    message: str


class RunOut(BaseModel):
    """A run: status, warnings, counters, timings."""

    id: int
    module: str
    trigger: Trigger
    requested_by: str | None
    request_id: str | None
    status: RunStatus
    error_code: str | None
    error_message: str | None
    warnings: list[RunWarning] = Field(description="what the run did not do as meant while it went on; "
                                                   "[] when nothing")
    source_path: str | None
    n_chunks: int | None
    rows_read: int
    inserted: int
    updated: int
    deleted: int
    not_inserted: int
    not_updated: int
    not_deleted: int
    rows_exported: int
    created_at: datetime
    due_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


class ExportOut(BaseModel):
    """Where an export run wrote its file."""

    target_path: str
    bytes: int | None
    sha256: str | None
    delivered_at: datetime | None
    manifest: bool = Field(description="a NAME.manifest.json was written beside the file")


class RunDetail(RunOut):
    """One run with its error counts, progress and where its failures are."""

    errors: dict[str, int]
    meanings: dict[str, str] = Field(description="what each error or warning code of the run means")
    chunks_done: int
    rows_so_far: int = Field(description="records the committed chunks read (progress while it runs)")
    source_bytes: int | None
    export: ExportOut | None
    failures_url: str


class RunList(BaseModel):
    runs: list[RunOut]
    next_before: int | None = Field(description="pass as ?before= for the next (older) page; null: no more")
