"""The test-only Redis Cluster launcher: three real masters that share the slots."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio import RedisCluster as ClusterClient

from promptmill.dev.processes import is_alive
from promptmill.dev.redis_cluster import RedisCluster, start_redis_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def _node_info(port: int) -> dict[str, str]:
    node = Redis(host="127.0.0.1", port=port)
    try:
        info: dict[str, str] = await node.cluster("INFO")
        return info
    finally:
        await node.aclose()


async def _keys_on_each_node(cluster: RedisCluster, client: ClusterClient) -> dict[int, str]:
    """Write one key per master (hash tags chosen until every master owns one)."""
    by_port: dict[int, str] = {}
    tag = 0
    while len(by_port) < len(cluster.nodes) and tag < 1000:
        key = f"{{launcher-{tag}}}:k"
        node = client.get_node_from_key(key)
        assert node is not None
        by_port.setdefault(int(node.port), key)
        tag += 1
    for port, key in by_port.items():
        assert await client.set(key, str(port)) is True
    return by_port


async def test_three_masters_serve_all_slots_and_stop(tmp_path: Path) -> None:
    cluster = await start_redis_cluster(tmp_path)
    try:
        assert len(cluster.ports) == 3 and len(set(cluster.ports)) == 3
        for port in cluster.ports:
            info = await _node_info(port)
            assert info["cluster_state"] == "ok"
            assert int(info["cluster_size"]) == 3  # masters serving slots
            assert int(info["cluster_known_nodes"]) == 3
            assert int(info["cluster_slots_assigned"]) == 16384
        client = ClusterClient.from_url(cluster.url)
        try:
            await client.initialize()
            assert sorted(n.port for n in client.get_primaries()) == sorted(cluster.ports)
            by_port = await _keys_on_each_node(cluster, client)
            assert sorted(by_port) == sorted(cluster.ports)
            for port, key in by_port.items():
                assert await client.get(key) == str(port).encode()
                node = Redis(host="127.0.0.1", port=port)
                try:
                    assert await node.dbsize() == 1
                finally:
                    await node.aclose()
        finally:
            await client.aclose()
    finally:
        await cluster.stop()
    assert all(node.pid is None for node in cluster.nodes)
    await cluster.stop()  # idempotent


async def test_a_stopped_node_rejoins_with_its_slots(tmp_path: Path) -> None:
    async with await start_redis_cluster(tmp_path) as cluster:
        pid = cluster.nodes[1].pid
        assert pid is not None
        await cluster.stop_node(1)
        assert not is_alive(pid) and cluster.nodes[1].pid is None
        await cluster.start_node(1)
        for port in cluster.ports:
            assert (await _node_info(port))["cluster_state"] == "ok"
        client = ClusterClient.from_url(cluster.url)
        try:
            by_port = await _keys_on_each_node(cluster, await client.initialize())
            assert sorted(by_port) == sorted(cluster.ports)
        finally:
            await client.aclose()
    assert all(node.pid is None for node in cluster.nodes)
