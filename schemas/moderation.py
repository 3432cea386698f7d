"""Moderation verdicts: one per completion, published by the moderation processor."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.results import utcnow


class Verdict(BaseModel):
    """Whether a completion's text was flagged, by which categories, with what scores."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["verdict"] = "verdict"
    schema_version: Literal[1] = 1
    job_id: str
    batch_id: str
    tenant: str
    custom_id: str | None = None
    flagged: bool
    categories: dict[str, bool] = Field(default_factory=dict)
    scores: dict[str, float] = Field(default_factory=dict)
    model: str
    classifier: str | None = None  # name@version of the classification template, if one judged
    attempts: int = 1
    created_at: datetime = Field(default_factory=utcnow)
