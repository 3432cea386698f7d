"""Quality in production: a template's online checks, and the score of each completion.

``templates push`` publishes, beside a template's versions, the assertions of its test file
(``NAME.tests.yaml``) marked ``online: true`` as one :class:`OnlineChecks` record, keyed
``checks:<name>`` on the templates topic (compacted: the newest wins; an empty list turns
the checks off). Every version of the template is graded by the same checks, so a canary
and its baseline are compared on one yardstick.

The evals processor (``promptmill worker --processor evals``) grades each completion of a
checked template and publishes an :class:`EvalScore` to the evals topic, keyed by job id.
Reporting counts each job's score once into the same window as its completion, so
``report --by template`` shows pass rates per version.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.codec import refuse_lone_surrogates
from schemas.prompt_tests import Assertion
from schemas.results import utcnow

MODEL_BACKED = frozenset({"llm-rubric", "similar"})  # sampled online: they cost a model call


def checks_key(name: str) -> str:
    return f"checks:{name}"


class OnlineChecks(BaseModel):
    """The online assertions of one template (every version), as pushed."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["checks"] = "checks"
    schema_version: Literal[1] = 1
    name: str = Field(min_length=1, max_length=200)
    assertions: list[Assertion] = Field(max_length=200)
    threshold: float | None = Field(default=None, ge=0, le=1)  # the test file's default
    origin: str = Field(max_length=1000)  # the test file they came from
    content_hash: str
    created_at: datetime = Field(default_factory=utcnow)

    @property
    def key(self) -> str:
        return checks_key(self.name)

    @staticmethod
    def hash_of(assertions: list[Assertion], threshold: float | None) -> str:
        canonical = orjson.dumps(
            {"assertions": [a.model_dump() for a in assertions], "threshold": threshold},
            option=orjson.OPT_SORT_KEYS,
        )
        return hashlib.sha256(canonical).hexdigest()


class AssertionScore(BaseModel):
    """One online assertion's grade of a completion."""

    model_config = ConfigDict(extra="forbid")

    type: str
    passed: bool
    score: float = Field(ge=0, le=1)
    weight: float = 1.0
    reason: str = Field(default="", max_length=500)


class EvalScore(BaseModel):
    """A completion graded by its template's online checks (the evals topic)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: Literal["eval"] = "eval"
    schema_version: Literal[1] = 1
    job_id: str
    batch_id: str
    tenant: str
    custom_id: str | None = None
    template: str
    template_version: int | None = None
    model: str
    group: str | None = None
    deployment: str | None = None
    completed_at: datetime  # the completion's created_at: its report window
    passed: bool
    score: float = Field(ge=0, le=1)
    assertions: list[AssertionScore]
    judged: bool = False  # whether the model-backed checks were sampled for this job
    checks_hash: str
    evaluated_at: datetime = Field(default_factory=utcnow)

    _encodable = field_validator("*")(refuse_lone_surrogates)
