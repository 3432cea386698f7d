"""A local Kafka cluster of N KRaft nodes, for ``dev up --brokers 3`` and failover tests.

Each node is one JVM that is both broker and controller (KRaft combined mode), run from
the same Maven-fetched jars as the single broker (:mod:`promptmill.dev.kafka`). The
quorum is static: ``controller.quorum.voters`` names every node, so the ports are
chosen once, when the cluster is formatted, and a node always comes back on its own
ports. Every node's storage is formatted with one shared cluster id. Under ``home``::

    node-1/server.properties  node-1/log4j.properties  node-1/data/  node-1/kafka.log
    node-2/...                node-3/...

A node is up when its log says ``Kafka Server started``: in KRaft a broker logs it only
once the quorum has elected a controller that registered and unfenced it. The cluster
is up when, on top of that, a client's metadata request lists every node as a live
broker (fenced brokers are left out of metadata).

:func:`kill_node` is a ``kill -9`` (no controlled shutdown); :func:`restart_node` starts
a node again on its existing data, with no reformat. The functions block; from async
code, call them through :func:`asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from pydantic import BaseModel, ConfigDict

from promptmill.dev.kafka import (
    STARTED_MARKER,
    NodeAddress,
    broker_command,
    fetch_kafka,
    format_storage,
    new_cluster_id,
    render_node_properties,
)
from promptmill.dev.processes import (
    STOP_TIMEOUT_S,
    StackError,
    free_ports,
    kill,
    log_tail,
    process_start_time,
    runs,
    spawn,
    stop,
    stop_all,
    wait_for_log,
)

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
NODE_HEAP = "-Xmx384m"  # three JVMs share a laptop (or a 2-core CI runner)
_POLL_S = 0.5
_METADATA_TIMEOUT_MS = 5000


class KafkaNode(BaseModel):
    """One running node of a cluster: where it listens, where it lives, which process."""

    model_config = ConfigDict(frozen=True)

    node_id: int
    pid: int
    start_time: int | None = None
    port: int
    controller_port: int
    log: Path
    home: Path

    @property
    def bootstrap(self) -> str:
        """``host:port`` of its client (PLAINTEXT) listener."""
        return f"{HOST}:{self.port}"

    def is_alive(self) -> bool:
        """True if the recorded process (same pid, same start time) still runs."""
        return runs(self.pid, self.start_time)


def bootstrap_servers(nodes: Sequence[KafkaNode]) -> str:
    """Comma-separated ``host:port`` of every node, for ``bootstrap_servers``."""
    return ",".join(node.bootstrap for node in nodes)


def plan_cluster(size: int) -> list[NodeAddress]:
    """Node ids 1..``size``, each with two free loopback ports of its own."""
    if size < 1:
        raise StackError(f"a Kafka cluster needs at least one node, not {size}")
    ports = free_ports(2 * size)
    return [NodeAddress(i + 1, ports[2 * i], ports[2 * i + 1]) for i in range(size)]


def start_cluster(
    cache_dir: Path, home: Path, size: int = 3, timeout: float = 180.0
) -> list[KafkaNode]:
    """Format and start ``size`` nodes under ``home``; wait until the cluster is up.

    Any data of an earlier cluster under ``home`` is replaced. If a node fails to come up
    within ``timeout`` seconds, every node is stopped and :class:`StackError` raised with
    the tail of the failing node's log.
    """
    libs = fetch_kafka(cache_dir)
    addresses = plan_cluster(size)
    cluster_id = new_cluster_id()

    def format_node(address: NodeAddress) -> Path:
        node_home = home / f"node-{address.node_id}"
        properties = render_node_properties(address, addresses, node_home / "data")
        return format_storage(libs, node_home, properties, cluster_id)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=size) as pool:  # one JVM each: in parallel
        configs = list(pool.map(format_node, addresses))
    nodes: list[KafkaNode] = []
    try:
        for address, config in zip(addresses, configs, strict=True):
            log = config.with_name("kafka.log")
            pid = spawn(broker_command(libs, config, NODE_HEAP), log)
            nodes.append(_node(address, pid, log))
        deadline = time.monotonic() + timeout
        for node in nodes:
            wait_for_log(node.log, STARTED_MARKER, _left(deadline), node.pid)
        wait_for_brokers(nodes, [node.node_id for node in nodes], _left(deadline))
    except BaseException:
        stop_cluster(nodes)
        raise
    logger.info(
        "Kafka cluster of %s nodes up at %s in %.1fs (cluster id %s)",
        size,
        bootstrap_servers(nodes),
        time.monotonic() - started,
        cluster_id,
    )
    return nodes


def kill_node(nodes: Sequence[KafkaNode], node_id: int) -> None:
    """``kill -9`` node ``node_id``: no controlled shutdown, its data left as it was."""
    node = _find(nodes, node_id)
    if node.is_alive():
        logger.info("killing Kafka node %s (pid %s)", node_id, node.pid)
        kill(node.pid)


def restart_node(
    cache_dir: Path, nodes: Sequence[KafkaNode], node_id: int, timeout: float = 120.0
) -> list[KafkaNode]:
    """Start node ``node_id`` again on its own ports and data; wait until it is back.

    The node must not be running. Returns ``nodes`` with that node's new process in
    place of the old one. Back means: started, and listed as a live broker again.
    """
    old = _find(nodes, node_id)
    if old.is_alive():
        raise StackError(f"Kafka node {node_id} is still running (pid {old.pid})")
    libs = fetch_kafka(cache_dir)
    pid = spawn(broker_command(libs, old.home / "server.properties", NODE_HEAP), old.log)
    new = old.model_copy(update={"pid": pid, "start_time": process_start_time(pid)})
    updated = [new if node.node_id == node_id else node for node in nodes]
    deadline = time.monotonic() + timeout
    try:
        wait_for_log(new.log, STARTED_MARKER, _left(deadline), pid)
        wait_for_brokers(updated, [node_id], _left(deadline))
    except BaseException:
        stop(pid, STOP_TIMEOUT_S)
        raise
    logger.info("Kafka node %s back at %s (pid %s)", node_id, new.bootstrap, pid)
    return updated


def stop_cluster(nodes: Sequence[KafkaNode]) -> None:
    """Stop every node that still runs, all at once (SIGTERM, then SIGKILL after a grace).

    Together rather than one by one: the last nodes of a quorum stopped one at a time
    would wait for a controller majority that is gone.
    """
    stop_all([node.pid for node in nodes if node.is_alive()], STOP_TIMEOUT_S)


def wait_for_brokers(nodes: Sequence[KafkaNode], node_ids: Collection[int], timeout: float) -> None:
    """Wait until the cluster's metadata lists every node in ``node_ids`` as a live broker.

    Asks the nodes of ``nodes`` that run; raises :class:`StackError` if one of the awaited
    nodes dies or the time runs out.
    """
    wanted = set(node_ids)
    awaited = [node for node in nodes if node.node_id in wanted]
    deadline = time.monotonic() + timeout
    seen: set[int] = set()
    while True:
        for node in awaited:
            if not node.is_alive():
                raise StackError(
                    f"Kafka node {node.node_id} (pid {node.pid}) exited while waiting for it "
                    f"to register; last lines of {node.log}:\n{log_tail(node.log)}"
                )
        seen = live_brokers(bootstrap_servers([n for n in nodes if n.is_alive()]))
        if wanted <= seen:
            return
        if time.monotonic() >= deadline:
            raise StackError(
                f"timed out after {timeout:g}s waiting for Kafka nodes {sorted(wanted)} to "
                f"register; the cluster lists brokers {sorted(seen)}"
            )
        time.sleep(_POLL_S)


def live_brokers(bootstrap: str) -> set[int]:
    """Ids of the live (unfenced) brokers in a metadata response; empty if none answers.

    Runs the asyncio client on a thread of its own, so it works from any caller.
    """
    if not bootstrap:
        return set()
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _describe_brokers(bootstrap)).result()


async def _describe_brokers(bootstrap: str) -> set[int]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=_METADATA_TIMEOUT_MS
    )
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
    except (KafkaError, OSError) as exc:
        logger.debug("metadata from %s not available yet: %r", bootstrap, exc)
        return set()
    finally:
        await admin.close()
    return {int(broker["node_id"]) for broker in cluster["brokers"]}


def _node(address: NodeAddress, pid: int, log: Path) -> KafkaNode:
    return KafkaNode(
        node_id=address.node_id,
        pid=pid,
        start_time=process_start_time(pid),
        port=address.port,
        controller_port=address.controller_port,
        log=log,
        home=log.parent,
    )


def _find(nodes: Sequence[KafkaNode], node_id: int) -> KafkaNode:
    for node in nodes:
        if node.node_id == node_id:
            return node
    raise StackError(f"no Kafka node {node_id} (nodes: {[n.node_id for n in nodes]})")


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
