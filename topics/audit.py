"""The audit trail: an append-only topic of who did what, and when.

Every key created or revoked, template pushed, label moved, batch created or cancelled and
file deleted is one :class:`~schemas.audit.AuditEvent`, written with an idempotent producer
(``acks=all``) before the action is answered as done. Nothing ever rewrites the topic (it
is not compacted), and it has one partition so that it reads in the order it was written.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import ValidationError

from schemas import decode, encode
from schemas.audit import Actor, AuditAction, AuditEvent
from topics.catalog import TopicCatalog, TopicKind
from topics.connection import KafkaConnection
from topics.partitions import read_to_end, topic_partitions


class AuditLog:
    """Writes audit events (``start`` before, ``stop`` after; ``async with`` works)."""

    def __init__(self, conn: KafkaConnection, catalog: TopicCatalog) -> None:
        self._conn = conn
        self._topic = catalog.name(TopicKind.AUDIT)
        self._producer: Any = None

    async def __aenter__(self) -> AuditLog:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._producer is None:
            producer = AIOKafkaProducer(
                **self._conn.client_options(), acks="all", enable_idempotence=True
            )
            await producer.start()
            self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def record(
        self,
        actor: Actor,
        action: AuditAction,
        target: str,
        *,
        tenant: str | None = None,
        **details: Any,
    ) -> AuditEvent:
        """Append one event and wait until the broker has it."""
        if self._producer is None:
            raise RuntimeError("AuditLog.record called before start()")
        event = AuditEvent(
            actor=actor, action=action, tenant=tenant, target=target, details=details
        )
        await self._producer.send_and_wait(
            self._topic, encode(event), key=target.encode("utf-8", "replace")
        )
        return event


async def read_audit(
    conn: KafkaConnection,
    catalog: TopicCatalog,
    *,
    since: datetime | None = None,
    tenant: str | None = None,
) -> AsyncIterator[AuditEvent]:
    """The events so far, oldest first; only those at or after ``since`` and of
    ``tenant`` (its objects, or acted by its keys) when given."""
    consumer = AIOKafkaConsumer(  # committed only: template pushes write it transactionally
        **conn.client_options(),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, catalog.name(TopicKind.AUDIT))
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        if since is not None:
            found = await consumer.offsets_for_times(
                {tp: int(since.timestamp() * 1000) for tp in tps}
            )
            for tp in tps:
                offset = found.get(tp)
                consumer.seek(tp, offset.offset if offset is not None else ends[tp])
        else:
            await consumer.seek_to_beginning(*tps)
        async for record in read_to_end(consumer, tps, ends):
            try:
                event = decode(record.value or b"", AuditEvent)
            except ValidationError:
                continue
            if since is not None and event.at < since:
                continue
            if tenant is not None and tenant not in (event.tenant, event.actor.tenant):
                continue
            yield event
    finally:
        await consumer.stop()
