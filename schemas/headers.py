"""Kafka header keys promptmill sets on its records.

Headers let a consumer filter records (for instance by batch) without decoding values.
"""

from __future__ import annotations

from enum import StrEnum


class Header(StrEnum):
    """Header keys, defined once."""

    BATCH_ID = "pm-batch-id"
    JOB_ID = "pm-job-id"
    KIND = "pm-kind"
    TENANT = "pm-tenant"
    RUN = "pm-run"  # the batch's run, when it is not the first


def job_headers(
    batch_id: str | None, job_id: str, tenant: str | None, run: int = 1
) -> list[tuple[str, bytes]]:
    """The headers of a job's records (the job, its result, its dead letter), which let a
    consumer filter them without decoding values."""
    headers = [(Header.JOB_ID.value, job_id.encode())]
    if batch_id:
        headers.append((Header.BATCH_ID.value, batch_id.encode()))
    if tenant:
        headers.append((Header.TENANT.value, tenant.encode()))
    if run != 1:
        headers.append((Header.RUN.value, str(run).encode()))
    return headers
