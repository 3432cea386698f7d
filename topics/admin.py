"""Provision and inspect the catalog's topics through the Kafka admin API.

``apply`` is idempotent: it creates missing topics, adds partitions where the catalog
asks for more (Kafka cannot remove partitions; fewer is reported, not applied), and
sets the catalog's topic configs where they differ. Only the drifted catalog keys are
SET (IncrementalAlterConfigs, see ``topics.kafka_protocol``): any other dynamic config an
operator put on a topic stays as it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from topics.catalog import TopicCatalog, TopicSpec
from topics.connection import KafkaConnection
from topics.kafka_protocol import set_topic_configs

log = logging.getLogger(__name__)
TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True)
class TopicState:
    """A topic as the broker describes it."""

    name: str
    partitions: int
    replication: int
    config: dict[str, str]
    records: int  # sum over partitions of (end offset - start offset)


async def apply_topics(conn: KafkaConnection, catalog: TopicCatalog) -> list[str]:
    """Make the broker match the catalog; returns one line per action taken or checked."""
    admin = AIOKafkaAdminClient(**conn.client_options())
    await admin.start()
    try:
        existing = await _describe_partitions(admin, [s.name for s in catalog.specs()])
        actions: list[str] = []
        missing = [s for s in catalog.specs() if s.name not in existing]
        if missing:
            actions += await _create(admin, missing)
        for spec in catalog.specs():
            if spec.name in existing:
                actions.append(await _reconcile(admin, spec, existing[spec.name]))
        return actions
    finally:
        await admin.close()


async def describe_topics(conn: KafkaConnection, catalog: TopicCatalog) -> list[TopicState | str]:
    """The broker's view of each catalog topic, or the name alone when it does not exist."""
    admin = AIOKafkaAdminClient(**conn.client_options())
    await admin.start()
    consumer = AIOKafkaConsumer(**conn.client_options(), enable_auto_commit=False)
    try:
        await consumer.start()
        names = [s.name for s in catalog.specs()]
        partitions = await _describe_partitions(admin, names)
        configs = await _describe_configs(admin, [n for n in names if n in partitions])
        out: list[TopicState | str] = []
        for name in names:
            if name not in partitions:
                out.append(name)
                continue
            tps = [TopicPartition(name, p) for p in range(partitions[name][0])]
            ends = await consumer.end_offsets(tps)
            starts = await consumer.beginning_offsets(tps)
            records = sum(ends[tp] - starts[tp] for tp in tps)
            count, replication = partitions[name]
            out.append(TopicState(name, count, replication, configs.get(name, {}), records))
        return out
    finally:
        await consumer.stop()
        await admin.close()


async def _create(admin: AIOKafkaAdminClient, specs: list[TopicSpec]) -> list[str]:
    new = [NewTopic(s.name, s.partitions, s.replication, topic_configs=s.config) for s in specs]
    response = (await admin.create_topics(new)).to_object()
    actions = []
    for item in response["topic_errors"]:
        if item["error_code"] not in (0, TOPIC_ALREADY_EXISTS):
            raise RuntimeError(f"cannot create topic {item['topic']}: {item.get('error_message')}")
        actions.append(f"created {item['topic']}")
    return actions


async def _reconcile(admin: AIOKafkaAdminClient, spec: TopicSpec, current: tuple[int, int]) -> str:
    partitions, _ = current
    notes = []
    if spec.partitions > partitions:
        await admin.create_partitions({spec.name: NewPartitions(spec.partitions)})
        notes.append(f"partitions {partitions} -> {spec.partitions}")
    elif spec.partitions < partitions:
        notes.append(f"has {partitions} partitions, catalog asks {spec.partitions} (kept)")
    config = (await _describe_configs(admin, [spec.name])).get(spec.name, {})
    drift = {k: v for k, v in spec.config.items() if config.get(k) != v}
    if drift:
        await set_topic_configs(admin, spec.name, drift)
        notes.append("config " + ", ".join(f"{k}={v}" for k, v in sorted(drift.items())))
    return f"{'altered' if notes else 'unchanged'} {spec.name}" + (
        f" ({'; '.join(notes)})" if notes else ""
    )


async def _describe_partitions(
    admin: AIOKafkaAdminClient, names: list[str]
) -> dict[str, tuple[int, int]]:
    """name -> (partition count, replication factor) for the topics that exist."""
    found: dict[str, tuple[int, int]] = {}
    for topic in await admin.describe_topics(names):
        if topic["error_code"] != 0 or not topic["partitions"]:
            continue
        replication = len(topic["partitions"][0]["replicas"])
        found[topic["topic"]] = (len(topic["partitions"]), replication)
    return found


async def _describe_configs(
    admin: AIOKafkaAdminClient, names: list[str]
) -> dict[str, dict[str, str]]:
    if not names:
        return {}
    resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
    out: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(resources):
        for resource in response.to_object()["resources"]:
            entries: list[dict[str, Any]] = resource["config_entries"]
            out[resource["resource_name"]] = {
                e["config_names"]: e["config_value"]
                for e in entries
                if e["config_value"] is not None
            }
    return out
