"""A 3-node KRaft cluster: ``kill -9`` of a partition leader loses no acknowledged record.

Each test starts its own cluster (not the session's single broker) and stops it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from promptmill.dev.cluster import (
    KafkaNode,
    bootstrap_servers,
    kill_node,
    restart_node,
    start_cluster,
    stop_cluster,
)
from promptmill.dev.harness import CACHE_DIR as CACHE
from promptmill.dev.stack import load_stack
from topics.partitions import read_to_end

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
TOPIC = "failover"
PARTITIONS = 3
PER_PHASE = 300

Partitions = dict[int, dict[str, Any]]


async def _partitions(bootstrap: str) -> Partitions:
    """The topic as the cluster describes it now, from a client of its own: a long-lived
    admin client can keep asking the node that died, with its stale metadata."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (topic,) = await admin.describe_topics([TOPIC])
    finally:
        await admin.close()
    return {p["partition"]: p for p in topic["partitions"]}


async def _until(
    bootstrap: str, check: Callable[[Partitions], bool], what: str, within: float
) -> Partitions:
    """Describe the topic until ``check`` holds; a node that just died may fail a describe."""
    deadline = time.monotonic() + within
    seen: Partitions = {}
    while time.monotonic() < deadline:
        try:
            seen = await _partitions(bootstrap)
        except (KafkaError, OSError):
            seen = {}
        if len(seen) == PARTITIONS and check(seen):
            return seen
        await asyncio.sleep(0.5)
    raise AssertionError(f"not {what} within {within:g}s: {seen}")


async def _produce(producer: AIOKafkaProducer, first: int, count: int) -> list[int]:
    """Send records ``first`` .. ``first + count - 1``; return them once all are acknowledged."""
    numbers = list(range(first, first + count))
    sends = [await producer.send(TOPIC, str(i).encode(), partition=i % PARTITIONS) for i in numbers]
    await asyncio.gather(*sends)
    return numbers


async def _read_all(bootstrap: str) -> list[int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        return [int(r.value) async for r in read_to_end(consumer, tps)]
    finally:
        await consumer.stop()


async def test_killed_leader_loses_no_acknowledged_record(tmp_path: Path) -> None:
    started = time.monotonic()
    nodes: list[KafkaNode] = await asyncio.to_thread(start_cluster, CACHE, tmp_path / "kafka", 3)
    print(f"3-node cluster up in {time.monotonic() - started:.1f}s")
    try:
        bootstrap = bootstrap_servers(nodes)
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
        await admin.start()
        await producer.start()
        try:
            config = {"min.insync.replicas": "2"}
            await admin.create_topics([NewTopic(TOPIC, PARTITIONS, 3, topic_configs=config)])
            before = await _until(
                bootstrap, lambda ps: all(len(p["isr"]) == 3 for p in ps.values()), "in sync", 60
            )
            sent = await _produce(producer, 0, PER_PHASE)

            leader = before[0]["leader"]
            await asyncio.to_thread(kill_node, nodes, leader)
            killed = time.monotonic()
            sent += await _produce(producer, PER_PHASE, PER_PHASE)  # waits out the election
            gap = time.monotonic() - killed
            print(f"node {leader} killed; writes acknowledged {gap:.1f}s later")
            await _until(
                bootstrap,
                lambda ps: (
                    ps[0]["leader"] not in (leader, -1)
                    and all(leader not in p["isr"] and len(p["isr"]) == 2 for p in ps.values())
                ),
                f"led without node {leader}",
                60,
            )

            restarted = time.monotonic()
            nodes = await asyncio.to_thread(restart_node, CACHE, nodes, leader)
            await _until(
                bootstrap,
                lambda ps: all(leader in p["isr"] for p in ps.values()),
                f"in sync with node {leader} again",
                90,
            )
            print(f"node {leader} back in every ISR {time.monotonic() - restarted:.1f}s later")
            sent += await _produce(producer, 2 * PER_PHASE, PER_PHASE)
        finally:
            await producer.stop()
            await admin.close()

        received = await _read_all(bootstrap)
        assert sorted(received) == sent  # none lost, none twice (idempotent producer)
    finally:
        await asyncio.to_thread(stop_cluster, nodes)
    assert not any(node.is_alive() for node in nodes)


def _cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "promptmill", "dev", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=check,
    )


def test_dev_up_three_brokers_status_heal_down(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = dict(os.environ, PROMPTMILL_STATE_DIR=str(state), PROMPTMILL_CACHE_DIR=str(CACHE))
    seen: list[KafkaNode] = []  # every node process started, to check that none survives
    try:
        started = time.monotonic()
        _cli(env, "up", "--brokers", "3", "--no-sim")
        print(f"`dev up --brokers 3` took {time.monotonic() - started:.1f}s")
        first = load_stack(state)
        assert first is not None and first.kafka is not None and first.kafka.nodes is not None
        nodes = first.kafka.nodes
        seen += nodes
        assert [n.node_id for n in nodes] == [1, 2, 3]
        assert first.kafka.bootstrap == bootstrap_servers(nodes)
        assert all(n.is_alive() and n.home == state / "kafka" / f"node-{n.node_id}" for n in nodes)

        _cli(env, "up", "--brokers", "3", "--no-sim")
        assert load_stack(state) == first  # idempotent: the same processes

        wrong = _cli(env, "up", "--brokers", "1", "--no-sim", check=False)
        assert wrong.returncode != 0 and "already runs with 3" in wrong.stderr

        kill_node(nodes, 2)
        shown = _cli(env, "status").stdout.splitlines()
        assert [line.split()[::2] for line in shown if line.startswith("kafka/")] == [
            ["kafka/1", "running"],
            ["kafka/2", "DEAD"],
            ["kafka/3", "running"],
        ]
        _cli(env, "up", "--no-sim")  # keeps the cluster and restarts node 2 on its data
        healed = load_stack(state)
        assert healed is not None and healed.kafka is not None and healed.kafka.nodes is not None
        assert [n.pid != o.pid for n, o in zip(healed.kafka.nodes, nodes, strict=True)] == [
            False,
            True,
            False,
        ]
        assert all(n.is_alive() for n in healed.kafka.nodes)
        seen += healed.kafka.nodes
    finally:
        out = _cli(env, "down").stdout
    assert "kafka" in out
    assert load_stack(state) is None
    assert not any(n.is_alive() for n in seen)
    assert not list((state / "kafka").glob("node-*/data"))
