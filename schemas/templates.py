"""Versioned prompt templates and the labels that point at versions.

Both live on the compacted templates topic: a version is immutable and keyed
``version:<name>:<n>``; a label (``production``, ``staging``) is keyed
``label:<name>:<label>`` and its latest record wins. The model catalog's revisions live
there too, keyed ``catalog:models:<n>``: the workers follow them like labels.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Literal, Self

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.jobs import NAME_PATTERN, ChatMessage, ModelParams
from schemas.results import utcnow


class TemplateBody(BaseModel):
    """What a template file says: the part whose change makes a new version."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    model: str | None = None
    params: ModelParams = Field(default_factory=ModelParams)
    variables: list[str] = Field(default_factory=list)
    messages: list[ChatMessage] = Field(min_length=1)

    def compute_hash(self) -> str:
        """A stable hash of the content (the fields of a template file, also when called
        on a :class:`Template`): whether a push changes anything, and the identity of what
        a version renders."""
        content = self.model_dump(mode="json", include=set(TemplateBody.model_fields))
        canonical = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(canonical).hexdigest()


class Template(TemplateBody):
    """One immutable version of a template, as published to the templates topic."""

    kind: Literal["template"] = "template"
    schema_version: Literal[1] = 1
    version: int = Field(ge=1)
    content_hash: str
    created_at: datetime = Field(default_factory=utcnow)

    @property
    def key(self) -> str:
        return version_key(self.name, self.version)


class LabelRecord(BaseModel):
    """Points a label of a template at one version."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["label"] = "label"
    schema_version: Literal[1] = 1
    name: str = Field(pattern=NAME_PATTERN)
    label: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1)
    # a canary: this share of the jobs that resolve the label get canary_version instead
    canary_version: int | None = Field(default=None, ge=1)
    canary_percent: float | None = Field(default=None, gt=0, lt=100)
    moved_at: datetime = Field(default_factory=utcnow)

    @model_validator(mode="after")
    def _canary(self) -> Self:
        if (self.canary_version is None) != (self.canary_percent is None):
            raise ValueError("a canary needs both canary_version and canary_percent")
        if self.canary_version is not None and self.canary_version == self.version:
            raise ValueError("the canary version is the label's own version")
        return self

    @property
    def key(self) -> str:
        return label_key(self.name, self.label)


def canary_draw(key: str) -> float:
    """Where ``key`` (a job's run-independent id) falls in [0, 100): a job takes a label's
    canary when its draw is below the canary's percent. The same key, the same draw."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


class CatalogRevision(BaseModel):
    """One revision of the model catalog (:mod:`schemas.catalog`), as pushed to the
    templates topic by ``promptmill models push``: every worker follows the newest, and a
    batch may pin one at submit. Immutable, keyed ``catalog:models:<revision>``."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["catalog"] = "catalog"
    schema_version: Literal[1] = 1
    revision: int = Field(ge=1)
    source: str = Field(max_length=1_000_000)  # the catalog file's text (keys by reference)
    origin: str = Field(max_length=1000)  # the file it was pushed from
    content_hash: str
    created_at: datetime = Field(default_factory=utcnow)

    @property
    def key(self) -> str:
        return catalog_key(self.revision)

    @staticmethod
    def hash_of(source: str) -> str:
        return hashlib.sha256(source.encode("utf-8")).hexdigest()


def catalog_key(revision: int) -> str:
    return f"catalog:models:{revision}"


def version_key(name: str, version: int) -> str:
    return f"version:{name}:{version}"


def label_key(name: str, label: str) -> str:
    return f"label:{name}:{label}"
