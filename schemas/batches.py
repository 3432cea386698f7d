"""Batch manifests: what a producer says about a batch once it has submitted it."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class BatchManifest(BaseModel):
    """The totals of a submitted batch, published to the batches topic keyed by batch id.

    ``total`` counts every input line that became a job or a failure record, so that a
    follower knows when every job of the batch is terminal.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["manifest"] = "manifest"
    schema_version: Literal[1] = 1
    batch_id: str
    tenant: str = "default"
    source: str | None = None
    input_format: Literal["promptmill", "openai-batch"] = "promptmill"  # results default to it
    total: int = Field(ge=0)
    submitted: int = Field(ge=0)
    invalid: int = Field(ge=0)
    templates: dict[str, int] = Field(default_factory=dict)
    started_at: datetime
    submitted_at: datetime


class BatchDone(BaseModel):
    """Published to the batches topic (keyed by batch id) once every job of a batch is
    terminal, with its totals counted once per job id."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["done"] = "done"
    schema_version: Literal[1] = 1
    batch_id: str
    total: int
    completed: int
    failed: dict[str, int] = Field(default_factory=dict)
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    finished_at: datetime
