"""Each topic's real ``max.message.bytes``: what a record published to it may weigh.

Producers (``submit`` refuses a line that could not be published as a job) and the worker
runtime (every outcome is fitted to its topic, :mod:`processors.runtime.fit`) both measure
records against the limit the broker enforces, not an assumed one: operators raise and
lower it per topic.
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from topics.connection import KafkaConnection

log = logging.getLogger(__name__)
BROKER_DEFAULT = 1_048_588  # Kafka's default message.max.bytes
RECORD_OVERHEAD = 512  # record batch header, record framing, timestamps, with room to spare


class TopicLimits:
    """Each topic's ``max.message.bytes`` as the broker has it, read once and cached."""

    def __init__(self, conn: KafkaConnection) -> None:
        self._conn = conn
        self._admin: Any = None
        self._limits: dict[str, int] = {}

    async def __aenter__(self) -> TopicLimits:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._admin is None:
            self._admin = AIOKafkaAdminClient(**self._conn.client_options())
            await self._admin.start()

    async def stop(self) -> None:
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    async def limit(self, topic: str) -> int:
        known = self._limits.get(topic)
        if known is None:
            read = await self._read(topic)
            if read is None:  # not cached: asked again next time
                return BROKER_DEFAULT
            known = self._limits[topic] = read
        return known

    def forget(self, topic: str) -> None:
        """Read the limit again next time (the broker refused a record under it)."""
        self._limits.pop(topic, None)

    async def _read(self, topic: str) -> int | None:
        if self._admin is None:
            raise RuntimeError("TopicLimits used before start()")
        try:
            responses = await self._admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic)]
            )
        except (KafkaError, OSError) as exc:
            log.warning(
                "cannot read max.message.bytes of %s (%s); assuming the default", topic, exc
            )
            return None
        for response in responses:
            for resource in response.to_object()["resources"]:
                for entry in resource["config_entries"]:
                    if entry["config_names"] == "max.message.bytes" and entry["config_value"]:
                        return int(entry["config_value"])
        return BROKER_DEFAULT
