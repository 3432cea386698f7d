"""Integration fixtures: one real Kafka broker, Redis server and model simulator per session.

``KAFKA_BOOTSTRAP_SERVERS`` + ``REDIS_URL`` + ``OPENAI_BASE_URL`` point the tests at
existing servers instead (the simulator's admin API must then be reachable there too).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from promptmill import app
from promptmill.dev.cluster import KafkaNode, bootstrap_servers, kill_node, start_cluster
from promptmill.dev.harness import CACHE_DIR, ROOT, Endpoints, Env, sim_call
from promptmill.dev.redis_cluster import start_redis_cluster
from promptmill.dev.s3 import WEED_VERSION, S3Server, WeedBuildError, ensure_weed, start_s3_server
from promptmill.dev.stack import down, load_stack, up
from promptmill.settings import Settings


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def endpoints(stack_dir: Path) -> Iterator[Endpoints]:
    given = [os.environ.get(k) for k in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "OPENAI_BASE_URL")]
    if all(given):
        yield Endpoints(*given)  # type: ignore[arg-type]
        return
    info = up(stack_dir, CACHE_DIR, {"kafka", "redis", "model_sim"})
    try:
        if info.kafka is None or info.redis is None or info.model_sim is None:
            raise RuntimeError("the test stack did not come up")
        yield Endpoints(info.kafka.bootstrap, info.redis.url, info.model_sim.base_url)
    finally:
        down(stack_dir)


@pytest.fixture(scope="session")
async def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A real 3-master Redis Cluster (started on first use): the URL of one of its nodes."""
    async with await start_redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster.url


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS with an S3 gateway on loopback (built from the pinned version on first
    use; the tests that need it are skipped, with the build's error, if it does not build)."""
    try:
        weed = ensure_weed()
    except WeedBuildError as exc:
        pytest.skip(f"SeaweedFS {WEED_VERSION} did not build: {exc}")
    with start_s3_server(tmp_path_factory.mktemp("seaweedfs"), weed) as server:
        yield server


@pytest.fixture
async def cluster_env(
    endpoints: Endpoints, redis_cluster: str, tmp_path: Path
) -> AsyncIterator[Env]:
    """Like ``env``, with its Redis a 3-master Redis Cluster."""
    on_cluster = Endpoints(endpoints.bootstrap, redis_cluster, endpoints.sim_url)
    async with _env(on_cluster, tmp_path, redis_cluster=True) as test_env:
        yield test_env


@pytest.fixture
async def env(endpoints: Endpoints, tmp_path: Path) -> AsyncIterator[Env]:
    """A fresh topic prefix with its topics created, and the simulator reset to defaults."""
    async with _env(endpoints, tmp_path) as test_env:
        yield test_env


@pytest.fixture
def kafka_cluster(tmp_path: Path) -> Iterator[list[KafkaNode]]:
    """A 3-node Kafka cluster of the test's own; a test that restarts a node replaces its
    entry in the list in place, so the fixture stops what runs at the end."""
    started = time.monotonic()
    nodes = start_cluster(CACHE_DIR, tmp_path / "kafka", 3)
    print(f"3-node cluster up in {time.monotonic() - started:.1f}s")
    try:
        yield nodes
    finally:
        # kill -9: a throwaway cluster has nothing to keep, and a clean stop of a quorum
        # takes seconds
        for node in nodes:
            kill_node(nodes, node.node_id)


@pytest.fixture
async def failover_env(
    endpoints: Endpoints, kafka_cluster: list[KafkaNode], tmp_path: Path
) -> AsyncIterator[Env]:
    """Like ``env``, on the 3-node cluster: topics with three replicas, two in sync."""
    on_cluster = Endpoints(bootstrap_servers(kafka_cluster), endpoints.redis_url, endpoints.sim_url)
    async with _env(on_cluster, tmp_path, replication=3) as test_env:
        yield test_env


@pytest.fixture
async def secure_env(tmp_path: Path) -> AsyncIterator[Env]:
    """A stack of the test's own, started as a user would (``promptmill dev up --secure``):
    Kafka on SASL_SSL only, Redis and the simulator. No topics yet. Its commands and workers
    get no Kafka setting (``KAFKA_BOOTSTRAP_SERVERS`` empty): they find the broker and its
    credentials in the stack; ``conn`` is what :func:`promptmill.app.kafka_connection` makes
    of that stack."""
    state = tmp_path / "secure-stack"
    started = time.monotonic()
    try:
        listing = await asyncio.to_thread(_dev_up_secure, state)
        print(f"secure stack up in {time.monotonic() - started:.1f}s:\n{listing}")
        info = load_stack(state)
        assert info is not None and info.kafka is not None and info.kafka.security is not None
        assert info.redis is not None and info.model_sim is not None
        endpoints = Endpoints(info.kafka.bootstrap, info.redis.url, info.model_sim.base_url)
        conn = app.kafka_connection(Settings(state_dir=state, kafka_bootstrap_servers=None))
        test_env = Env(
            endpoints,
            f"t{uuid.uuid4().hex[:10]}",
            state,
            extra={"KAFKA_BOOTSTRAP_SERVERS": ""},
            connection=conn,
        )
        await sim_call(endpoints.sim_url, "POST", "/sim/config", {"latency_ms": 5, "jitter_ms": 2})
        try:
            yield test_env
        finally:
            for worker in test_env.workers:
                worker.terminate(timeout=15)
    finally:
        down(state)


def _dev_up_secure(state: Path) -> str:
    """Run ``promptmill dev up --secure`` with its state in ``state``; its output."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PROMPTMILL_", "KAFKA_"))}
    environ |= {
        "PROMPTMILL_STATE_DIR": str(state),
        "PROMPTMILL_CACHE_DIR": str(CACHE_DIR),
        "PYTHONPATH": str(ROOT),
    }
    result = subprocess.run(
        [sys.executable, "-m", "promptmill", "dev", "up", "--secure"],
        env=environ,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert result.returncode == 0, f"dev up --secure failed:\n{result.stderr[-3000:]}"
    return result.stdout


@contextlib.asynccontextmanager
async def _env(
    endpoints: Endpoints, tmp_path: Path, *, redis_cluster: bool = False, replication: int = 1
) -> AsyncIterator[Env]:
    await sim_call(endpoints.sim_url, "POST", "/sim/reset")
    await sim_call(
        endpoints.sim_url,
        "POST",
        "/sim/config",
        {
            "latency_ms": 5,
            "jitter_ms": 2,
            "rpm_limit": 0,
            "auth_status": 0,
            "storm": False,
            "tpm_limit": 0,
            "error_rate": 0,
            "timeout_rate": 0,
            "malformed_rate": 0,
        },
    )
    test_env = Env(
        endpoints,
        f"t{uuid.uuid4().hex[:10]}",
        tmp_path,
        redis_cluster=redis_cluster,
        replication=replication,
    )
    await test_env.setup_topics()
    try:
        yield test_env
    finally:
        for worker in test_env.workers:
            worker.terminate(timeout=15)
