"""Harness for tests and benchmarks: isolated topic prefixes on a running stack, workers as
real `promptmill worker` processes, batch followers, and the simulator's admin API."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaProducer

from producers import Client
from producers.results import ResultFollower
from promptmill.dev.processes import free_port, wait_for_port
from schemas import BatchManifest, Completion, Failure, Header
from topics import KafkaConnection, TopicCatalog, TopicKind
from topics.admin import apply_topics
from topics.batch_index import BatchIndex
from topics.redis import RedisClient, connect_redis

ROOT = Path(__file__).resolve().parents[2]  # the source tree (workers run from it)
# where the Kafka jars are cached (fetched once from Maven Central)
CACHE_DIR = Path(os.environ.get("PROMPTMILL_CACHE_DIR", Path.home() / ".cache" / "promptmill"))
PARTITIONS = {"jobs": 4, "completions": 2, "failures": 2, "batches": 1}


@dataclass
class Endpoints:
    bootstrap: str
    redis_url: str
    sim_url: str  # http://host:port/v1


@dataclass
class Env:
    """One test's isolated slice of the stack: its own topic and Redis key prefix."""

    endpoints: Endpoints
    prefix: str
    state_dir: Path
    extra: dict[str, str] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)
    replication: int = 1  # of the topics it creates (3 on a 3-node cluster: failover tests)
    redis_cluster: bool = False  # endpoints.redis_url is a node of a Redis Cluster
    connection: KafkaConnection | None = None  # of a secured broker (else PLAINTEXT)

    @property
    def conn(self) -> KafkaConnection:
        return self.connection or KafkaConnection(self.endpoints.bootstrap)

    @property
    def catalog(self) -> TopicCatalog:
        return TopicCatalog(self.prefix, partitions=PARTITIONS, replication=self.replication)

    def environ(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PROMPTMILL_", "OPENAI_"))}
        env |= {
            "KAFKA_BOOTSTRAP_SERVERS": self.endpoints.bootstrap,
            "REDIS_URL": self.endpoints.redis_url,
            "OPENAI_BASE_URL": self.endpoints.sim_url,
            "OPENAI_API_KEY": "sim",
            "PROMPTMILL_TOPIC_PREFIX": self.prefix,
            "PROMPTMILL_TOPIC_PARTITIONS": orjson.dumps(PARTITIONS).decode(),
            "PROMPTMILL_TOPIC_REPLICATION": str(self.replication),
            "PROMPTMILL_REDIS_CLUSTER": str(self.redis_cluster).lower(),
            "PROMPTMILL_REDIS_KEY_PREFIX": self.prefix,
            "PROMPTMILL_DEFAULT_MODEL": "promptmill-sim",
            "PROMPTMILL_STATE_DIR": str(self.state_dir),
            "PROMPTMILL_WORKER_SESSION_TIMEOUT_MS": "3000",
            "PROMPTMILL_WORKER_DRAIN_SECONDS": "5",
            "PROMPTMILL_MODEL_BACKOFF_BASE_SECONDS": "0.05",
            "PROMPTMILL_MODEL_BACKOFF_MAX_SECONDS": "0.5",
            "PROMPTMILL_METRICS_HOST": "127.0.0.1",
            "PROMPTMILL_METRICS_PORT": "0",
            "PYTHONPATH": str(ROOT),
        }
        return env | self.extra | overrides

    def cli(
        self, *args: str, check: bool = True, timeout: float = 120, **overrides: str
    ) -> subprocess.CompletedProcess[str]:
        """Run ``promptmill ARGS`` as a user would, in this env (plus ``overrides``)."""
        result = subprocess.run(
            [sys.executable, "-m", "promptmill", *args],
            env=self.environ(**overrides),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"promptmill {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}"
            )
        return result

    def start_worker(self, *args: str, **overrides: str) -> WorkerProcess:
        """``promptmill worker ARGS`` in this env (``overrides``: environment variables)."""
        worker = WorkerProcess.start(self.environ(**overrides), self.state_dir, args)
        self.workers.append(worker)
        return worker

    def start_serve(self, **overrides: str) -> tuple[WorkerProcess, str]:
        """``promptmill serve`` in this env: the process and its base URL (``…/v1``)."""
        port = free_port()
        args = ("--host", "127.0.0.1", "--port", str(port))
        serve = WorkerProcess.start(self.environ(**overrides), self.state_dir, args, "serve")
        self.workers.append(serve)
        return serve, f"http://127.0.0.1:{port}/v1"

    def api_key(self, tenant: str, *roles: str, **options: str) -> str:
        """A new API key of ``tenant`` with ``roles`` (``options``: more ``keys create``
        flags, e.g. ``budget_usd="0.01"``)."""
        flags = [f"--role={role}" for role in roles]
        flags += [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
        return self.cli("keys", "create", tenant, *flags).stdout.strip()

    async def setup_topics(self) -> None:
        await apply_topics(self.conn, self.catalog)

    async def push_templates(self, directory: Path, label: str = "production") -> str:
        return self.cli("templates", "push", str(directory), "--label", label).stdout

    def redis(self) -> RedisClient:
        """A client of this env's Redis (the caller closes it)."""
        return connect_redis(self.endpoints.redis_url, cluster=self.redis_cluster)

    async def submit(self, path: Path, **kwargs: Any) -> str:
        """Submit ``path`` as the CLI would (batch ids claimed in Redis)."""
        redis = self.redis()
        try:
            index = BatchIndex(redis, self.prefix, self.conn, self.catalog)
            async with Client(self.conn, self.catalog, index=index) as client:
                report = await client.submit(path, **kwargs)
        finally:
            await redis.aclose()
        return report.manifest.batch_id

    async def collect(
        self, batch_id: str, *, count: int | None = None, within: float = 120
    ) -> dict[str, Completion | Failure]:
        """Follow a batch until every job is terminal; job id -> its terminal record.

        ``count`` stands in for the manifest of a batch produced by hand (no manifest).
        """
        follower = ResultFollower(self.conn, self.catalog, batch_id)
        manifest = None
        if count is not None:
            since = datetime.now(UTC) - timedelta(minutes=10)
            manifest = BatchManifest(
                batch_id=batch_id,
                total=count,
                submitted=count,
                invalid=0,
                started_at=since,
                submitted_at=since,
            )
        records: dict[str, Completion | Failure] = {}

        async def follow() -> None:
            async for record in follower.records(follow=True, manifest=manifest):
                records[record.job_id] = record

        await asyncio.wait_for(follow(), within)
        return records

    def follow(self, batch_id: str) -> tuple[dict[str, Completion | Failure], asyncio.Task[None]]:
        """Start following a batch in the background: (records so far by job id, the task)."""
        follower = ResultFollower(self.conn, self.catalog, batch_id)
        records: dict[str, Completion | Failure] = {}

        async def follow() -> None:
            async for record in follower.records(follow=True):
                records[record.job_id] = record

        return records, asyncio.create_task(follow())

    async def produce_jobs(self, jobs: Iterable[tuple[str, str, bytes]]) -> None:
        """Produce raw (job id, batch id, value) records to the jobs topic, as any client could."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.endpoints.bootstrap, acks="all", max_request_size=64 << 20
        )
        await producer.start()
        try:
            for job_id, batch_id, value in jobs:
                await producer.send_and_wait(
                    self.catalog.name(TopicKind.JOBS),
                    value,
                    key=job_id.encode(),
                    headers=[(Header.BATCH_ID.value, batch_id.encode())],
                )
        finally:
            await producer.stop()


@dataclass
class WorkerProcess:
    """``promptmill worker`` (or ``serve``) in its own process, with its log in a file."""

    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(
        cls,
        env: dict[str, str],
        state_dir: Path,
        args: Sequence[str] = (),
        command: str = "worker",
    ) -> WorkerProcess:
        log = state_dir / f"{command}-{uuid.uuid4().hex[:6]}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "promptmill", command, *args],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return cls(process, log)

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def write_jsonl(path: Path, rows: Iterable[dict[str, Any] | str]) -> Path:
    with path.open("wb") as out:
        for row in rows:
            out.write((row.encode() if isinstance(row, str) else orjson.dumps(row)) + b"\n")
    return path


def uncached_jobs(directory: Path, name: str, count: int) -> Path:
    """``directory/NAME.jsonl``: ``count`` distinct one-message jobs (``NAME0``, ``NAME1``,
    ...) that skip the cache, so every one is a model call."""
    return write_jsonl(
        directory / f"{name}.jsonl",
        [
            {"messages": [{"role": "user", "content": f"{name}{i}"}], "cache": False}
            for i in range(count)
        ],
    )


async def sim_call(sim_url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """Talk to the simulator's admin API (``/sim/stats``, ``/sim/config``, ``/sim/reset``)."""
    base = sim_url.removesuffix("/v1")
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, base + path, json=body) as response,
    ):
        response.raise_for_status()
        return await response.json()


