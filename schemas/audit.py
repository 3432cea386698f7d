"""Audit events: who did what to which object, and when, on the append-only audit topic."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.results import utcnow


class AuditAction(StrEnum):
    KEY_CREATED = "key.created"
    KEY_REVOKED = "key.revoked"
    TEMPLATE_PUSHED = "template.pushed"
    LABEL_MOVED = "label.moved"
    CATALOG_PUSHED = "catalog.pushed"  # a new revision of the model catalog
    CHECKS_PUSHED = "checks.pushed"  # a template's online checks (from its test file)
    BATCH_CREATED = "batch.created"
    BATCH_CANCELLED = "batch.cancelled"
    FILE_DELETED = "file.deleted"


class Actor(BaseModel):
    """Who acted: an API key (through ``serve``) or an operator at the command line."""

    model_config = ConfigDict(extra="forbid")

    key_id: str | None = None
    tenant: str | None = None
    role: str | None = None  # the highest role the key holds
    operator: str | None = None  # PROMPTMILL_OPERATOR, for the command line

    def __str__(self) -> str:
        if self.key_id:
            return f"{self.key_id} ({self.role}, tenant {self.tenant})"
        return f"operator {self.operator or '(unnamed)'}"


class AuditEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["audit"] = "audit"
    schema_version: Literal[1] = 1
    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    at: datetime = Field(default_factory=utcnow)
    actor: Actor
    action: AuditAction
    tenant: str | None = None  # whose object it is (None: global, e.g. a template)
    target: str  # the object: key id, template name, batch id, file id
    details: dict[str, Any] = Field(default_factory=dict)
