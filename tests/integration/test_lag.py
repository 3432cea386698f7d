"""``promptmill lag`` agrees with Kafka's own consumer-groups tool."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from promptmill.dev.harness import CACHE_DIR, Env
from promptmill.dev.kafka import fetch_kafka, kafka_tool_command, render_log4j
from topics import TopicKind

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
GROUP_TOOL = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"


async def test_lag_equals_the_kafka_consumer_groups_tool(env: Env, tmp_path: Path) -> None:
    topic = env.catalog.name(TopicKind.JOBS)
    await env.produce_jobs((f"k{i}", "lag", b"{}") for i in range(60))
    group = f"{env.prefix}.lag-check"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=env.endpoints.bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:  # commit part of three partitions; leave partition 3 without a committed offset
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(4)])
        committed = {
            TopicPartition(topic, p): ends[TopicPartition(topic, p)] // (p + 2) for p in range(3)
        }
        consumer.assign(list(committed))
        await consumer.commit(committed)
    finally:
        await consumer.stop()

    ours = _parse_ours(
        env.cli("lag", "--group", group, "--threshold", "5", "--offset-reset", "latest").stdout
    )
    earliest = _parse_ours(env.cli("lag", "--group", group, "--threshold", "5").stdout)
    assert earliest[3][2] == earliest[3][1]  # no commit, earliest: the whole log is lag
    theirs = await asyncio.to_thread(_kafka_tool, env.endpoints.bootstrap, group, tmp_path)
    assert set(theirs) == {0, 1, 2}
    for partition, (current, log_end, lag) in theirs.items():
        assert ours[partition] == (current, log_end, lag), partition
    assert ours[3][0] is None and ours[3][2] == 1  # no commit + offsetResetPolicy latest: 1


def _parse_ours(output: str) -> dict[int, tuple[int | None, int, int]]:
    rows = {}
    for line in output.splitlines()[1:]:
        parts = line.split()
        if len(parts) == 5 and parts[1].isdigit():
            committed = None if parts[2] == "-" else int(parts[2])
            rows[int(parts[1])] = (committed, int(parts[3]), int(parts[4]))
    return rows


def _kafka_tool(bootstrap: str, group: str, tmp_path: Path) -> dict[int, tuple[int, int, int]]:
    log4j = tmp_path / "log4j.properties"
    log4j.write_text(render_log4j())
    tool = kafka_tool_command(fetch_kafka(CACHE_DIR), GROUP_TOOL, log4j)
    command = [*tool, "--bootstrap-server", bootstrap, "--describe", "--group", group]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[0] == group and parts[2].isdigit() and parts[3].isdigit():
            rows[int(parts[2])] = (int(parts[3]), int(parts[4]), int(parts[5]))
    return rows
