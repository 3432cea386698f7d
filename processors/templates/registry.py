"""The template registry: the compacted templates topic, materialised in memory.

On :meth:`TemplateRegistry.start` it reads the topic from the beginning to its current
end (so the first job already sees every version and label), then keeps following it in
the background, so new versions and moved labels take effect within a poll interval,
without a restart. It reads without a consumer group: every worker holds the whole view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from processors.templates.store import TemplateStore
from topics import KafkaConnection
from topics.partitions import topic_partitions

log = logging.getLogger(__name__)


class TemplateRegistry:
    """A :class:`TemplateStore` kept up to date from Kafka."""

    def __init__(self, conn: KafkaConnection, topic: str, *, follow: bool = True) -> None:
        self.store = TemplateStore()
        self._conn = conn
        self._topic = topic
        self._follow = follow
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TemplateRegistry:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Catch up with the topic; with ``follow`` keep reading in the background."""
        if self._consumer is not None:
            return
        self._consumer = AIOKafkaConsumer(
            **self._conn.client_options(), enable_auto_commit=False, group_id=None
        )
        await self._consumer.start()
        try:
            tps = await topic_partitions(self._consumer, self._topic)
        except BaseException:
            await self._consumer.stop()
            self._consumer = None
            raise
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        ends = await self._consumer.end_offsets(tps)
        while await self._behind(tps, ends):
            await self._poll(timeout_ms=500)
        if self._follow:
            self._task = asyncio.create_task(self._run(), name="template-registry")
        else:
            await self._consumer.stop()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def _behind(self, tps: list[TopicPartition], ends: dict[TopicPartition, int]) -> bool:
        for tp in tps:
            if await self._consumer.position(tp) < ends[tp]:
                return True
        return False

    async def _poll(self, timeout_ms: int) -> None:
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=1000)
        for records in batches.values():
            for record in records:
                self.store.apply(record.key, record.value)

    async def _run(self) -> None:
        while True:
            try:
                await self._poll(timeout_ms=1000)
            except asyncio.CancelledError:
                raise
            except Exception:  # keep the last good view; Kafka may come back
                log.exception("template registry poll failed; retrying")
                await asyncio.sleep(1.0)
