"""A topic's partitions from a consumer (tolerating just-created topics), and reading
assigned partitions to their end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import UnknownTopicOrPartitionError

from schemas import PromptmillError


class MissingTopic(PromptmillError):
    """A catalog topic does not exist on the broker."""


async def topic_partitions(consumer: Any, topic: str) -> list[TopicPartition]:
    """The partitions of ``topic``, refreshing the consumer's metadata until they are known.

    ``AIOKafkaConsumer.partitions_for_topic`` never refreshes metadata, so a consumer that
    does not subscribe would not see a topic created after it started; the client's
    ``_wait_on_metadata`` is the one call that refreshes and waits. Raises
    :class:`MissingTopic` (naming the fix) when the topic does not exist.
    """
    try:
        partitions = await consumer._client._wait_on_metadata(topic)
    except UnknownTopicOrPartitionError:
        raise MissingTopic(f"topic {topic} does not exist; run `promptmill topics apply`") from None
    return [TopicPartition(topic, p) for p in sorted(partitions)]


async def read_to_end(
    consumer: Any, tps: list[TopicPartition], ends: dict[TopicPartition, int] | None = None
) -> AsyncIterator[Any]:
    """Every record of the assigned ``tps`` from their positions to ``ends`` (default: the
    end offsets as of the call; for a read_committed consumer, the last stable offsets)."""
    ends = ends if ends is not None else await consumer.end_offsets(tps)
    while any([await consumer.position(tp) < ends[tp] for tp in tps]):
        for records in (await consumer.getmany(*tps, timeout_ms=500, max_records=5000)).values():
            for record in records:
                yield record
