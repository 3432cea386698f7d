"""Finding a topic's partitions from a consumer, tolerating just-created topics."""

from __future__ import annotations

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
