"""Per-partition order inside a concurrent processor.

The worker runs up to ``concurrency`` records at once, also from one partition. A processor
whose effect depends on order -- "the first terminal record of a job counts", when a crash
left two on the partition (a computed answer, then its cached repeat) -- takes the lock of
the record's partition before that effect. The worker starts records in offset order and
``handle`` reaches the lock before its first ``await``, and asyncio locks are FIFO, so
the effects happen in offset order, as any consumer reading the partition would see them.
"""

from __future__ import annotations

import asyncio

from processors.runtime.records import InRecord


class PartitionOrder:
    """One FIFO lock per topic-partition."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}

    def __call__(self, record: InRecord) -> asyncio.Lock:
        key = (record.topic, record.partition)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock
