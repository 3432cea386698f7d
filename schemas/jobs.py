"""Prompt jobs: what a producer puts on the jobs topic.

A job either names a template (``summarize``, ``summarize@3``, ``summarize@staging``)
with variables, or carries raw chat messages. The producer resolves a label to a version
at submit time and writes it into ``template_version`` so that a label moved mid-batch
never mixes versions inside one batch.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.codec import dumps, json_problem, refuse_lone_surrogates

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
_NAME_RE = re.compile(NAME_PATTERN)
DEFAULT_LABEL = "production"
INT32_MAX = 2**31 - 1


def _plain_json(value: dict[str, Any]) -> dict[str, Any]:
    if problem := json_problem(value):
        raise ValueError(problem)
    return value


# A free-form object (variables, metadata): plain JSON only, so that a job built in Python
# is one that encodes, and a decoded one re-encodes unchanged (1e400 decodes as inf).
JsonObject = Annotated[dict[str, Any], AfterValidator(_plain_json)]


def _request_json(value: dict[str, Any]) -> dict[str, Any]:
    try:
        dumps(_plain_json(value))
    except TypeError as exc:  # an integer over 64 bits
        raise ValueError(f"{exc}, which a request to the model cannot carry") from None
    return value


# A free-form request field (response_format): what schemas.codec.dumps writes, as the
# cache key does (orjson: integers within 64 bits).
RequestObject = Annotated[dict[str, Any], AfterValidator(_request_json)]


class ChatMessage(BaseModel):
    """One chat message in OpenAI's shape."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str
    name: str | None = None

    _encodable = field_validator("*")(refuse_lone_surrogates)


class ModelParams(BaseModel):
    """Sampling parameters a job (or template) may set; unknown keys are a schema error."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    response_format: RequestObject | None = None
    user: str | None = None

    _encodable = field_validator("*")(refuse_lone_surrogates)

    def merged_over(self, base: ModelParams) -> ModelParams:
        """These parameters with ``base`` filling whatever is unset here."""
        return ModelParams.model_validate(
            base.model_dump(exclude_none=True) | self.model_dump(exclude_none=True)
        )

    def as_request(self) -> dict[str, Any]:
        """The parameters as request fields, unset ones left out."""
        return self.model_dump(exclude_none=True)


class TemplateRef(BaseModel):
    """A parsed template reference: a name plus a version number or a label."""

    name: str
    version: int | None = None
    label: str | None = None

    @classmethod
    def parse(cls, ref: str) -> TemplateRef:
        """Parse ``name``, ``name@3`` or ``name@label``; raises ``ValueError`` when malformed."""
        name, at, selector = ref.strip().partition("@")
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"invalid template name {name!r} in reference {ref!r}")
        if not at:
            return cls(name=name, label=DEFAULT_LABEL)
        if selector.isascii() and selector.isdigit():  # not '²', which int() refuses
            return cls(name=name, version=int(selector))
        if not _NAME_RE.fullmatch(selector):
            raise ValueError(f"invalid version or label {selector!r} in reference {ref!r}")
        return cls(name=name, label=selector)

    def __str__(self) -> str:
        return f"{self.name}@{self.version if self.version is not None else self.label}"


class PromptJob(BaseModel):
    """One unit of work: render (or take) messages, call the model, publish the result."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    job_id: str = Field(min_length=1, max_length=256)
    batch_id: str = Field(min_length=1, max_length=128)
    run: int = Field(default=1, ge=1, le=INT32_MAX)  # of the batch id (see BatchManifest)
    tenant: str = Field(default="default", min_length=1, max_length=128)
    key_id: str | None = Field(default=None, max_length=64)  # the API key that submitted it
    custom_id: str | None = Field(default=None, max_length=512)
    template: str | None = Field(default=None, max_length=300)
    template_version: int | None = Field(default=None, ge=1, le=INT32_MAX)
    # the model catalog revision pinned at submit (``submit --pin-models``); None: the newest
    catalog_revision: int | None = Field(default=None, ge=1, le=INT32_MAX)
    variables: JsonObject = Field(default_factory=dict)
    messages: list[ChatMessage] | None = None
    model: str | None = Field(default=None, min_length=1, max_length=256)
    params: ModelParams = Field(default_factory=ModelParams)
    cache: bool | None = None
    metadata: JsonObject = Field(default_factory=dict)
    submitted_at: datetime | None = None
    source_line: int | None = Field(default=None, ge=0, le=INT32_MAX)

    _encodable = field_validator("*")(refuse_lone_surrogates)

    @model_validator(mode="after")
    def _template_xor_messages(self) -> Self:
        if (self.template is None) == (self.messages is None):
            raise ValueError("a job needs exactly one of 'template' or 'messages'")
        if self.messages is not None and not self.messages:
            raise ValueError("'messages' must not be empty")
        if self.template is not None:
            TemplateRef.parse(self.template)
        return self

    def canary_key(self) -> str:
        """The id a canary draw is made from: the same in every run of the batch (its first
        run's job id for a line of a file, else the job id)."""
        if self.source_line is not None:
            return line_job_id(self.batch_id, 1, self.source_line)
        return self.job_id

    def template_ref(self) -> TemplateRef | None:
        """The template this job uses, pinned to ``template_version`` when resolved."""
        if self.template is None:
            return None
        ref = TemplateRef.parse(self.template)
        if self.template_version is not None:
            return TemplateRef(name=ref.name, version=self.template_version)
        return ref


def line_job_id(batch_id: str, run: int, line: int) -> str:
    """The job id of an input file's line: ``B:7``, or ``B:r2:7`` in the batch's second run
    (a rerun's jobs never share an id with the first run's)."""
    return f"{batch_id}:{line}" if run == 1 else f"{batch_id}:r{run}:{line}"
