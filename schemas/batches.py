"""Batch manifests: what a producer says about a batch once it has submitted it."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class BatchManifest(BaseModel):
    """The totals of a submitted batch, published to the batches topic keyed by batch id.

    ``total`` counts every input line that became a job or a failure record, so that a
    follower knows when every job of the batch is terminal.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["manifest"] = "manifest"
    schema_version: Literal[1] = 1
    batch_id: str
    run: int = Field(default=1, ge=1)  # a rerun of the same batch id gets the next number
    tenant: str = "default"
    source: str | None = None
    input_format: Literal["promptmill", "openai-batch"] = "promptmill"  # results default to it
    total: int = Field(ge=0)
    submitted: int = Field(ge=0)
    invalid: int = Field(ge=0)
    templates: dict[str, int] = Field(default_factory=dict)
    catalog_revision: int | None = None  # the model catalog revision pinned (--pin-models)
    started_at: datetime
    submitted_at: datetime


class BatchDone(BaseModel):
    """Published to the batches topic (keyed by batch id) once every job of a batch is
    terminal, with its totals counted once per job id."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["done"] = "done"
    schema_version: Literal[1] = 1
    batch_id: str
    run: int = Field(default=1, ge=1)
    total: int
    completed: int
    failed: dict[str, int] = Field(default_factory=dict)
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    finished_at: datetime


def batch_record(value: bytes) -> BatchManifest | BatchDone | None:
    """A batches-topic record: a manifest or a done event (anything else: ``None``)."""
    try:
        data = orjson.loads(value)
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind == "manifest":
            return BatchManifest.model_validate(data)
        if kind == "done":
            return BatchDone.model_validate(data)
    except (orjson.JSONDecodeError, ValidationError):
        pass
    return None
