"""``promptmill topics apply`` on the real broker: it fixes the catalog's keys and only those."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from promptmill.dev.harness import Env
from topics import TopicKind
from topics.admin import TopicState, describe_topics
from topics.kafka_protocol import set_topic_configs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
OPERATOR_MAX_MESSAGE_BYTES = "5242880"


async def _jobs_config(env: Env) -> dict[str, str]:
    jobs = env.catalog.name(TopicKind.JOBS)
    for row in await describe_topics(env.conn, env.catalog):
        if isinstance(row, TopicState) and row.name == jobs:
            return row.config
    raise AssertionError(f"{jobs} does not exist")


async def _jobs_config_once(env: Env, key: str, value: str, within: float = 15) -> dict[str, str]:
    """The jobs topic's config once ``key`` reads ``value``.

    A KRaft broker applies a committed config change from its metadata log a moment after
    the admin call returns, so a describe right after it can still show the old value.
    """
    deadline = asyncio.get_running_loop().time() + within
    while (config := await _jobs_config(env)).get(key) != value:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{key} is {config.get(key)!r}, not {value!r}, after {within}s")
        await asyncio.sleep(0.1)
    return config


async def test_apply_fixes_drift_and_keeps_operator_overrides(env: Env) -> None:
    jobs = env.catalog.spec(TopicKind.JOBS)
    admin = AIOKafkaAdminClient(**env.conn.client_options())
    await admin.start()
    try:
        await set_topic_configs(admin, jobs.name, {"max.message.bytes": OPERATOR_MAX_MESSAGE_BYTES})
        await set_topic_configs(admin, jobs.name, {"retention.ms": "60000"})
    finally:
        await admin.close()
    drifted = await _jobs_config_once(env, "retention.ms", "60000")
    assert drifted["max.message.bytes"] == OPERATOR_MAX_MESSAGE_BYTES

    result = await asyncio.to_thread(env.cli, "topics", "apply")

    assert f"altered {jobs.name} (config retention.ms={jobs.config['retention.ms']})" in (
        result.stdout
    )
    config = await _jobs_config_once(env, "retention.ms", jobs.config["retention.ms"])
    assert config["max.message.bytes"] == OPERATOR_MAX_MESSAGE_BYTES
    assert config["cleanup.policy"] == "delete"


async def test_a_refused_config_names_the_topic_and_the_brokers_message(env: Env) -> None:
    jobs = env.catalog.name(TopicKind.JOBS)
    admin = AIOKafkaAdminClient(**env.conn.client_options())
    await admin.start()
    try:
        with pytest.raises(RuntimeError, match=rf"topic {jobs}: .*retention\.ms"):
            await set_topic_configs(admin, jobs, {"retention.ms": "not-a-number"})
    finally:
        await admin.close()
