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
