"""Consumer-group lag, computed the way KEDA's Kafka scaler computes it.

Per partition: ``log end offset - committed offset``. A partition with no committed offset
counts 1 when the group starts at the latest offset, or its whole log when it starts at the
earliest (0 either way with ``scale_to_zero_on_invalid``), which is KEDA's
``offsetResetPolicy`` / ``scaleToZeroOnInvalidOffset``. The metric KEDA hands the HPA is the
total, capped at ``partitions * lagThreshold`` unless idle consumers are allowed, so the
replica count it asks for never exceeds the partition count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from topics.connection import KafkaConnection
from topics.partitions import topic_partitions

OffsetReset = Literal["latest", "earliest"]


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None
    log_end: int
    lag: int


@dataclass(frozen=True)
class GroupLag:
    group: str
    partitions: list[PartitionLag]

    @property
    def total(self) -> int:
        return sum(p.lag for p in self.partitions)

    def keda_metric(self, threshold: int, *, allow_idle_consumers: bool = False) -> int:
        """The value KEDA reports to the HPA for ``lagThreshold`` = ``threshold`` (>= 1)."""
        if threshold < 1:
            raise ValueError(f"lagThreshold must be at least 1, got {threshold}")
        if not allow_idle_consumers and self.total // threshold > len(self.partitions):
            return len(self.partitions) * threshold
        return self.total

    def replicas(self, threshold: int, *, allow_idle_consumers: bool = False) -> int:
        """Replicas the HPA settles on for this lag (AverageValue target = threshold)."""
        return math.ceil(
            self.keda_metric(threshold, allow_idle_consumers=allow_idle_consumers) / threshold
        )


def partition_lag(
    committed: int | None, log_end: int, reset: OffsetReset, scale_to_zero_on_invalid: bool
) -> int:
    if committed is None or committed < 0:
        if scale_to_zero_on_invalid:
            return 0
        return 1 if reset == "latest" else log_end
    return log_end - committed


async def group_lag(
    conn: KafkaConnection,
    group: str,
    topics: list[str],
    *,
    reset: OffsetReset = "latest",
    scale_to_zero_on_invalid: bool = False,
) -> GroupLag:
    """The lag of ``group`` on every partition of ``topics``."""
    admin = AIOKafkaAdminClient(**conn.client_options())
    await admin.start()
    consumer = AIOKafkaConsumer(**conn.client_options(), enable_auto_commit=False)
    try:
        await consumer.start()
        tps: list[TopicPartition] = []
        for topic in topics:
            tps += await topic_partitions(consumer, topic)
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
        ends = await consumer.end_offsets(tps)
        rows = []
        for tp in tps:
            meta = committed.get(tp)
            offset = meta.offset if meta is not None and meta.offset >= 0 else None
            lag = partition_lag(offset, ends[tp], reset, scale_to_zero_on_invalid)
            rows.append(PartitionLag(tp.topic, tp.partition, offset, ends[tp], lag))
        return GroupLag(group, rows)
    finally:
        await consumer.stop()
        await admin.close()
