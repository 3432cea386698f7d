"""The batch index: a batch id's latest manifest and run, by key, without scanning a topic.

``results``, ``status`` and ``submit`` ask "does batch B exist, and what is its manifest?".
The batches topic answers only by being read from the start, which grows with every batch
ever submitted. So the manifest is also kept in Redis, one hash per batch id
(``<prefix>:{B}:batch`` -- the batch tracker's counters share its hash slot), written by
``submit`` when it publishes a manifest and by the batch tracker for manifests that other
producers published. Without Redis, a lookup reads only the partition of the batches
topic that the batch id's key hashes to.

A batch id names one batch: :meth:`BatchIndex.claim` refuses an id that was already
claimed (an atomic check-and-set in Redis), unless the caller asks for a rerun, which
gives it a fresh run number. Records of one run never count towards another.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2
from pydantic import ValidationError

from schemas import BatchDone, BatchManifest, PromptmillError, decode
from schemas.batches import batch_record
from topics.catalog import TopicCatalog, TopicKind
from topics.connection import KafkaConnection
from topics.partitions import read_to_end, topic_partitions
from topics.redis import LuaScript, RedisClient, tagged, text

TTL_SECONDS = 30 * 24 * 3600  # the batches topic's default retention

# KEYS: the index hash. ARGV: rerun ('1'/'0'), now (ISO time). Returns the run claimed,
# or minus the run already claimed when it is refused.
CLAIM = """
local run = tonumber(redis.call('HGET', KEYS[1], 'run') or '0')
if run > 0 and ARGV[1] ~= '1' then return -run end
run = run + 1
redis.call('HSET', KEYS[1], 'run', run, 'claimed_at', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return run
"""

# KEYS: the index hash. ARGV: run, manifest JSON, TTL. Keeps the manifest of the latest run.
RECORD = """
local run = tonumber(redis.call('HGET', KEYS[1], 'run') or '0')
local known = tonumber(redis.call('HGET', KEYS[1], 'manifest_run') or '0')
local new = tonumber(ARGV[1])
if new < known then return 0 end
redis.call('HSET', KEYS[1], 'manifest', ARGV[2], 'manifest_run', new)
if new > run then redis.call('HSET', KEYS[1], 'run', new) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


class BatchExists(PromptmillError):
    """The batch id is taken (submit it with ``--rerun``, or use another id)."""


class NoSuchBatch(PromptmillError):
    """No manifest for the batch id."""


def index_key(prefix: str, batch_id: str) -> str:
    return tagged(prefix, batch_id, "batch")


def counters_key(prefix: str, batch_id: str, run: int) -> str:
    """A run's counters, kept by the batch tracker (in the batch index's hash slot). A
    ``stream`` field set before the run is submitted asks the tracker to also append each
    job's terminal record, once, to :func:`lines_key` (the front door's batches)."""
    return tagged(prefix, batch_id, "run", str(run))


def jobs_key(prefix: str, batch_id: str, run: int) -> str:
    """The job ids counted in a run."""
    return tagged(prefix, batch_id, "run", str(run), "jobs")


def lines_key(prefix: str, batch_id: str, run: int) -> str:
    """A stream of the run's terminal records (raw JSON, field ``r``), each job once."""
    return tagged(prefix, batch_id, "run", str(run), "lines")


STREAM_FIELD = "stream"


async def read_lines(
    redis: RedisClient, prefix: str, batch_id: str, after: str | None, count: int
) -> list[tuple[str, bytes]]:
    """Up to ``count`` (cursor, record) of the run-1 stream of ``batch_id`` after the cursor
    ``after`` (``None``: from the start)."""
    start = f"({after}" if after else "-"
    entries = await redis.xrange(lines_key(prefix, batch_id, 1), min=start, count=count)
    return [(text(entry_id), _raw((values or {}).get(b"r"))) for entry_id, values in entries or []]


def _raw(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value or "").encode()


class BatchIndex:
    """Look up, claim and record batch manifests (Redis, else the batches topic)."""

    def __init__(
        self,
        redis: RedisClient | None,
        prefix: str,
        conn: KafkaConnection,
        catalog: TopicCatalog,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._conn = conn
        self._catalog = catalog
        self._claim = LuaScript(redis, CLAIM) if redis is not None else None
        self._record = LuaScript(redis, RECORD) if redis is not None else None

    async def claim(self, batch_id: str, *, rerun: bool) -> int:
        """The run number this submission of ``batch_id`` gets (1 for a new batch); raises
        :class:`BatchExists` for a batch id already in use, unless ``rerun``."""
        if self._claim is not None:
            now = datetime.now().astimezone().isoformat(timespec="seconds")
            args = ["1" if rerun else "0", now, TTL_SECONDS]
            run = int(await self._claim([index_key(self._prefix, batch_id)], args))
            if run > 0:
                return run
            manifest = await self.manifest(batch_id)
            raise BatchExists(_exists_message(batch_id, manifest))
        manifest = await self._scan(batch_id)
        if manifest is None:
            return 1
        if not rerun:
            raise BatchExists(_exists_message(batch_id, manifest))
        return manifest.run + 1

    async def record(self, manifest: BatchManifest) -> None:
        """Remember ``manifest`` as its batch's latest (an older run's is ignored)."""
        if self._record is not None:
            key = index_key(self._prefix, manifest.batch_id)
            await self._record([key], [manifest.run, manifest.model_dump_json(), TTL_SECONDS])

    async def record_done(self, done: BatchDone) -> None:
        """Remember a run's done event (the batch tracker publishes it once)."""
        if self._redis is not None:
            key = index_key(self._prefix, done.batch_id)
            await self._redis.hset(key, f"done:{done.run}", done.model_dump_json())
            await self._redis.expire(key, TTL_SECONDS)

    async def done(self, batch_id: str, run: int) -> BatchDone | None:
        """The done event of a run of ``batch_id``, if the tracker announced one."""
        if self._redis is None:
            _, done = await scan_partition(self._conn, self._catalog, batch_id)
            return done if done is not None and done.run == run else None
        raw = await self._redis.hget(index_key(self._prefix, batch_id), f"done:{run}")
        if raw is None:
            return None
        try:
            return decode(raw, BatchDone)
        except ValidationError:
            return None

    async def manifest(self, batch_id: str) -> BatchManifest | None:
        """The latest manifest of ``batch_id``, if any."""
        if self._redis is None:
            return await self._scan(batch_id)
        raw = await self._redis.hget(index_key(self._prefix, batch_id), "manifest")
        if raw is None:
            return None
        try:
            return decode(raw, BatchManifest)
        except ValidationError:
            return None

    async def wait_for(self, batch_id: str, within: float) -> BatchManifest:
        """The manifest of ``batch_id``, waiting up to ``within`` seconds for it to appear
        (a submit in progress publishes it last); raises :class:`NoSuchBatch`."""
        deadline = time.monotonic() + within
        while True:
            found = await self.manifest(batch_id)
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                raise NoSuchBatch(
                    f"no batch {batch_id!r}: no manifest appeared within {within:g} s "
                    "(was it submitted, with this topic prefix?)"
                )
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    async def _scan(self, batch_id: str) -> BatchManifest | None:
        """Without Redis: the latest manifest in the batch id's partition of the topic."""
        manifest, _ = await scan_partition(self._conn, self._catalog, batch_id)
        return manifest


async def scan_partition(
    conn: KafkaConnection, catalog: TopicCatalog, batch_id: str
) -> tuple[BatchManifest | None, BatchDone | None]:
    """The latest manifest and done event of ``batch_id`` in the one partition of the
    batches topic its key goes to (the producer's default partitioner: murmur2)."""
    consumer = AIOKafkaConsumer(
        **conn.client_options(), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, catalog.name(TopicKind.BATCHES))
        key = batch_id.encode()
        tp = TopicPartition(tps[0].topic, (murmur2(key) & 0x7FFFFFFF) % len(tps))
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        manifest: BatchManifest | None = None
        done: BatchDone | None = None
        async for record in read_to_end(consumer, [tp]):
            if record.key != key or not record.value:
                continue
            found = batch_record(record.value)
            if isinstance(found, BatchManifest):
                manifest = found
            elif isinstance(found, BatchDone) and (manifest is None or found.run == manifest.run):
                done = found
        return manifest, done
    finally:
        await consumer.stop()


def _exists_message(batch_id: str, manifest: BatchManifest | None) -> str:
    if manifest is None:
        return (
            f"batch {batch_id!r} was already claimed, but its submission did not finish; "
            "use --rerun to submit it again, or another --batch-id"
        )
    return (
        f"batch {batch_id!r} already exists ({manifest.total} jobs, run {manifest.run}, "
        f"submitted {manifest.submitted_at:%Y-%m-%d %H:%M:%S %Z}); use --rerun to run it again "
        "under the same id, or another --batch-id"
    )
