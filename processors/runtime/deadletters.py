"""Dead letters: the failure outcome every processor publishes for a record it cannot process.

One builder (:class:`DeadLetters`) serves every processor, so every dead letter has the same
shape and the same bounds, whatever the input was: the payload is kept as a prefix of at
most ``payload_bytes`` with the input's full size and sha256 (so the original can be found
and compared, never re-published whole), the message and metadata are capped, and ids that
come from a key or header (not a validated job) are used only when they are of sane length.
A dead letter therefore always fits its topic (:mod:`processors.runtime.fit` shrinks it
further if an operator set a very small limit).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from processors.runtime.records import InRecord, Outcome
from schemas import (
    Completion,
    ErrorCode,
    Failure,
    Header,
    PromptJob,
    PromptmillError,
    Stage,
    encode,
)
from schemas.codec import json_problem
from schemas.headers import job_headers

PAYLOAD_BYTES = 4096  # of the input kept in a dead letter
MESSAGE_CHARS = 2000
METADATA_BYTES = 16384
ID_CHARS = 256  # an id from a key or header longer than this is not used


@dataclass(frozen=True)
class About:
    """What a processor knows of the job a failed record belongs to (unknown: ``None``;
    ids then come from the record's headers and key)."""

    job_id: str | None = None
    batch_id: str | None = None
    run: int | None = None
    tenant: str | None = None
    custom_id: str | None = None
    template: str | None = None
    template_version: int | None = None
    model: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, record: PromptJob | Completion | None, model: str | None = None) -> About:
        """What a job (or its completion) says of itself; ``model`` if the record has none."""
        if record is None:
            return cls()
        return cls(
            job_id=record.job_id,
            batch_id=record.batch_id,
            run=record.run,
            tenant=record.tenant,
            custom_id=record.custom_id,
            template=record.template,
            template_version=record.template_version,
            model=record.model or model,
            metadata=record.metadata,
        )


def job_id_of(record: InRecord) -> str:
    """The job a record is about: its job-id header, else its key, else its position."""
    from_header = record.header(Header.JOB_ID)
    if from_header and len(from_header) <= ID_CHARS:
        return from_header
    if record.key and len(record.key) <= ID_CHARS:
        return record.key.decode("utf-8", "replace")
    return f"{record.topic}:{record.partition}:{record.offset}"


def _run_of(record: InRecord) -> int:
    value = record.header(Header.RUN)
    return int(value) if value and value.isascii() and value.isdigit() and len(value) < 10 else 1


def _header(record: InRecord, name: Header) -> str | None:
    value = record.header(name)
    return value if value and len(value) <= ID_CHARS else None


def _bounded_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    if problem := json_problem(metadata):  # nested too deep to read back, say
        return {"promptmill_dropped": f"metadata is not plain JSON: {problem}"}
    try:
        size = len(orjson.dumps(metadata))
    except TypeError:  # not plain JSON (a huge integer, say): not worth keeping
        return {"promptmill_dropped": "metadata is not plain JSON"}
    if size <= METADATA_BYTES:
        return metadata
    return {"promptmill_dropped": f"metadata of {size:,} bytes"}


def _bounded_message(message: str) -> str:
    message = message if len(message) <= MESSAGE_CHARS else message[:MESSAGE_CHARS] + "…"
    # an error's text can quote a str decoded with surrogateescape; JSON cannot carry those
    return message.encode("utf-8", "replace").decode()


@dataclass(frozen=True)
class DeadLetters:
    """Builds one processor's dead letters for the failures ``topic``."""

    topic: str
    stage: Stage
    payload_bytes: int = PAYLOAD_BYTES

    def outcome(
        self,
        record: InRecord,
        code: ErrorCode,
        message: str,
        about: About | None = None,
        *,
        attempts: int = 0,
        retriable: bool = False,
    ) -> Outcome:
        """The dead letter of ``record``, keyed by its job id."""
        about = about or About()
        raw = record.value or b""
        failure = Failure(
            job_id=about.job_id or job_id_of(record),
            batch_id=about.batch_id or _header(record, Header.BATCH_ID),
            run=about.run or _run_of(record),
            tenant=about.tenant or _header(record, Header.TENANT),
            custom_id=about.custom_id,
            code=code,
            message=_bounded_message(message),
            retriable=retriable,
            attempts=attempts,
            template=about.template,
            template_version=about.template_version,
            model=about.model,
            stage=self.stage,
            payload=raw[: self.payload_bytes].decode("utf-8", "replace"),
            payload_bytes=len(raw),
            payload_sha256=hashlib.sha256(raw).hexdigest(),
            source=record.position,
            metadata=_bounded_metadata(about.metadata),
        )
        return dead_letter(self.topic, failure)

    def of_error(
        self, record: InRecord, error: BaseException, about: About | None = None
    ) -> Outcome:
        """The dead letter for a record whose handling raised ``error`` (its code, if it is
        one of ours; else ``internal_error``)."""
        if isinstance(error, PromptmillError):
            return self.outcome(record, error.code, error.message, about)
        message = f"internal error: {type(error).__name__}: {error}"
        return self.outcome(record, ErrorCode.INTERNAL_ERROR, message, about)


def dead_letter(topic: str, failure: Failure) -> Outcome:
    """The outcome that publishes ``failure`` to the failures ``topic``, keyed by job id."""
    return Outcome(
        topic,
        encode(failure),
        key=failure.job_id.encode(),
        headers=job_headers(failure.batch_id, failure.job_id, failure.tenant, failure.run),
        dead_letter=True,
        code=failure.code.value,
    )


def completion_of(record: InRecord) -> Completion | None:
    """The completion a record of the completions topic holds, if it is one."""
    try:
        return Completion.model_validate_json(record.value or b"")
    except ValidationError:
        return None
