"""Dead letters: the failure outcome every processor publishes for a record it cannot process."""

from __future__ import annotations

from processors.runtime.records import InRecord, Outcome
from schemas import Failure, Header, encode


def job_id_of(record: InRecord) -> str:
    """The job a record is about: its job-id header, else its key, else its position."""
    from_header = record.header(Header.JOB_ID)
    if from_header:
        return from_header
    if record.key:
        return record.key.decode("utf-8", "replace")
    return f"{record.topic}:{record.partition}:{record.offset}"


def job_headers(batch_id: str | None, job_id: str, tenant: str | None) -> list[tuple[str, bytes]]:
    """The headers that let a consumer filter a job's records without decoding them."""
    headers = [(Header.JOB_ID.value, job_id.encode())]
    if batch_id:
        headers.append((Header.BATCH_ID.value, batch_id.encode()))
    if tenant:
        headers.append((Header.TENANT.value, tenant.encode()))
    return headers


def dead_letter(topic: str, failure: Failure) -> Outcome:
    """The outcome that publishes ``failure`` to the failures ``topic``, keyed by job id."""
    return Outcome(
        topic,
        encode(failure),
        key=failure.job_id.encode(),
        headers=job_headers(failure.batch_id, failure.job_id, failure.tenant),
        dead_letter=True,
        code=failure.code.value,
    )
