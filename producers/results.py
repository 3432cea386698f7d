"""Following a batch: its manifest, and every terminal record of it exactly once.

Terminal records of all batches share the completions and failures topics. A follower
reads both from a little before the batch started (``offsets_for_times``), filters on
the batch header without decoding other batches' values, and keeps the first terminal
record per job id, so redelivered duplicates are dropped. It knows the batch is done
when it has seen as many distinct jobs as the manifest's total.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from schemas import BatchDone, BatchManifest, Completion, Failure, Header, decode
from schemas.batches import batch_record
from topics import KafkaConnection, TopicCatalog, TopicKind
from topics.partitions import topic_partitions

LOOKBACK = timedelta(minutes=5)


@dataclass
class BatchReport:
    """What is known of a batch's terminal records so far."""

    batch_id: str
    total: int | None = None
    completed: int = 0
    cached: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def terminal(self) -> int:
        return self.completed + sum(self.failed.values())

    @property
    def done(self) -> bool:
        return self.total is not None and self.terminal >= self.total

    def add(self, record: Completion | Failure) -> None:
        if isinstance(record, Completion):
            self.completed += 1
            self.cached += record.cached
            self.prompt_tokens += record.usage.prompt_tokens
            self.completion_tokens += record.usage.completion_tokens
            self.cost_usd += record.cost_usd
        else:
            self.failed[record.code.value] += 1


class ResultFollower:
    """Streams a batch's terminal records, each job once.

    The same consumer also reads the batches topic: a manifest that arrives late sets the
    total, and the tracker's done event ends a follow even if this follower's own count
    never reaches the total (it then reads the terminal topics to the ends they had when
    the event was seen: the tracker only announces records already on them).
    """

    def __init__(
        self, conn: KafkaConnection, catalog: TopicCatalog, batch_id: str, run: int = 1
    ) -> None:
        self._conn = conn
        self._catalog = catalog
        self.report = BatchReport(batch_id)
        self.run = run
        self.done: BatchDone | None = None
        self._started_at: datetime | None = None
        self._seen: set[str] = set()

    async def records(
        self, *, follow: bool, manifest: BatchManifest | None = None
    ) -> AsyncIterator[Completion | Failure]:
        """Yield new terminal records of the run; with ``follow`` until every job is
        terminal. Without a ``manifest`` the topics are read from their beginning."""
        if manifest is not None:
            self.report.total = manifest.total
            self.run = manifest.run
            self._started_at = manifest.started_at
        consumer = AIOKafkaConsumer(
            **self._conn.client_options(), enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            terminal, batches = await self._seek(consumer, manifest)
            ends = await consumer.end_offsets(terminal)
            drain_to: dict[TopicPartition, int] | None = None
            batch = self.report.batch_id.encode()
            while True:
                fetched = await consumer.getmany(timeout_ms=200, max_records=5000)
                for tp, records in fetched.items():
                    if tp.topic == batches:
                        for record in records:
                            if record.key == batch and self._batch_event(record.value):
                                drain_to = drain_to or await consumer.end_offsets(terminal)
                        continue
                    for record in records:
                        parsed = _terminal(record, batch)
                        if parsed is None or parsed.run != self.run:
                            continue
                        if parsed.job_id not in self._seen:
                            self._seen.add(parsed.job_id)
                            self.report.add(parsed)
                            yield parsed
                if self.report.done:
                    return
                until = drain_to if (follow and drain_to is not None) else ends
                if (not follow or drain_to is not None) and not any(
                    [await consumer.position(tp) < until[tp] for tp in terminal]
                ):
                    return
        finally:
            await consumer.stop()

    def _batch_event(self, value: bytes | None) -> bool:
        """Take in a manifest or done event of this run; whether it was the done event."""
        found = batch_record(value or b"")
        if isinstance(found, BatchManifest) and found.run == self.run:
            self.report.total = found.total
            self._started_at = found.started_at
        elif isinstance(found, BatchDone) and found.run == self.run:
            self.done = found
            self.report.total = self.report.total or found.total
            return True
        return False

    async def _seek(
        self, consumer: Any, manifest: BatchManifest | None
    ) -> tuple[list[TopicPartition], str]:
        """Assign the terminal topics and the batches topic; seek from the batch's start."""
        batches = self._catalog.name(TopicKind.BATCHES)
        terminal = []
        for kind in (TopicKind.COMPLETIONS, TopicKind.FAILURES):
            terminal += await topic_partitions(consumer, self._catalog.name(kind))
        tps = terminal + await topic_partitions(consumer, batches)
        consumer.assign(tps)
        if manifest is None:
            await consumer.seek_to_beginning(*tps)
            return terminal, batches
        since = int((manifest.started_at - LOOKBACK).timestamp() * 1000)
        # End offsets first: a partition with nothing newer than ``since`` starts at the end
        # as it was *before* the lookup, so records appended meanwhile are not skipped.
        ends = await consumer.end_offsets(tps)
        offsets = await consumer.offsets_for_times({tp: since for tp in tps})
        for tp in tps:
            found = offsets.get(tp)
            consumer.seek(tp, found.offset if found is not None else ends[tp])
        return terminal, batches


def _terminal(record: Any, batch: bytes) -> Completion | Failure | None:
    headers = dict(record.headers or ())
    if headers.get(Header.BATCH_ID.value) != batch or not record.value:
        return None
    try:
        if record.topic.endswith(TopicKind.COMPLETIONS.value):
            return decode(record.value, Completion)
        failure = decode(record.value, Failure)
    except ValidationError:
        return None
    return failure if failure.terminal else None
