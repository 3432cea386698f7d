"""Terminal records: every job ends in exactly one kind, a Completion or a Failure."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.codec import refuse_lone_surrogates
from schemas.errors import ErrorCode


def utcnow() -> datetime:
    return datetime.now(UTC)


class Usage(BaseModel):
    """Token usage as the model reported it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class SourcePosition(BaseModel):
    """Where a record came from: a file line, or a topic-partition-offset."""

    file: str | None = None
    line: int | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None

    _encodable = field_validator("*")(refuse_lone_surrogates)

    def __str__(self) -> str:
        if self.topic is not None:
            return f"{self.topic}[{self.partition}]@{self.offset}"
        return f"{self.file}:{self.line}"


class Completion(BaseModel):
    """A job's successful result, published to the completions topic."""

    # JSON has no inf or nan: refuse them here rather than write a null no consumer reads
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: Literal["completion"] = "completion"
    schema_version: Literal[1] = 1
    job_id: str
    batch_id: str
    run: int = 1
    tenant: str
    custom_id: str | None = None
    model: str
    template: str | None = None
    template_version: int | None = None
    text: str
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    cached: bool = False
    attempts: int = 1
    response_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)
    group: str | None = None  # the model catalog's group the job asked for (when routed)
    deployment: str | None = None  # the model catalog's deployment that answered
    fallbacks: list[str] = Field(default_factory=list)  # deployments tried before it

    _encodable = field_validator("*")(refuse_lone_surrogates)


class Stage(StrEnum):
    """Which processor wrote a failure. Only ``prompt`` failures are a job's terminal record;
    the others are dead letters of records downstream of a job (a completion that could
    not be moderated, a record a tracker could not read) and never count against a batch."""

    PROMPT = "prompt"
    MODERATION = "moderation"
    BATCHES = "batches"
    REPORTING = "reporting"
    EVALS = "evals"


class Failure(BaseModel):
    """A dead letter: a job that cannot succeed, with a stable code and its payload."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["failure"] = "failure"
    schema_version: Literal[1] = 1
    job_id: str
    batch_id: str | None = None
    run: int = 1
    tenant: str | None = None
    custom_id: str | None = None
    code: ErrorCode
    message: str
    retriable: bool = False
    attempts: int = 0
    template: str | None = None
    template_version: int | None = None
    model: str | None = None
    stage: Stage = Stage.PROMPT
    payload: str = ""  # the input record, or a prefix of it: see payload_bytes
    payload_bytes: int | None = None  # the whole input's size
    payload_sha256: str | None = None  # and its sha256, to find and compare the original
    source: SourcePosition | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    failed_at: datetime = Field(default_factory=utcnow)

    _encodable = field_validator("*")(refuse_lone_surrogates)

    @property
    def terminal(self) -> bool:
        """Whether this failure is its job's terminal record (see :class:`Stage`)."""
        return self.stage is Stage.PROMPT


TerminalRecord = Completion | Failure


def terminal_record(data: object) -> Completion | Failure | None:
    """A decoded JSON value as a job's terminal record: a completion, or a failure of the
    prompt stage; anything else (another kind, a downstream dead letter) is ``None``.
    A record of either kind that does not validate raises ``pydantic.ValidationError``."""
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "completion":
        return Completion.model_validate(data)
    if kind == "failure":
        failure = Failure.model_validate(data)
        return failure if failure.terminal else None
    return None