async def until(condition: Callable[[], bool], *workers: WorkerProcess, within: float = 60) -> None:
    """Wait for ``condition``; fail at once if one of ``workers`` died, or after ``within`` s."""
    deadline = time.monotonic() + within
    while not condition():
        for worker in workers:
            assert worker.process.poll() is None, f"a worker died:\n{worker.tail()}"
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def wait_ready(base: str, within: float = 30) -> None:
    """Wait until a worker's ``/readyz`` (at ``base``, ``http://host:port``) answers 200."""
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"{base}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError("the worker never became ready")


async def scrape(base: str) -> dict[str, float]:
    """A worker's ``/metrics`` as {series with labels: value}."""
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as response:
        text = await response.text()
    series = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            series[name] = float(value)
    return series


async def start_redis(
    tmp_path: Path, url: str, *, persistent: bool = False
) -> subprocess.Popen[bytes]:
    """A private ``redis-server`` on ``url``'s port (data in ``tmp_path`` if ``persistent``:
    append-only file, so a restarted server still has what it held)."""
    return await asyncio.to_thread(_spawn_redis, tmp_path, url, persistent)


async def private_redis(
    tmp_path: Path, *, persistent: bool = False
) -> tuple[str, list[subprocess.Popen[bytes]]]:
    """(URL, [server]) of a new private Redis on a free port."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    return url, [await start_redis(tmp_path, url, persistent=persistent)]


def _spawn_redis(tmp_path: Path, url: str, persistent: bool) -> subprocess.Popen[bytes]:
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    log = tmp_path / "redis.log"
    durability = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else []
    with log.open("ab") as out:
        server = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(tmp_path),
                "--save",
                "",
                "--appendonly",
                "no",
                *durability,
            ],
            stdout=out,
            stderr=out,
        )
    wait_for_port("127.0.0.1", port, 10, server.pid, log)
    return server
