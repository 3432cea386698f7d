"""A real Redis Cluster on loopback, for tests that must see cluster behaviour.

A single ``redis-server`` hides what a cluster enforces: keys of one command or script
must hash to one slot (a ``{hash tag}``), a pipeline is split per node, and a node can
go away while the others keep serving. :func:`start_redis_cluster` starts ``masters``
``redis-server`` processes in cluster mode (no replicas, no persistence), joins them
with ``redis-cli --cluster create`` and returns once every node reports
``cluster_state:ok`` and knows every other node, so the first command a client sends
is routed by a complete slot map.

Each node gets a directory of its own under ``directory`` (its ``nodes-<port>.conf``
and ``redis.log``); a node stopped with :meth:`RedisCluster.stop_node` rejoins with its
old identity and slots when :meth:`RedisCluster.start_node` starts it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from redis.asyncio import Redis
from redis.exceptions import RedisError

from promptmill.dev.processes import STOP_TIMEOUT_S, StackError, free_ports, serve, stop

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
READY_TIMEOUT_S = 30.0  # each wait: a node's port, `--cluster create`, cluster_state:ok
NODE_TIMEOUT_MS = 2000
_POLL_S = 0.05


def _executable(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(f"{name} not found; install it with `apt-get install redis-server`")
    return path


@dataclass
class NodeProcess:
    """One master: its client port, cluster-bus port, directory and (while running) pid."""

    port: int
    bus_port: int
    directory: Path
    pid: int | None = None

    @property
    def log(self) -> Path:
        """The node's ``redis-server`` log file."""
        return self.directory / "redis.log"

    def command(self) -> list[str]:
        """The ``redis-server`` command line that starts (or restarts) this node."""
        return [
            _executable("redis-server"),
            *("--port", str(self.port), "--bind", HOST),
            # Explicit bus port: the default port+10000 may be taken or exceed 65535.
            *("--cluster-enabled", "yes", "--cluster-port", str(self.bus_port)),
            *("--cluster-config-file", f"nodes-{self.port}.conf", "--dir", str(self.directory)),
            *("--save", "", "--appendonly", "no"),
            *("--cluster-node-timeout", str(NODE_TIMEOUT_MS)),
        ]


@dataclass
class RedisCluster:
    """A running loopback Redis Cluster of masters only; stop it with :meth:`stop`.

    ``url`` names one seed node, enough for ``redis.asyncio.RedisCluster.from_url``
    to discover the rest. Also an async context manager that stops the cluster on exit.
    """

    directory: Path
    nodes: list[NodeProcess] = field(default_factory=list)

    @property
    def ports(self) -> list[int]:
        """The client port of each node, in node order."""
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port of node 0>``: a seed for cluster clients."""
        return f"redis://{HOST}:{self.nodes[0].port}"

    async def start_node(self, index: int) -> None:
        """Start node ``index`` (no-op if running); wait until the cluster is ok again."""
        node = self.nodes[index]
        if node.pid is not None:
            return
        await asyncio.to_thread(_serve_node, node)
        await wait_cluster_ok(self.ports, len(self.nodes))

    async def stop_node(self, index: int) -> None:
        """Stop node ``index`` (SIGTERM, then SIGKILL); a no-op if it is not running."""
        node = self.nodes[index]
        if node.pid is None:
            return
        pid, node.pid = node.pid, None
        await asyncio.to_thread(stop, pid, STOP_TIMEOUT_S)

    async def stop(self) -> None:
        """Stop every node; safe to call twice. The node directories are kept."""
        await asyncio.gather(*(self.stop_node(i) for i in range(len(self.nodes))))

    async def __aenter__(self) -> RedisCluster:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _serve_node(node: NodeProcess) -> None:
    node.directory.mkdir(parents=True, exist_ok=True)
    node.pid = serve(node.command(), node.log, node.port, READY_TIMEOUT_S).pid


async def _create(ports: list[int]) -> None:
    """Assign the slots evenly over ``ports`` with ``redis-cli --cluster create``."""
    proc = await asyncio.create_subprocess_exec(
        _executable("redis-cli"),
        *("--cluster", "create", *(f"{HOST}:{port}" for port in ports)),
        *("--cluster-replicas", "0", "--cluster-yes"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), READY_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise StackError(
            f"redis-cli --cluster create timed out after {READY_TIMEOUT_S:g}s"
        ) from None
    if proc.returncode != 0:
        text = out.decode(errors="replace")
        raise StackError(f"redis-cli --cluster create failed ({proc.returncode}):\n{text}")


async def _node_ok(port: int, masters: int) -> bool:
    """True if the node on ``port`` is ok with all slots and knows ``masters`` masters."""
    client = Redis(host=HOST, port=port, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        info = await client.cluster("INFO")
    except (RedisError, OSError):
        return False
    finally:
        await client.aclose()
    return bool(
        info.get("cluster_state") == "ok"
        and int(info.get("cluster_slots_ok", 0)) == 16384
        and int(info.get("cluster_known_nodes", 0)) == masters
        and int(info.get("cluster_size", 0)) == masters
    )


async def wait_cluster_ok(ports: list[int], masters: int) -> None:
    """Wait until every node on ``ports`` reports a healthy cluster of ``masters`` masters."""
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            while True:
                if all(await asyncio.gather(*(_node_ok(port, masters) for port in ports))):
                    return
                await asyncio.sleep(_POLL_S)
    except TimeoutError:
        raise StackError(f"cluster on ports {ports} not ok after {READY_TIMEOUT_S:g}s") from None


async def start_redis_cluster(directory: Path, masters: int = 3) -> RedisCluster:
    """Start a ``masters``-node Redis Cluster under ``directory``; return once it is ok.

    On any failure the nodes already started are stopped and :class:`StackError` is
    raised (with the failing node's log tail when a node did not come up).
    """
    if masters < 3:
        raise ValueError("redis-cli --cluster create needs at least 3 masters")
    started = time.monotonic()
    cluster = RedisCluster(directory)
    ports = free_ports(2 * masters)
    for port, bus in zip(ports[:masters], ports[masters:], strict=True):
        cluster.nodes.append(NodeProcess(port, bus, directory / f"node-{port}"))
    try:
        for node in cluster.nodes:
            await asyncio.to_thread(_serve_node, node)
        await _create(cluster.ports)
        await wait_cluster_ok(cluster.ports, masters)
    except BaseException:
        with contextlib.suppress(Exception):
            await cluster.stop()
        raise
    logger.info(
        "redis cluster of %s masters on ports %s ready in %.2fs",
        masters,
        cluster.ports,
        time.monotonic() - started,
    )
    return cluster
